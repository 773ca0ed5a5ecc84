"""A 2D radiograph classified in this process (one small network pass, well under a second: no child process
needed), its class activation map added as a volume on the input's exact grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vtk
from LightSegLib.classify import Classifier, check_radiograph, resize_map
from LightSegLib.errors import LightSegError
from vtk.util import numpy_support


@dataclass
class ClassificationResult:
    """A classifier's answer for one radiograph, and the activation-map volume added to the scene."""
    modelId: str
    label: str
    probability: float
    threshold: float
    heatmapNodeID: str | None
    quality: str = ""           # Classification.quality_text(): "quality ok (...)" or "low confidence: ..."
    lowConfidence: bool = False  # the input does not look like the model's training images

    def statusText(self) -> str:
        quality = f" {self.quality[0].upper()}{self.quality[1:]}." if self.quality else ""
        return (f"{self.label}: probability of the positive class {self.probability:.3f} (threshold "
                f"{self.threshold:.3f}).{quality} Decision support, not a diagnosis.")


def classify(scene, volumeNode, card, threshold: float | None = None) -> ClassificationResult:
    """Classify the radiograph in ``volumeNode`` (a single-slice volume; colour is averaged to grey) and add its
    activation map to ``scene``, named after the input."""
    image = volumeNode.GetImageData() if volumeNode is not None else None
    if image is None:
        raise LightSegError("no input volume")
    dims = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).astype(np.float32)
    components = image.GetNumberOfScalarComponents()
    array = array.reshape(dims[2], dims[1], dims[0], components).mean(axis=-1)
    if dims[2] != 1:
        raise LightSegError(f"'{volumeNode.GetName()}' is a 3D volume of {dims[2]} slices; "
                            f"{card.title} takes one 2D radiograph")
    radiograph = check_radiograph(array[0], volumeNode.GetName())
    result = Classifier(card, threads=2)(radiograph, threshold)
    heatmap = addHeatmap(scene, volumeNode, result.cam, f"{volumeNode.GetName()} {card.positive} activation")
    return ClassificationResult(card.id, result.label, result.probability, result.threshold, heatmap.GetID(),
                                result.quality_text(), bool(result.quality and result.quality["flag"]))


def addHeatmap(scene, volumeNode, cam: np.ndarray, name: str):
    """The activation map resized to the radiograph's grid, as a 0-1 rainbow volume to lay over it."""
    dims = volumeNode.GetImageData().GetDimensions()
    values = resize_map(cam, dims[1], dims[0]).astype(np.float32)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(dims[0], dims[1], 1)
    imageData.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values.ravel(), deep=True))
    node.SetAndObserveImageData(imageData)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeRainbow")
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
    return node
