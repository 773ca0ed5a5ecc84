"""A finished job's labelmap into MRML: one named segment per card label (LightSegLib.segments) on the input's
exact grid, under the input's transform and beside it in the subject hierarchy; a cine run becomes a segmentation
sequence synchronised with the input's browser."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from LightSegLib.errors import LightSegError
from LightSegLib.io import write_output
from LightSegLib.registry import get_model
from LightSegLib.segments import named_segments, terminology_string
from vtk.util import numpy_support

from .job import LPS_TO_RAS
from .measures import labelArray

SEGMENTATION_MODEL_ATTRIBUTE = "LightSeg.ModelId"
SEGMENTATION_QUALITY_ATTRIBUTE = "LightSeg.Quality"  # "ok", or "low confidence: check carefully (reasons)"


def wouldReplace(segmentationNode) -> bool:
    """True when writing into this node would replace segments the user already has."""
    return bool(segmentationNode is not None and segmentationNode.GetSegmentation()
                and segmentationNode.GetSegmentation().GetNumberOfSegments() > 0)


def importResults(scene, job):
    """The job's result as a segmentation node (or, for all frames, a sequence node), marked with its quality."""
    card = get_model(job.modelId)
    volumeNode = scene.GetNodeByID(job.volumeNodeID)
    if volumeNode is None:
        raise LightSegError("the input volume was removed from the scene while it was being segmented")
    if job.sequenceNodeID is None:
        _, _, _, labelPath = job.frames[0]
        output = scene.GetNodeByID(job.outputNodeID) if job.outputNodeID else None
        if output is None:
            output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                             scene.GenerateUniqueName(f"{volumeNode.GetName()} {card.id}"))
        labelmapToSegmentation(labelPath, card, volumeNode, output)
        output.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())  # overlays a moved volume
        placeInHierarchy(scene, output, volumeNode)
    else:
        output = _importSequence(scene, job, card, volumeNode)
    output.SetAttribute(SEGMENTATION_QUALITY_ATTRIBUTE, job.qualityText())
    return output


def labelmapToSegmentation(labelPath, card, referenceVolumeNode, segmentationNode):
    """A labelmap file on the reference volume's grid -> the card's named segments, all sharing one labelmap layer;
    existing segments are replaced."""
    label = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(labelPath))
    if not storage.ReadData(label):
        raise LightSegError(f"could not read the result {labelPath}")
    if referenceVolumeNode is not None:  # the CLI keeps the grid; make that a checked promise
        same = np.allclose(_matrix(label.GetIJKToRASMatrix), _matrix(referenceVolumeNode.GetIJKToRASMatrix),
                           atol=1e-4) and label.GetImageData().GetDimensions() == referenceVolumeNode.GetImageData().GetDimensions()
        if not same:
            raise LightSegError("the result is not on the input volume's grid")
    segments = named_segments(card.labels)
    array = numpy_support.vtk_to_numpy(label.GetImageData().GetPointData().GetScalars())
    lut = np.zeros(256, np.uint8)
    for order, record in enumerate(segments, start=1):  # card values -> 1..N in segment order
        lut[record["labelValue"]] = order
    array[:] = lut[array.astype(np.uint8, copy=False)]
    label.GetImageData().Modified()

    if segmentationNode.GetDisplayNode() is None:
        segmentationNode.CreateDefaultDisplayNodes()
    segmentation = segmentationNode.GetSegmentation()
    wasModifying = segmentationNode.StartModify()
    try:
        segmentation.RemoveAllSegments()
        # Import in the volume's own frame: no transform on either node until the end (see importResults).
        segmentationNode.SetAndObserveTransformNodeID(None)
        if referenceVolumeNode is not None:
            setReferenceGeometry(segmentationNode, referenceVolumeNode)
        ids = vtk.vtkStringArray()
        for record in segments:
            segmentId = segmentation.AddEmptySegment(record["id"], record["name"], record["color"])
            segment = segmentation.GetSegment(segmentId)
            if segment is None:  # e.g. the Segmentations module logic (converter rules) is not loaded
                raise LightSegError(f"could not add segment '{record['name']}' to the segmentation")
            segment.SetTerminology(terminology_string(record["terminology"]))
            ids.InsertNextValue(segmentId)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, segmentationNode, ids):
            raise LightSegError("could not import the result into the segmentation")
        segmentationNode.SetAttribute(SEGMENTATION_MODEL_ATTRIBUTE, card.id)
    finally:
        segmentationNode.EndModify(wasModifying)
    return segmentationNode


def setReferenceGeometry(segmentationNode, volumeNode) -> None:
    """The volume's own grid (IJK-to-RAS, extent) as the segmentation's reference geometry.

    Unlike SetReferenceImageGeometryParameterFromVolumeNode this ignores parent transforms, which is right
    because the segmentation is then put under the volume's transform.
    """
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(matrix, volumeNode.GetImageData().GetExtent())
    segmentationNode.GetSegmentation().SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry)
    if volumeNode.GetScene() is segmentationNode.GetScene() and volumeNode.GetID():
        segmentationNode.SetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole(),
                                            volumeNode.GetID())


def placeInHierarchy(scene, segmentationNode, volumeNode) -> None:
    """Keep the segmentation with its input in the subject hierarchy.

    A volume loaded from DICOM sits in a study: the segmentation goes into that same study, beside its
    series, which is where DICOM SEG export looks for it. Any other volume gets the segmentation as its child.
    """
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None or volumeNode is None:
        return
    # Slicer's Qt plugins give every node an item; without them (scripts, tests) make the items here.
    volumeItem = sh.GetItemByDataNode(volumeNode) or sh.CreateItem(sh.GetSceneItemID(), volumeNode)
    segmentationItem = sh.GetItemByDataNode(segmentationNode) or sh.CreateItem(volumeItem, segmentationNode)
    if not volumeItem or not segmentationItem or volumeItem == segmentationItem:
        return
    studyLevel = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    parent = sh.GetItemParent(volumeItem)
    sh.SetItemParent(segmentationItem, parent if parent and sh.GetItemLevel(parent) == studyLevel else volumeItem)


def _importSequence(scene, job, card, volumeNode):
    """One segmentation per frame in a new sequence, synchronised with the input's browser."""
    inputSequence = scene.GetNodeByID(job.sequenceNodeID)
    name = scene.GenerateUniqueName(f"{inputSequence.GetName()} {card.id}")
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName(inputSequence.GetIndexName())
    sequence.SetIndexUnit(inputSequence.GetIndexUnit())
    sequence.SetIndexType(inputSequence.GetIndexType())
    scratch = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "LightSeg frame")
    try:
        for i, (indexValue, _, _, labelPath) in enumerate(job.frames):
            labelmapToSegmentation(labelPath, card, inputSequence.GetNthDataNode(i), scratch)
            sequence.SetDataNodeAtValue(scratch, indexValue)
    finally:
        scene.RemoveNode(scratch)
    browser = scene.GetNodeByID(job.browserNodeID)
    if browser is not None:
        browser.AddSynchronizedSequenceNode(sequence)
        sequencesModule = getattr(getattr(slicer, "modules", None), "sequences", None)
        if sequencesModule is not None:
            sequencesModule.logic().UpdateProxyNodesFromSequences(browser)
            proxy = browser.GetProxyNode(sequence)
            if proxy is not None:
                proxy.CreateDefaultDisplayNodes()
                setReferenceGeometry(proxy, volumeNode)
                proxy.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
                placeInHierarchy(scene, proxy, volumeNode)
    return sequence


def labelImage(scene, segmentationNode, volumeNode, card) -> sitk.Image:
    """The segmentation as the card's label values on the volume's own grid, with its LPS geometry."""
    image = sitk.GetImageFromArray(labelArray(scene, segmentationNode, volumeNode,
                                              {label["name"]: label["value"] for label in card.labels}))
    lps = LPS_TO_RAS @ _matrix(volumeNode.GetIJKToRASMatrix)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:, 3].tolist())
    return image


def saveResult(scene, segmentationNode, volumeNode, path, overwrite: bool = False) -> None:
    """A LightSeg segmentation as the CLI writes it (the file name says the format: .nii.gz, .nrrd, .seg.nrrd...),
    on the volume's grid, by the CLI's own writer."""
    modelId = segmentationNode.GetAttribute(SEGMENTATION_MODEL_ATTRIBUTE)
    if not modelId:
        raise LightSegError(f"'{segmentationNode.GetName()}' was not made by LightSeg")
    card = get_model(modelId)
    write_output(labelImage(scene, segmentationNode, volumeNode, card), path, card.labels, overwrite=overwrite)


def setShow3D(segmentationNode, show: bool) -> None:
    """The result as surfaces in the 3D view, or not."""
    if segmentationNode is None:
        return
    if show:
        segmentationNode.CreateClosedSurfaceRepresentation()
    else:
        segmentationNode.RemoveClosedSurfaceRepresentation()


def _matrix(getter) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    getter(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def segmentFocus(segmentationNode, segmentName: str) -> list[float] | None:
    """A RAS point well inside the named segment, where to look at it: in its largest axial cross-section, of the
    voxels farthest from the section's border the one nearest its centroid (a centroid alone can fall outside a
    curved organ, and the myocardium is a ring)."""
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(segmentName)
    if not segmentId:
        return None
    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentationNode, segmentId, image) or image.GetPointData().GetScalars() is None:
        return None
    dims = image.GetDimensions()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    mask = values == segmentation.GetSegment(segmentId).GetLabelValue()  # segments share one layer
    if not mask.any():  # a layer of its own, given as 0/1
        mask = values > 0
    if not mask.any():
        return None
    k = int(np.argmax(mask.sum(axis=(1, 2))))
    deepest = mask[k]
    while True:  # erode until nothing would be left: what remains is farthest from the border
        inner = deepest.copy()
        inner[1:] &= deepest[:-1]
        inner[:-1] &= deepest[1:]
        inner[:, 1:] &= deepest[:, :-1]
        inner[:, :-1] &= deepest[:, 1:]
        inner[[0, -1]] = False
        inner[:, [0, -1]] = False
        if not inner.any():
            break
        deepest = inner
    j, i = np.nonzero(deepest)
    nearest = int(np.argmin((j - j.mean()) ** 2 + (i - i.mean()) ** 2))
    extent = image.GetExtent()
    ijk = [extent[0] + i[nearest], extent[2] + j[nearest], extent[4] + k, 1.0]
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ras = matrix.MultiplyPoint(ijk)[:3]
    transform = segmentationNode.GetParentTransformNode()
    if transform is not None:  # the segmentation sits under the volume's transform
        toWorld = vtk.vtkGeneralTransform()
        transform.GetTransformToWorld(toWorld)
        ras = toWorld.TransformPoint(ras)
    return list(ras)
