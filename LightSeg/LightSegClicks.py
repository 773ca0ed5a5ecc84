"""LightSeg clicks: a Segment Editor effect that refines the selected segment with clicks, on the CPU.

Left click adds, Ctrl- or Shift-click removes; the editor's own undo (Ctrl+Z) takes back a click, since each click
saves the editor's undo state first and the session re-reads the segment whenever it changed outside it.
Propagation extends the segment from the last clicked slice to its neighbours. The work is
LightSegLib.interactive.InteractiveSession; ``LightSegLogic.clicks.SegmentClicks`` joins it to MRML without Qt
(tested headlessly with the slicer-core wheel, and driven by the web app too), and the effect below only turns view
events into its calls.
"""
import slicer
import vtk

from LightSegLogic import LightSegError, SegmentClicks


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
            """Make the controller now (the volume read, the model loaded), as the web app does when click mode starts,
            so the first click does not wait for it; without a selected segment or a model, the first click makes it."""
            self.clicks = None
            node = self.scriptedEffect.parameterSetNode()
            if node.GetSourceVolumeNode() and node.GetSegmentationNode() and node.GetSelectedSegmentID():
                try:
                    self._controller()
                except LightSegError:
                    pass  # no click model installed: the first click says so

        def _controller(self) -> SegmentClicks:
            node = self.scriptedEffect.parameterSetNode()
            volume, segmentation = node.GetSourceVolumeNode(), node.GetSegmentationNode()
            segment = node.GetSelectedSegmentID()
            c = self.clicks
            if c is None or (c.volume_node, c.segmentation_node, c.segment_id) != (volume, segmentation, segment):
                self.clicks = SegmentClicks(volume, segmentation, segment)
                if self.clicks.session.note:  # e.g. a CT stored without its HU rescale: clicks land worse
                    slicer.util.warningDisplay(f"{self.clicks.session.note}. If it is one, subtract 1024 from the "
                                               "volume (Simple Filters: ShiftScale) before clicking.")
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
                return
            slicer.util.showStatusMessage(f"LightSeg clicks: {clicks.propagated()}", 8000)

        def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
            if eventId != vtk.vtkCommand.LeftButtonPressEvent or viewWidget.className() != "qMRMLSliceWidget":
                return False
            try:
                clicks = self._controller()
            except LightSegError as err:  # no click model installed
                slicer.util.warningDisplay(str(err))
                return True
            ijk = clicks.ras_to_ijk(self.scriptedEffect.xyToRas(callerInteractor.GetEventPosition(), viewWidget))
            if not clicks.inside(ijk):
                return False  # outside the volume: not ours
            positive = not (callerInteractor.GetControlKey() or callerInteractor.GetShiftKey())
            self.scriptedEffect.saveStateForUndo()
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                self._apply(clicks.click(ijk, positive))
            finally:
                qt.QApplication.restoreOverrideCursor()
            return True
