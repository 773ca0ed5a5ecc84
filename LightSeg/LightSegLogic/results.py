"""A finished job's labelmap into MRML: one named segment per card label (LightSegLib.segments) on the input's
exact grid, under the input's transform and beside it in the subject hierarchy; a cine run becomes a segmentation
sequence synchronised with the input's browser."""
from __future__ import annotations

import numpy as np
import slicer
import vtk
from LightSegLib.errors import LightSegError
from LightSegLib.registry import get_model
from LightSegLib.segments import named_segments, terminology_string
from vtk.util import numpy_support

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
