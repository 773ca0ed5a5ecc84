"""Click refinement of one segment in MRML: the controller the Slicer effect (LightSegClicks.py) and the web app
(LightSegWeb) both drive. LightSegLib.interactive.InteractiveSession does the work on the volume's voxels; this joins
it to a volume node and one segment of a segmentation node, and writes that segment only, never over another."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from LightSegLib.interactive import InteractiveSession
from vtk.util import numpy_support

from .measures import exportedSegments


class SegmentClicks:
    """One segment of a segmentation node refined on the grid of its source volume node.

    Every call starts from the segment as the scene holds it, so an editor's undo, another effect or a new LightSeg
    result is where the next click starts. ``undo()`` takes back this controller's own steps only: a change made
    outside is never undone by it."""

    def __init__(self, volume_node, segmentation_node, segment_id: str, model=None, threads: int = 2):
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        self.segment_id = segment_id
        image = sitk.GetImageFromArray(slicer.util.arrayFromVolume(volume_node))
        self.session = InteractiveSession(image, model=model, threads=threads)
        self.last_slice = None
        self._steps = 0  # session changes made here since the segment last changed outside

    def ras_to_ijk(self, ras) -> tuple[int, int, int]:
        matrix = vtk.vtkMatrix4x4()
        self.volume_node.GetRASToIJKMatrix(matrix)
        ijk = matrix.MultiplyPoint((*ras, 1.0))[:3]
        return tuple(int(round(v)) for v in ijk)

    def inside(self, ijk) -> bool:
        return all(0 <= v < n for v, n in zip(ijk, self.session.mask.shape[::-1]))

    def segment_array(self) -> np.ndarray:
        """The segment as it is in the scene, [k, j, i] 0/1 on the volume's grid."""
        exported = exportedSegments(self.segmentation_node.GetScene(), self.segmentation_node, [self.segment_id],
                                    self.volume_node)
        if exported is None:
            return np.zeros(self.session.mask.shape, np.uint8)
        return (exported.reshape(self.session.mask.shape) > 0).astype(np.uint8)

    def voxels(self) -> int:
        """How many voxels the segment has in the scene (its layer is read in place, nothing exported)."""
        image = self.segmentation_node.GetBinaryLabelmapInternalRepresentation(self.segment_id)
        if image is None or image.GetPointData().GetScalars() is None:
            return 0
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        return int(np.count_nonzero(values == self.segmentation_node.GetSegmentation().GetSegment(
            self.segment_id).GetLabelValue()))

    def other_segments(self) -> np.ndarray:
        """The voxels any other segment of the node holds, [k, j, i] bool on the volume's grid."""
        ids = [i for i in self.segmentation_node.GetSegmentation().GetSegmentIDs() if i != self.segment_id]
        exported = exportedSegments(self.segmentation_node.GetScene(), self.segmentation_node, ids,
                                    self.volume_node) if ids else None
        if exported is None:
            return np.zeros(self.session.mask.shape, bool)
        return exported.reshape(self.session.mask.shape) > 0

    def _sync(self) -> None:
        """Start from the scene: the segment as it is now, and every other segment's voxels locked (a correction
        never takes a voxel from another segment nor overlaps one, whatever the editor's masking says)."""
        self.session.lock(self.other_segments())
        current = self.segment_array()
        if not np.array_equal(current, self.session.mask):
            self.session.start_from(current)
            self._steps = 0

    def click(self, ijk, positive: bool = True):
        """A click at (i, j, k): the segment's new labelmap (only the region connected to the click changed)."""
        self._sync()
        self.last_slice = int(ijk[2])
        mask = self.session.click(ijk, positive)
        self._steps += 1
        return self.labelmap(mask)

    def propagate(self, direction: int):
        """Extend the segment slice by slice from the last clicked slice towards +k (1) or -k (-1)."""
        self._sync()
        mask = self.session.propagate(direction, start=self.last_slice)
        self._steps += 1
        return self.labelmap(mask)

    def undo(self):
        """The labelmap before this controller's last step, or None when it has none to take back."""
        self._sync()
        if not self._steps:
            return None
        self._steps -= 1
        return self.labelmap(self.session.undo())

    def labelmap(self, mask: np.ndarray):
        """The mask as an oriented image on the volume's grid (what the editor's modifySelectedSegmentByLabelmap
        and ``write`` take)."""
        image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(self.volume_node)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.ravel()
        image.Modified()
        return image

    def write(self, labelmap) -> None:
        """Replace the segment by ``labelmap`` (where no editor does it); other segments keep every voxel."""
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, self.segmentation_node, self.segment_id)
