"""The thin Qt widget and the self-test of LightSeg.py, driven over a real MRML scene.

Qt, ctk and the Slicer application are not in the slicer-core wheel, so only they are stood in (a widget that
remembers its value and forwards signals as PythonQt does, a timer the test ticks by hand). The scene, the
logic, the CLI process and the segmentations are all real. The .ui file is checked to hold every widget the
code uses.
"""
from __future__ import annotations

import contextlib
import inspect
import re
import sys
import time
import types
import xml.etree.ElementTree as ET

import pytest
from conftest import REPO
from model_fixtures import make_model_folder
from slicer_scene import real_scene

pytestmark = pytest.mark.slicer
slicer_util = pytest.importorskip("slicer.util", reason="needs the slicer-core wheel (pip install slicer-core)")

UI_FILE = REPO / "LightSeg" / "Resources" / "UI" / "LightSeg.ui"
MODULE_FILE = REPO / "LightSeg" / "LightSeg.py"


def ui_widgets() -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).iter("widget")}


def test_ui_file_holds_every_widget_the_module_uses():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    widgets = ui_widgets()
    assert used, "the module uses no widgets from the .ui file?"
    assert not used - set(widgets), f"used in LightSeg.py but absent from LightSeg.ui: {used - set(widgets)}"
    assert widgets["inputVolumeSelector"] == "qMRMLNodeComboBox"
    assert widgets["outputSegmentationSelector"] == "qMRMLNodeComboBox"
    text = UI_FILE.read_text()
    assert "Create new segmentation" in text  # the output is new unless the user picks one


class StandInWidget:
    """Remembers what the module sets and forwards signals like PythonQt (only the arguments a slot takes)."""

    def __init__(self):
        self.slots, self.items, self.index, self.node = {}, [], -1, None
        self.checked, self.value, self.enabled, self.text, self.count = False, 0, True, "", 0

    def connect(self, signal, slot):
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal, *args):
        for slot in self.slots.get(signal, []):
            slot(*args[:len(inspect.signature(slot).parameters)])

    def setEnabled(self, value): self.enabled = value
    def setText(self, text): self.text = text
    def setStyleSheet(self, sheet): self.styleSheet = sheet
    def setValue(self, value): self.value = value
    def setFormat(self, fmt): self.format = fmt
    def setMaximum(self, value): self.maximum = value
    def setMRMLScene(self, scene): self.scene = scene
    def setItemData(self, index, value, role): pass

    def setChecked(self, value):
        if value != self.checked:
            self.checked = value
            self.emit("toggled(bool)", value)

    def clear(self):
        self.items, self.index, self.count = [], -1, 0

    def addItem(self, text, data=None):
        self.items.append((text, data))
        self.count = len(self.items)
        if self.index < 0:
            self.setCurrentIndex(0)

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        if index != self.index:
            self.index = index
            self.emit("currentIndexChanged(int)", index)

    @property
    def currentIndex(self): return self.index

    @property
    def currentData(self): return self.items[self.index][1] if 0 <= self.index < len(self.items) else None

    def setCurrentNode(self, node):
        if node is not self.node:
            self.node = node
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)

    def currentNode(self): return self.node

    @property
    def currentNodeID(self): return self.node.GetID() if self.node else None


class StandInTimer:
    def __init__(self): self.active, self.callback = False, None
    def setInterval(self, ms): self.interval = ms
    def connect(self, signal, callback): self.callback = callback
    def start(self): self.active = True
    def stop(self): self.active = False


@pytest.fixture
def module(monkeypatch, tmp_path):
    """LightSeg.py imported with Qt stood in, over a fresh real scene and a registry holding the test models."""
    folder = make_model_folder(tmp_path / "models")
    from LightSegLib.lab.publish.writer import register_model
    from LightSegLib.registry import read_registry
    entry = read_registry(folder)["models"][0]
    for label, name in zip(entry["labels"], ("right ventricle", "myocardium", "left ventricle")):
        label["name"] = name
    register_model(dict(entry, id="test-cardiac", task="cardiac", modality="MR", status="stable",
                        normalization={"type": "window", "window": [0, 1]}), folder)
    monkeypatch.setenv("LIGHTSEG_MODELS_DIR", str(folder))

    scene_gen = real_scene(monkeypatch)
    mrml = next(scene_gen)
    qt = types.ModuleType("qt")
    qt.QTimer = StandInTimer
    qt.Qt = types.SimpleNamespace(ToolTipRole=3)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent): self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or types.SimpleNamespace(isEntered=True)
            self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

        def setup(self): pass

        def resourcePath(self, path): return str(REPO / "LightSeg" / "Resources" / path)

    class ScriptedLoadableModuleTest:
        def delayDisplay(self, message): print(message)
        def assertTrue(self, value, message=None): assert value, message
        def assertEqual(self, a, b): assert a == b, (a, b)
        def assertGreater(self, a, b): assert a > b, (a, b)
        def assertGreaterEqual(self, a, b): assert a >= b, (a, b)
        def assertLess(self, a, b): assert a < b, (a, b)

    slm.ScriptedLoadableModule = ScriptedLoadableModule
    slm.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    ui = types.SimpleNamespace(**{name: StandInWidget() for name in ui_widgets()})
    ui.speedModeSelector.items, ui.speedModeSelector.index = [("Standard", None), ("Fast (int8)", None)], 0
    answers = []
    monkeypatch.setattr(slicer_util, "loadUI", lambda path: StandInWidget(), raising=False)
    monkeypatch.setattr(slicer_util, "childWidgetVariables", lambda widget: ui, raising=False)
    monkeypatch.setattr(slicer_util, "confirmYesNoDisplay", lambda *a, **k: answers.pop(0), raising=False)
    monkeypatch.setattr(slicer_util, "confirmOkCancelDisplay", lambda *a, **k: answers.pop(0), raising=False)
    monkeypatch.setattr(slicer_util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(slicer_util, "loadVolume", lambda path: mrml.volumes.AddArchetypeVolume(str(path), "sample"),
                        raising=False)
    monkeypatch.syspath_prepend(str(REPO / "LightSeg"))
    sys.modules.pop("LightSeg", None)
    import LightSeg
    yield types.SimpleNamespace(module=LightSeg, ui=ui, mrml=mrml, answers=answers)
    sys.modules.pop("LightSeg", None)
    for _ in scene_gen:
        pass


def run_until_done(widget, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while widget.timer.active:
        assert time.monotonic() < deadline, "segmentation did not finish"
        widget.timer.callback()
        time.sleep(0.05)


def test_module_metadata_lists_licences_and_citations(module, monkeypatch):
    started = []
    monkeypatch.setattr(slicer_util, "app", types.SimpleNamespace(
        connect=lambda signal, slot: started.append((signal, slot))), raising=False)
    monkeypatch.setattr(module.module.slicer, "app", slicer_util.app, raising=False)
    info = module.module.LightSeg(types.SimpleNamespace())
    assert started == [("startupCompleted()", module.module.registerSampleData)]
    from conftest import extension_files

    shipped = extension_files()
    for _, fileName in module.module.SAMPLE_DATA:  # the Sample Data entries point at shipped files
        assert (module.module.SAMPLES_DIR / fileName).is_file()
        assert f"Resources/Samples/{fileName}" in shipped
    assert info.parent.title == "LightSeg" and info.parent.categories == ["Segmentation"]
    for text in ("Apache-2.0", "CPRUN", "TinyUnet", "CPGResNet50", "LFU-Net", "DPU-Net"):
        assert text in info.parent.helpText, text


def test_widget_segments_asks_before_replacing_and_cancels(module):
    ui, mrml = module.ui, module.mrml
    widget = module.module.LightSegWidget()
    widget.setup()
    volume = mrml.volumes.AddArchetypeVolume(str(REPO / "Resources" / "Samples" / "totalseg_example_ct_sm.nii.gz"),
                                             "CT")
    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.modelSelector.setCurrentIndex(ui.modelSelector.findData("test-quantiser"))
    assert "[preview]" in ui.modelSelector.items[ui.modelSelector.index][0]
    assert [d for _, d in ui.modelSelector.items] == ["test-cardiac", "test-quantiser"]
    assert "licence: Apache-2.0" in ui.modelInfoLabel.text
    assert not ui.speedModeSelector.enabled  # no int8 file for this model
    assert ui.segmentButton.enabled and not ui.cancelButton.enabled

    ui.segmentButton.emit("clicked(bool)", True)
    assert ui.cancelButton.enabled and not ui.segmentButton.enabled and widget.timer.active
    run_until_done(widget)
    assert ui.statusLabel.text.startswith("Done in") and ui.progressBar.value == 100
    output = ui.outputSegmentationSelector.currentNode()
    assert output is not None and output.GetSegmentation().GetNumberOfSegments() == 3
    assert widget._parameterNode.GetNodeReferenceID("OutputSegmentation") == output.GetID()

    module.answers.append(False)  # "replace its segments?" -> No: nothing starts
    previous = widget.job
    ui.segmentButton.emit("clicked(bool)", True)
    assert widget.job is previous and not widget.timer.active

    module.answers.append(True)  # -> Yes: starts, then the user cancels
    ui.segmentButton.emit("clicked(bool)", True)
    assert widget.job is not previous and widget.job.state == "running"
    ui.cancelButton.emit("clicked(bool)", True)
    assert widget.job.state == "cancelled" and "Cancelled" in ui.statusLabel.text
    assert ui.segmentButton.enabled and not ui.cancelButton.enabled
    assert output.GetSegmentation().GetNumberOfSegments() == 3  # cancelled: untouched

    ui.show3DCheckBox.setChecked(True)
    assert output.GetSegmentation().ContainsRepresentation("Closed surface")

    other = mrml.volumes.AddArchetypeVolume(str(REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz"), "MR")
    ui.inputVolumeSelector.setCurrentNode(other)  # a new input: the next result goes to a new segmentation
    assert ui.outputSegmentationSelector.currentNode() is None
    assert widget._parameterNode.GetNodeReference("InputVolume") is other
    assert widget._parameterNode.GetParameter("Show3D") == "true"
    widget.cleanup()


def test_self_test_runs_on_the_bundled_sample(module, monkeypatch, capsys):
    """LightSegTest end to end (a stable cardiac stand-in model, so only the Dice threshold is relaxed)."""
    monkeypatch.setattr(module.module, "SELF_TEST_MIN_MEAN_DICE", 0.0)
    test = module.module.LightSegTest()
    monkeypatch.setattr(test, "setUp", lambda: None)
    test.runTest()
    out = capsys.readouterr().out
    assert "LightSeg self-test: test-cardiac on acdc_patient002_ED.nii.gz" in out and "Dice right ventricle" in out


def test_widget_all_frames_then_cardiac_function_table(module, monkeypatch):
    ui, mrml = module.ui, module.mrml
    shown = []
    selection = types.SimpleNamespace(SetActiveTableID=shown.append)
    monkeypatch.setattr(module.module.slicer, "app", types.SimpleNamespace(applicationLogic=lambda: types.SimpleNamespace(
        GetSelectionNode=lambda: selection, PropagateTableSelection=lambda: None)), raising=False)
    widget = module.module.LightSegWidget()
    widget.setup()
    sequence = mrml.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    for i, name in enumerate(("acdc_patient002_ED.nii.gz", "acdc_patient002_ES.nii.gz")):
        frame = mrml.volumes.AddArchetypeVolume(str(REPO / "Resources" / "Samples" / name), f"frame{i}")
        sequence.SetDataNodeAtValue(frame, str(i))
        mrml.scene.RemoveNode(frame)
    browser = mrml.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    mrml.sequences.UpdateProxyNodesFromSequences(browser)
    ui.inputVolumeSelector.setCurrentNode(browser.GetProxyNode(sequence))
    ui.modelSelector.setCurrentIndex(ui.modelSelector.findData("test-cardiac"))
    assert ui.allFramesCheckBox.enabled  # the input is a cine sequence
    ui.allFramesCheckBox.setChecked(True)
    ui.segmentButton.emit("clicked(bool)", True)
    run_until_done(widget)
    assert widget.job.state == "done", ui.statusLabel.text
    assert widget.lastSequenceResult.GetNumberOfDataNodes() == 2
    assert ui.outputSegmentationSelector.currentNode() is None  # the next run still makes a new segmentation
    assert ui.esFrameSpinBox.enabled and ui.esFrameSpinBox.maximum == 1
    # the analytic model's cavities are larger in frame 1: as ED it gives a positive EF (the other way is refused)
    ui.edFrameSpinBox.setValue(1)
    ui.esFrameSpinBox.setValue(0)
    ui.cardiacFunctionButton.emit("clicked(bool)", True)
    assert len(shown) == 1, ui.statusLabel.text
    table = mrml.scene.GetNodeByID(shown[0])
    assert table.GetCellText(3, 0) == "Ejection fraction"
    assert float(table.GetCellText(3, 1)) == pytest.approx(widget.logic.lastCardiacFunction.lv_ef_percent, abs=0.05)
    widget.cleanup()
