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


OFF_GRID = object()  # a layer not on the volume's grid: read through Slicer's export


def holding(values: np.ndarray, labels: list) -> np.ndarray:
    """Where a labelmap layer holds any of ``labels`` (one comparison for a lone label: most layers hold one)."""
    return values == labels[0] if len(labels) == 1 else np.isin(values, labels)


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
        self._reference = None  # the volume's geometry, to tell whether a layer lies on its grid
        self._foreign = None  # (key, union): the other segments of the layers this segment is not in

    def ras_to_ijk(self, ras) -> tuple[int, int, int]:
        matrix = vtk.vtkMatrix4x4()
        self.volume_node.GetRASToIJKMatrix(matrix)
        ijk = matrix.MultiplyPoint((*ras, 1.0))[:3]
        return tuple(int(round(v)) for v in ijk)

    def inside(self, ijk) -> bool:
        return all(0 <= v < n for v, n in zip(ijk, self.session.mask.shape[::-1]))

    def segment_array(self) -> np.ndarray:
        """The segment as it is in the scene, [k, j, i] 0/1 on the volume's grid."""
        layer = self._layer(self.segment_id)
        if layer is None:
            return np.zeros(self.session.mask.shape, np.uint8)
        if layer is OFF_GRID:
            exported = exportedSegments(self.segmentation_node.GetScene(), self.segmentation_node, [self.segment_id],
                                        self.volume_node)
            return np.zeros(self.session.mask.shape, np.uint8) if exported is None else \
                (exported.reshape(self.session.mask.shape) > 0).astype(np.uint8)
        out = np.zeros(self.session.mask.shape, bool)
        self._paste(out, layer, lambda values: values == self._label(self.segment_id))
        return out.astype(np.uint8)

    def _label(self, segment_id: str) -> int:
        return self.segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()

    def _layer(self, segment_id: str):
        """The segment's labelmap layer, read in place where it lies on the volume's grid (a segmentation made on
        this volume); None for an empty segment; OFF_GRID where it does not (then Slicer's export, which resamples)."""
        image = self.segmentation_node.GetSegmentation().GetSegment(segment_id).GetRepresentation(
            slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
        if image is None or image.GetPointData().GetScalars() is None:
            return None
        if self._reference is None:
            self._reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
                self.volume_node)
        return image if slicer.vtkOrientedImageDataResample.DoGeometriesMatch(image, self._reference) else OFF_GRID

    def _paste(self, out: np.ndarray, layer, select) -> None:
        """``out`` |= ``select(values)`` over the layer's extent, clipped to the volume."""
        i0, i1, j0, j1, k0, k1 = layer.GetExtent()
        lo = [max(0, v) for v in (k0, j0, i0)]
        hi = [min(n, v + 1) for n, v in zip(out.shape, (k1, j1, i1))]
        if any(h <= low for low, h in zip(lo, hi)):
            return
        values = numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars()).reshape(
            k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)[lo[0] - k0:hi[0] - k0, lo[1] - j0:hi[1] - j0, lo[2] - i0:hi[2] - i0]
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= select(values)

    def voxels(self) -> int:
        """How many voxels the segment has in the scene (its layer is read in place, nothing exported)."""
        image = self.segmentation_node.GetBinaryLabelmapInternalRepresentation(self.segment_id)
        if image is None or image.GetPointData().GetScalars() is None:
            return 0
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        return int(np.count_nonzero(values == self._label(self.segment_id)))

    def other_segments(self) -> np.ndarray:
        """The voxels any other segment of the node holds, [k, j, i] bool on the volume's grid. Read in place, layer
        by layer; the layers this segment is not in are kept between calls until one of them changes (their
        modification times), so a click reads again only its own layer: milliseconds where Slicer's export of tens of
        segments on a large CT takes seconds."""
        shape = self.session.mask.shape
        others = [i for i in self.segmentation_node.GetSegmentation().GetSegmentIDs() if i != self.segment_id]
        layers = {i: self._layer(i) for i in others}
        if any(layer is OFF_GRID for layer in layers.values()):
            exported = exportedSegments(self.segmentation_node.GetScene(), self.segmentation_node, others,
                                        self.volume_node)
            return np.zeros(shape, bool) if exported is None else exported.reshape(shape) > 0
        grouped = {}  # layer address -> (layer, the labels of the other segments in it); empty segments hold nothing
        for i, layer in layers.items():
            if layer is not None:
                grouped.setdefault(layer.GetAddressAsString("vtkObject"), (layer, []))[1].append(self._label(i))
        mine = self._layer(self.segment_id)
        own = mine.GetAddressAsString("vtkObject") if mine is not None and mine is not OFF_GRID else None
        foreign = {address: entry for address, entry in grouped.items() if address != own}
        key = tuple(sorted((address, layer.GetMTime(), tuple(labels)) for address, (layer, labels) in foreign.items()))
        if self._foreign is None or self._foreign[0] != key:
            union = np.zeros(shape, bool)
            for layer, labels in foreign.values():
                self._paste(union, layer, lambda values, labels=labels: holding(values, labels))
            self._foreign = (key, union)
        out = self._foreign[1].copy()
        if own in grouped:  # the other segments in this segment's own layer
            self._paste(out, mine, lambda values: holding(values, grouped[own][1]))
        return out

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

    def propagated(self) -> str:
        """What the last propagation did, for the user: how many slices it added, and where and why it stopped."""
        done = self.session.propagated
        if done is None:
            return "Nothing propagated yet."
        return f"{done['slices']} slice{'s' if done['slices'] != 1 else ''} added; it stopped {done['stopped']}."

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
