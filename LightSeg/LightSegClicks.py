"""LightSeg clicks: a Segment Editor effect that refines the selected segment with clicks, on the CPU.

Left click adds, Ctrl- or Shift-click removes; the editor's own undo (Ctrl+Z) takes back a click, since each click
saves the editor's undo state first and the session re-reads the segment whenever it changed outside it.
Propagation extends the segment from the last clicked slice to its neighbours. The work is
LightSegLib.interactive.InteractiveSession; ``SegmentClicks`` joins it to MRML without Qt (tested headlessly
with the slicer-core wheel), and the effect below only turns view events into its calls.
"""
import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from LightSegLib.errors import LightSegError
from LightSegLib.interactive import InteractiveSession


class SegmentClicks:
    """One segment of a segmentation node refined on the grid of its source volume node."""

    def __init__(self, volume_node, segmentation_node, segment_id: str, model=None, threads: int = 2):
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        self.segment_id = segment_id
        image = sitk.GetImageFromArray(slicer.util.arrayFromVolume(volume_node))
        self.session = InteractiveSession(image, model=model, threads=threads)
        self.last_slice = None

    def ras_to_ijk(self, ras) -> tuple[int, int, int]:
        matrix = vtk.vtkMatrix4x4()
        self.volume_node.GetRASToIJKMatrix(matrix)
        ijk = matrix.MultiplyPoint((*ras, 1.0))[:3]
        return tuple(int(round(v)) for v in ijk)

    def segment_array(self) -> np.ndarray:
        array = slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentation_node, self.segment_id, self.volume_node)
        return np.zeros(self.session.mask.shape, np.uint8) if array is None else (array > 0).astype(np.uint8)

    def _sync(self) -> None:
        """Start from the segment as it is now: an editor undo, another effect or a LightSeg result changed it."""
        current = self.segment_array()
        if not np.array_equal(current, self.session.mask):
            self.session.start_from(current)

    def click(self, ijk, positive: bool = True):
        self._sync()
        self.last_slice = int(ijk[2])
        return self.labelmap(self.session.click(ijk, positive))

    def propagate(self, direction: int):
        self._sync()
        return self.labelmap(self.session.propagate(direction, start=self.last_slice))

    def labelmap(self, mask: np.ndarray):
        """The mask as an oriented image on the volume's grid, for the editor's modifySelectedSegmentByLabelmap."""
        image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(self.volume_node)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.ravel()
        image.Modified()
        return image


# The desktop application: the module that registers the effect, and the effect (slicer-core has no Qt).
if hasattr(slicer, "app"):
    import qt
    from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect
    from slicer.ScriptedLoadableModule import ScriptedLoadableModule

    class LightSegClicks(ScriptedLoadableModule):
        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            parent.title = "LightSeg clicks"
            parent.categories = ["Segmentation"]
            parent.hidden = True  # it lives in the Segment Editor
            parent.contributors = ["LightSeg"]
            parent.helpText = __doc__
            slicer.app.connect("startupCompleted()", self.registerEffect)

        def registerEffect(self):
            import qSlicerSegmentationsEditorEffectsPythonQt as effects

            effect = effects.qSlicerSegmentEditorScriptedEffect(None)
            effect.setPythonSource(__file__.replace("\\", "/"))
            effect.self().register()

    class LightSegClicksEffect(AbstractScriptedSegmentEditorEffect):
        def __init__(self, scriptedEffect):
            scriptedEffect.name = "LightSeg clicks"
            scriptedEffect.perSegment = True
            scriptedEffect.requireSegments = True
            AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
            self.clicks = None

        def clone(self):
            import qSlicerSegmentationsEditorEffectsPythonQt as effects

            effect = effects.qSlicerSegmentEditorScriptedEffect(None)
            effect.setPythonSource(__file__.replace("\\", "/"))
            return effect

        def helpText(self):
            return ("<html>Refine the selected segment with clicks (CPU).<p><b>Left click</b>: add. "
                    "<b>Ctrl- or Shift-click</b>: remove. <b>Ctrl+Z</b>: undo. A click changes only the part of the "
                    "segment connected to it. <b>Propagate</b> extends the segment from the last clicked slice.</html>")

        def setupOptionsFrame(self):
            row = qt.QHBoxLayout()
            for text, direction in (("Propagate to lower slices", -1), ("Propagate to higher slices", 1)):
                button = qt.QPushButton(text)
                button.connect("clicked()", lambda d=direction: self.propagate(d))
                row.addWidget(button)
            self.scriptedEffect.addOptionsWidget(row)

        def activate(self):
            self.clicks = None

        def _controller(self) -> SegmentClicks:
            node = self.scriptedEffect.parameterSetNode()
            volume, segmentation = node.GetSourceVolumeNode(), node.GetSegmentationNode()
            segment = node.GetSelectedSegmentID()
            c = self.clicks
            if c is None or (c.volume_node, c.segmentation_node, c.segment_id) != (volume, segmentation, segment):
                self.clicks = SegmentClicks(volume, segmentation, segment)
            return self.clicks

        def _apply(self, labelmap) -> None:
            self.scriptedEffect.modifySelectedSegmentByLabelmap(
                labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)

        def propagate(self, direction: int):
            clicks = self._controller()
            if clicks.last_slice is None:
                slicer.util.warningDisplay("Click on a slice of the segment first: propagation starts there.")
                return
            self.scriptedEffect.saveStateForUndo()
            try:
                self._apply(clicks.propagate(direction))
            except LightSegError as err:
                slicer.util.warningDisplay(str(err))

        def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
            if eventId != vtk.vtkCommand.LeftButtonPressEvent or viewWidget.className() != "qMRMLSliceWidget":
                return False
            try:
                clicks = self._controller()
            except LightSegError as err:  # no click model installed
                slicer.util.warningDisplay(str(err))
                return True
            ijk = clicks.ras_to_ijk(self.scriptedEffect.xyToRas(callerInteractor.GetEventPosition(), viewWidget))
            if not all(0 <= v < n for v, n in zip(ijk, clicks.session.mask.shape[::-1])):
                return False  # outside the volume: not ours
            positive = not (callerInteractor.GetControlKey() or callerInteractor.GetShiftKey())
            self.scriptedEffect.saveStateForUndo()
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                self._apply(clicks.click(ijk, positive))
            finally:
                qt.QApplication.restoreOverrideCursor()
            return True
