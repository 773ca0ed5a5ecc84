"""LightSeg: one-click CPU segmentation in 3D Slicer. Module, thin widget and self-test.

All work is in the LightSegLogic package (no Qt there, tested headlessly with the slicer-core wheel); this file only
connects Qt widgets to it, so keep it thin.
"""
import os
import time
from pathlib import Path

import qt
import slicer
import vtk
from LightSegLogic import JobState, LightSegError, LightSegLogic
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# importable once LightSegLogic has found it (installed beside it, or the source tree)
from LightSegLib import model_text
from LightSegLib.registry import SAMPLES_DIR  # the self-test's sample and manual reference

#: Bundled samples offered in the Sample Data module (category "LightSeg"): (name, file) in Resources/Samples.
SAMPLE_DATA = [("LightSeg cine MRI ED", "acdc_patient002_ED.nii.gz"),
               ("LightSeg cine MRI ES", "acdc_patient002_ES.nii.gz"),
               ("LightSeg abdominal CT", "totalseg_example_ct_sm.nii.gz")]
SELF_TEST_VOLUME = SAMPLES_DIR / "acdc_patient002_ED.nii.gz"
SELF_TEST_REFERENCE = SAMPLES_DIR / "acdc_patient002_ED_label.nii.gz"
SELF_TEST_MODEL = "cardiac-acdc"  # falls back to another cardiac model (stable first) when absent
SELF_TEST_MIN_MEAN_DICE = 0.70
SELF_TEST_MAX_SECONDS = 60.0

CITATIONS = """
<ol>
<li><b>CPRUN</b> (pancreas): H. Ma, Y. Liu, J. Zhang, model compression and a reconstructed U-Net
(channel pruning, then a reconstructed narrower U-Net) for real-time pancreas segmentation,
<i>Computer Engineering and Design</i>.</li>
<li><b>TinyUnet</b>: a tiny student U-Net distilled with multi-layer feature distillation and graph-convolution
distillation of edge keypoints.</li>
<li><b>CPGResNet50</b>: C.-P. Yang, J.-Q. Zhu, T. Yan, Q.-L. Su, L.-X. Zheng, "Auxiliary Pneumonia Classification
Algorithm Based on Pruning Compression", <i>Computational and Mathematical Methods in Medicine</i> 2022:8415187,
doi:10.1155/2022/8415187 (hierarchical channel pruning, Ghost modules).</li>
<li><b>LFU-Net</b>: Y. Deng, H. Wang, Y. Hou, S. Liang, D. Zeng, "LFU-Net: A Lightweight U-Net with Full Skip
Connections for Medical Image Segmentation", <i>Current Medical Imaging</i> 19 (2023),
doi:10.2174/1573405618666220622154853 (full skip connections, deep supervision).</li>
<li><b>DPU-Net / MAVKD</b> (cardiac MRI): Z. Liu, N. Wang, C. Zhang, G. Wei, "Cardiac magnetic resonance image
segmentation based on lightweight network and knowledge distillation strategy", <i>Journal of Biomedical
Engineering</i> 41(6):1204-1212, 2024, doi:10.7507/1001-5515.202312015 (dilated parallel U-Net, multi-scale
adaptation-vector distillation).</li>
</ol>
"""


def modelLicencesHtml() -> str:
    """The licence of every user-visible model, read from the registry (so help never goes stale)."""
    try:
        cards = LightSegLogic.models()
    except LightSegError as err:
        return f"<p>Model registry could not be read: {err}</p>"
    if not cards:
        return "<p>No models are registered yet.</p>"
    rows = "".join(f"<li><b>{c.title}</b> ({c.id}, {c.status}): licence {c.licence}; trained on "
                   f"{c.training_data}</li>" for c in cards)
    return f"<ul>{rows}</ul>"


class LightSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LightSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["LightSeg developers"]
        self.parent.helpText = (
            "<p>One-click segmentation on the CPU: pancreas and liver on CT, ventricles and myocardium on cine MRI. "
            "Pick a volume and a model, press <b>Segment</b>. The work runs in a separate process: Slicer stays "
            "responsive and <b>Cancel</b> stops it at once. The result is a segmentation with named, coloured "
            "segments carrying standard (SNOMED CT) terminology, on the input's exact grid, under the input in the "
            "subject hierarchy. <b>Fast (int8)</b> uses the quantised model where one exists.</p>"
            "<p>Models marked <b>[preview]</b> are still being validated. Not for clinical use.</p>"
            "<p><b>Models and their licences</b></p>" + modelLicencesHtml()
            + "<p><b>Methods (please cite)</b></p>" + CITATIONS
            + "<p>See the <a href='https://github.com/lightseg/SlicerLightSeg#readme'>documentation</a>.</p>")
        self.parent.acknowledgementText = (
            "LightSeg implements published compression methods (see Help). Bundled samples: ACDC (O. Bernard et al., "
            "IEEE TMI 2018; research, non-commercial use) and TotalSegmentator's example CT (Apache-2.0).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Offer the bundled samples in the Sample Data module: a one-click try, offline (file:// URIs)."""
    import SampleData

    icon = str(Path(__file__).resolve().parent / "Resources" / "Icons" / "LightSeg.png")
    for name, fileName in SAMPLE_DATA:
        path = SAMPLES_DIR / fileName
        if path.is_file():
            SampleData.SampleDataLogic.registerCustomSampleDataSource(
                category="LightSeg", sampleName=name, uris=path.as_uri(), fileNames=fileName,
                nodeNames=name.replace(" ", "_"), thumbnailFileName=icon, loadFileType="VolumeFile")


class LightSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin: reads the GUI, calls LightSegLogic, shows progress from a QTimer poll."""

    POLL_MS = 200

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self.lastSequenceResult = None
        self._parameterNode = None
        self._updatingGUI = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LightSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        cores = os.cpu_count() or 2
        # Leave a core to Slicer's UI where there are enough of them; a 2-core laptop needs both for speed.
        self.logic = LightSegLogic(installer=self.installWithConsent, threads=cores - 1 if cores > 3 else cores)
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.speedModeSelector.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.allFramesCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3D)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.cardiacFunctionButton.connect("clicked(bool)", self.onCardiacFunction)

        self.populateModels()
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelRunningJob()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        self.cancelRunningJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---------------------------------------------------------------- parameter node
    def initializeParameterNode(self):
        """State lives in a scene singleton, so it is saved with the scene and survives module switches."""
        node = self.logic.parameterNode()
        if not node.GetNodeReference("InputVolume"):
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                node.SetNodeReferenceID("InputVolume", volume.GetID())
        self.setParameterNode(node)

    def setParameterNode(self, node):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        node = self._parameterNode
        if node is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            self.ui.inputVolumeSelector.setCurrentNode(node.GetNodeReference("InputVolume"))
            self.ui.outputSegmentationSelector.setCurrentNode(node.GetNodeReference("OutputSegmentation"))
            index = self.ui.modelSelector.findData(node.GetParameter("ModelId"))
            if index >= 0:
                self.ui.modelSelector.setCurrentIndex(index)
            self.ui.speedModeSelector.setCurrentIndex(1 if node.GetParameter("Int8") == "true" else 0)
            self.ui.allFramesCheckBox.setChecked(node.GetParameter("AllFrames") == "true")
            self.ui.show3DCheckBox.setChecked(node.GetParameter("Show3D") == "true")
        finally:
            self._updatingGUI = False
        self.updateControls()

    def updateParameterNodeFromGUI(self, *args):
        node = self._parameterNode
        if node is None or self._updatingGUI:
            return
        wasModified = node.StartModify()
        node.SetNodeReferenceID("InputVolume", self.ui.inputVolumeSelector.currentNodeID)
        node.SetNodeReferenceID("OutputSegmentation", self.ui.outputSegmentationSelector.currentNodeID)
        node.SetParameter("ModelId", self.ui.modelSelector.currentData or "")
        node.SetParameter("Int8", "true" if self.ui.speedModeSelector.currentIndex == 1 else "false")
        node.SetParameter("AllFrames", "true" if self.ui.allFramesCheckBox.checked else "false")
        node.SetParameter("Show3D", "true" if self.ui.show3DCheckBox.checked else "false")
        node.EndModify(wasModified)
        self.updateControls()

    def onInputVolumeChanged(self, volume):
        """A result made from another volume is not the place for this one's: go back to a new segmentation."""
        output = self.ui.outputSegmentationSelector.currentNode()
        if not self._updatingGUI and output is not None and volume is not None and output.GetNodeReference(
                output.GetReferenceImageGeometryReferenceRole()) not in (None, volume):
            self.ui.outputSegmentationSelector.setCurrentNode(None)
        self.updateParameterNodeFromGUI()

    # ---------------------------------------------------------------- GUI state
    def populateModels(self):
        self.ui.modelSelector.clear()
        try:
            cards = LightSegLogic.models()
        except LightSegError as err:
            self.setStatus(f"Model registry could not be read: {err}", error=True)
            cards = []
        self.cards = {card.id: card for card in cards}
        for card in cards:
            self.ui.modelSelector.addItem(model_text.selector_label(card), card.id)
            self.ui.modelSelector.setItemData(self.ui.modelSelector.count - 1, model_text.description(card),
                                              qt.Qt.ToolTipRole)
        if not cards:
            self.ui.modelSelector.addItem("No models registered", "")

    def currentCard(self):
        return self.cards.get(self.ui.modelSelector.currentData or "")

    def updateControls(self):
        card = self.currentCard()
        running = self.job is not None and not self.job.finished
        if card is not None:
            info = (f"Task: {card.task}, modality: {card.modality}, licence: {card.licence}. "
                    f"{model_text.summary(card)}."
                    + (" <b>Preview model</b>: still being validated." if card.status == "preview" else ""))
            if card.entry.get("description"):
                info += f"<br>{card.entry['description']}"
            self.ui.modelInfoLabel.setText(info)
        self.ui.speedModeSelector.setEnabled(bool(card and card.has_int8()) and not running)
        if card is not None and not card.has_int8():
            self.ui.speedModeSelector.setCurrentIndex(0)
        volume = self.ui.inputVolumeSelector.currentNode()
        isSequence = volume is not None and self.logic.sequenceOf(volume)[1] is not None
        self.ui.allFramesCheckBox.setEnabled(isSequence and not running)
        self.ui.segmentButton.setEnabled(volume is not None and card is not None and not running)
        self.ui.segmentButton.text = "Classify" if card is not None and card.task == "classification" else "Segment"
        self.ui.cancelButton.setEnabled(running)
        for widget in (self.ui.inputVolumeSelector, self.ui.modelSelector, self.ui.outputSegmentationSelector):
            widget.setEnabled(not running)
        frames = self.lastSequenceResult.GetNumberOfDataNodes() if self.lastSequenceResult else 0
        for spin in (self.ui.edFrameSpinBox, self.ui.esFrameSpinBox):
            spin.setMaximum(max(0, frames - 1))
            spin.setEnabled(frames > 0)

    def setStatus(self, text, error=False):
        self.ui.statusLabel.setText(text)
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")

    # ---------------------------------------------------------------- dependencies
    def installWithConsent(self, packages):
        """The logic calls this when packages are missing: ask, then pip-install into Slicer's Python."""
        if not slicer.util.confirmOkCancelDisplay(
                f"LightSeg needs the Python package(s) {', '.join(packages)} (about 20 MB, no PyTorch). "
                "Install now? Slicer downloads them from the Python Package Index.", windowTitle="LightSeg"):
            raise LightSegError("installation declined: LightSeg cannot run without " + ", ".join(packages))
        with slicer.util.WaitCursor():
            slicer.util.pip_install(" ".join(packages))

    # ---------------------------------------------------------------- actions
    def onSegment(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        output = self.ui.outputSegmentationSelector.currentNode()
        card = self.currentCard()
        if card.task == "classification":
            self.onClassify(volume, card)
            return
        replace = False
        if self.logic.wouldReplace(output):
            if not slicer.util.confirmYesNoDisplay(
                    f"'{output.GetName()}' already has segments. Replace them with this result?\n\n"
                    "Choose 'No' and pick 'Create new segmentation' to keep them.", windowTitle="LightSeg"):
                return
            replace = True
        try:
            self.job = self.logic.startSegmentation(
                volume, card.id, output, int8=self.ui.speedModeSelector.currentIndex == 1,
                replaceExisting=replace, allFrames=self.ui.allFramesCheckBox.checked)
        except LightSegError as err:
            self.setStatus(str(err), error=True)
            return
        self.ui.progressBar.setValue(0)
        self.setStatus("Starting...")
        self.timer.start()
        self.updateControls()

    def onClassify(self, volume, card):
        """A classifier answers at once: the label and probability in the panel, its activation map over the image."""
        try:
            with slicer.util.WaitCursor():
                result = self.logic.classify(volume, card.id)
        except LightSegError as err:
            self.setStatus(str(err), error=True)
            return
        self.setStatus(result.statusText(), error=result.lowConfidence)
        slicer.util.setSliceViewerLayers(background=volume, foreground=result.heatmapNodeID, foregroundOpacity=0.4)

    def onPoll(self):
        if self.job is None:
            self.timer.stop()
            return
        try:
            self.logic.poll(self.job)
        except Exception as err:  # noqa: BLE001  (importing the result failed: say so, keep Slicer usable)
            self.timer.stop()
            self.setStatus(f"Could not load the result: {err}", error=True)
            self.updateControls()
            return
        self.ui.progressBar.setValue(round(100 * self.job.progress))
        self.ui.progressBar.setFormat(f"{self.job.statusText().splitlines()[0][:60]}  %p%"
                                      if not self.job.finished else "%p%")
        if not self.job.finished:
            self.setStatus(self.job.statusText())
            return
        self.timer.stop()
        self.setStatus(self.job.statusText(), error=self.job.state == JobState.FAILED or bool(self.job.lowConfidence))
        if self.job.state == JobState.DONE:
            self.showResult(slicer.mrmlScene.GetNodeByID(self.job.resultNodeID))
        self.updateControls()

    def showResult(self, node):
        if node is None:
            return
        if node.IsA("vtkMRMLSequenceNode"):
            self.lastSequenceResult = node
            browser = slicer.mrmlScene.GetNodeByID(self.job.browserNodeID)
            proxy = browser.GetProxyNode(node) if browser else None
            self.logic.setShow3D(proxy, self.ui.show3DCheckBox.checked)
            self.updateControls()  # frame spin boxes now span the new sequence
            return  # the output selector stays as it was: a proxy is not a place for the next result
        if node.IsA("vtkMRMLSegmentationNode"):
            self.ui.outputSegmentationSelector.setCurrentNode(node)
            self.logic.setShow3D(node, self.ui.show3DCheckBox.checked)

    def onCancel(self):
        self.cancelRunningJob()
        self.updateControls()

    def cancelRunningJob(self):
        if self.job is not None and not self.job.finished:
            self.logic.cancel(self.job)
            self.setStatus(self.job.statusText())
            self.ui.progressBar.setValue(0)
        if hasattr(self, "timer"):
            self.timer.stop()

    def onShow3D(self, show):
        self.updateParameterNodeFromGUI()
        with slicer.util.tryWithErrorDisplay("Could not build the 3D surfaces.", waitCursor=True):
            self.logic.setShow3D(self.ui.outputSegmentationSelector.currentNode(), show)

    def onCardiacFunction(self):
        ed = self.ui.edSegmentationSelector.currentNode()
        es = self.ui.esSegmentationSelector.currentNode()
        if (ed is None or es is None) and self.lastSequenceResult is not None:
            ed = self.lastSequenceResult.GetNthDataNode(self.ui.edFrameSpinBox.value)
            es = self.lastSequenceResult.GetNthDataNode(self.ui.esFrameSpinBox.value)
        reference = self.ui.inputVolumeSelector.currentNode()
        if ed is None or es is None or reference is None:
            self.setStatus("Choose ED and ES segmentations (or segment all frames of a cine sequence first).",
                           error=True)
            return
        with slicer.util.tryWithErrorDisplay("Could not compute cardiac function.", waitCursor=True):
            table = self.logic.cardiacFunction(ed, es, reference)
            layoutManager = getattr(slicer.app, "layoutManager", None)
            if layoutManager is not None:  # a layout with a table view, so the numbers are on screen
                layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
            notes = table.GetAttribute("LightSeg.Notes")
            self.setStatus("Cardiac function in table '" + table.GetName() + "'." + (f"\nNote: {notes}" if notes else ""))


class LightSegTest(ScriptedLoadableModuleTest):
    """Loads the bundled cine MRI frame, segments it, checks Dice against the manual labels, prints the time."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentBundledSample()

    @staticmethod
    def selfTestModelId():
        cards = LightSegLogic.models()
        ids = [c.id for c in cards]
        if SELF_TEST_MODEL in ids:
            return SELF_TEST_MODEL
        cardiac = [c.id for c in sorted(cards, key=lambda c: c.status != "stable") if c.task == "cardiac"]
        if not cardiac:
            raise AssertionError(f"no cardiac model is registered (looked for '{SELF_TEST_MODEL}')")
        return cardiac[0]

    def test_SegmentBundledSample(self):
        self.delayDisplay("Loading the bundled sample")
        self.assertTrue(SELF_TEST_VOLUME.is_file(), f"sample missing: {SELF_TEST_VOLUME}")
        volume = slicer.util.loadVolume(str(SELF_TEST_VOLUME))
        modelId = self.selfTestModelId()
        logic = LightSegLogic(installer=lambda packages: slicer.util.pip_install(" ".join(packages)))

        self.delayDisplay(f"Segmenting with {modelId}")
        start = time.perf_counter()
        segmentation = logic.segment(volume, modelId, timeout_s=5 * SELF_TEST_MAX_SECONDS)
        seconds = time.perf_counter() - start

        self.assertTrue(segmentation.IsA("vtkMRMLSegmentationNode"))
        self.assertGreater(segmentation.GetSegmentation().GetNumberOfSegments(), 0)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(segmentation)), shNode.GetItemByDataNode(volume))
        scores = logic.diceScores(segmentation, SELF_TEST_REFERENCE, modelId, volume)
        mean = sum(scores.values()) / len(scores)
        print(f"LightSeg self-test: {modelId} on {SELF_TEST_VOLUME.name}: {seconds:.1f} s "
              f"({logic.lastJob.statusText().splitlines()[0]}); Dice "
              + ", ".join(f"{name} {value:.3f}" for name, value in scores.items()) + f"; mean {mean:.3f}")
        self.assertGreaterEqual(mean, SELF_TEST_MIN_MEAN_DICE)
        self.assertLess(seconds, SELF_TEST_MAX_SECONDS)
        self.delayDisplay("LightSeg self-test passed")
