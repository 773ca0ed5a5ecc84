"""Numbers from segmentations in the scene: label arrays on a volume's grid, Dice against a reference labelmap (the
self-test), and LV/RV function from end-diastolic and end-systolic segmentations as a table node."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from LightSegLib.cardiac import VALUES_BY_NAME, CardiacFunction, cardiac_function
from LightSegLib.errors import LightSegError
from LightSegLib.metrics import dice
from vtk.util import numpy_support


def labelArray(scene, segmentationNode, referenceVolumeNode, valuesByName: dict) -> np.ndarray:
    """A [k, j, i] uint8 array on the reference volume's grid; segments matched by name (case-insensitive)
    get the given values, others are left out. Works for sequence data nodes too."""
    wanted = {name.strip().lower(): value for name, value in valuesByName.items()}
    segmentation = segmentationNode.GetSegmentation()
    ids, values = [], []
    for i in range(segmentation.GetNumberOfSegments()):
        value = wanted.get(segmentation.GetNthSegment(i).GetName().strip().lower())
        if value is not None:
            ids.append(segmentation.GetNthSegmentID(i))
            values.append(value)
    if not values:
        raise LightSegError(f"'{segmentationNode.GetName()}' has no segment named "
                            f"{', '.join(valuesByName)}")
    exported = exportedSegments(scene, segmentationNode, ids, referenceVolumeNode)
    if exported is None:
        raise LightSegError("could not export the segments to a labelmap")
    out = np.zeros(exported.shape, np.uint8)
    for order, value in enumerate(values, start=1):  # exported values follow the order of ids
        out[exported == order] = value
    return out


def exportedSegments(scene, segmentationNode, segmentIds: list, referenceVolumeNode) -> np.ndarray | None:
    """The segments as a [k, j, i] array on the reference volume's grid, the n-th id as value n; None where
    Slicer cannot export them. A temporary labelmap node carries them and leaves the scene again."""
    ids = vtk.vtkStringArray()
    for segmentId in segmentIds:
        ids.InsertNextValue(segmentId)
    label = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(label)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, label, referenceVolumeNode):
            return None
        dims = label.GetImageData().GetDimensions()
        exported = numpy_support.vtk_to_numpy(label.GetImageData().GetPointData().GetScalars())
        return exported.reshape(dims[2], dims[1], dims[0])
    finally:
        scene.RemoveNode(label)


def cardiacLabelArray(scene, segmentationNode, referenceVolumeNode) -> np.ndarray:
    """1 right ventricle, 2 myocardium, 3 left ventricle (LightSegLib.cardiac's convention)."""
    return labelArray(scene, segmentationNode, referenceVolumeNode, VALUES_BY_NAME)


def diceScores(scene, segmentationNode, referenceLabelPath, card, referenceVolumeNode) -> dict:
    """Dice of each card label against a reference labelmap file on the volume's grid; NaN for a structure in
    neither (LightSegLib.metrics)."""
    reference = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(referenceLabelPath))
    if not storage.ReadData(reference):
        raise LightSegError(f"could not read the reference {referenceLabelPath}")
    dims = reference.GetImageData().GetDimensions()
    if dims != referenceVolumeNode.GetImageData().GetDimensions():
        raise LightSegError("the reference labelmap is not on the volume's grid")
    truth = numpy_support.vtk_to_numpy(reference.GetImageData().GetPointData().GetScalars())
    truth = truth.reshape(dims[2], dims[1], dims[0])
    names = {label["name"]: label["value"] for label in card.labels}
    predicted = labelArray(scene, segmentationNode, referenceVolumeNode, names)
    return {name: dice(predicted == value, truth == value) for name, value in names.items()}


def cardiacFunction(scene, edSegmentationNode, esSegmentationNode, referenceVolumeNode) -> CardiacFunction:
    """LV/RV volumes, stroke volumes, EF and LV mass (LightSegLib.cardiac) of two segmentations on the volume's grid."""
    spacing = referenceVolumeNode.GetSpacing()
    images = []
    for node in (edSegmentationNode, esSegmentationNode):
        image = sitk.GetImageFromArray(cardiacLabelArray(scene, node, referenceVolumeNode))
        image.SetSpacing(spacing)  # volumes depend on spacing only; direction/origin do not change counts
        images.append(image)
    return cardiac_function(*images)


def fillCardiacTable(tableNode, result: CardiacFunction) -> None:
    """The measures as rows (LV and RV side by side, with units) and the notes as the node's LightSeg.Notes."""
    rows = [("End-diastolic volume", result.lv_edv_ml, result.rv_edv_ml, "mL"),
            ("End-systolic volume", result.lv_esv_ml, result.rv_esv_ml, "mL"),
            ("Stroke volume", result.lv_sv_ml, result.rv_sv_ml, "mL"),
            ("Ejection fraction", result.lv_ef_percent, result.rv_ef_percent, "%"),
            ("Myocardial mass (ED)", result.lv_myocardial_mass_g, None, "g")]
    table = tableNode.GetTable()
    table.Initialize()
    columns = []
    for name in ("Measurement", "LV", "RV", "Unit"):
        column = vtk.vtkStringArray()
        column.SetName(name)
        columns.append(column)
    fmt = lambda v: "" if v is None else f"{v:.1f}"
    for measure, lv, rv, unit in rows:
        for column, value in zip(columns, (measure, fmt(lv), fmt(rv), unit)):
            column.InsertNextValue(value)
    for column in columns:
        table.AddColumn(column)
    tableNode.SetAttribute("LightSeg.Notes", " | ".join(result.notes))
    tableNode.Modified()
