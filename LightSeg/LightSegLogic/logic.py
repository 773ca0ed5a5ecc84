"""LightSeg module logic: MRML nodes <-> the ``lightseg`` command line, with no Qt.

Everything here runs against the real MRML of the ``slicer-core`` wheel, so it is tested headlessly
(Testing/test_slicer_logic.py). The widget in LightSeg.py only wires Qt to this class.

Inference runs in a separate process (``python -m LightSegLib.cli segment --progress jsonl``): the UI stays
responsive, ONNX Runtime's thread pool cannot fight Slicer's, a crash cannot take Slicer down, and Cancel ends
the whole process tree. Volumes travel as NRRD files, which keep the geometry exactly (oblique included).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import ClassVar

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

try:
    import LightSegLib  # installed beside this package (extension) or pip-installed
except ImportError:  # running from a source checkout: LightSegLib sits two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import LightSegLib

from LightSegLib.errors import LightSegError
from LightSegLib.io import terminology_string
from LightSegLib.metrics import dice
from LightSegLib.registry import get_model, list_models
from LightSegLib.stages import INFER, POSTPROCESS, READ, WRITE

from .process import ProcessRunner

#: Python packages inference needs that Slicer does not bundle (numpy and SimpleITK come with Slicer).
REQUIRED_PACKAGES = {"onnxruntime": "onnxruntime"}

#: Where each CLI stage falls within one file's progress bar (fraction start, fraction end).
STAGE_SPANS = {READ: (0.0, 0.05), INFER: (0.05, 0.85), POSTPROCESS: (0.85, 0.92), WRITE: (0.92, 0.97)}
STAGE_TEXT = {"starting": "Starting", READ: "Reading volume", INFER: "Running the network",
              POSTPROCESS: "Post-processing", WRITE: "Writing result", "import": "Loading result",
              "done": "Done", "failed": "Failed", "cancelled": "Cancelled"}


class JobState(str, Enum):
    """A job's state; a str, so it compares and prints as its value."""
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

SEGMENTATION_MODEL_ATTRIBUTE = "LightSeg.ModelId"
SEGMENTATION_QUALITY_ATTRIBUTE = "LightSeg.Quality"  # "ok", or "low confidence: check carefully (reasons)"


class OutputExistsError(LightSegError):
    """The chosen output segmentation already holds segments and replacing them was not confirmed."""


class MissingDependencyError(LightSegError):
    """A package inference needs is not installed and no installer (user consent) was given."""


# ----------------------------------------------------------------------------------------------- job
@dataclass
class SegmentationJob:
    """One run of the CLI for one volume (or every frame of a cine sequence), polled by the caller."""
    modelId: str
    volumeNodeID: str
    outputNodeID: str | None
    frames: list  # [(index value, volume node ID, input path, output path)]
    tempDir: Path
    runner: object
    int8: bool = False
    sequenceNodeID: str | None = None
    browserNodeID: str | None = None
    state: JobState = JobState.RUNNING
    stage: str = "starting"
    progress: float = 0.0
    message: str = ""
    notes: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    summaries: list = field(default_factory=list)
    history: list = field(default_factory=list)  # (seconds since start, stage, fraction) as reported
    seconds: dict = field(default_factory=dict)
    startTime: float = field(default_factory=time.perf_counter)
    elapsed: float = 0.0
    resultNodeID: str | None = None
    _fileProgress: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state != JobState.RUNNING

    @property
    def lowConfidence(self) -> list[str]:
        """Why the engine's quality estimate doubts the result (any frame); empty when it does not."""
        return [reason for summary in self.summaries for reason in (summary.get("quality") or {}).get("reasons", [])]

    def qualityText(self) -> str:
        reasons = self.lowConfidence
        return f"Low confidence: check carefully ({'; '.join(reasons)})" if reasons else "ok"

    def statusText(self) -> str:
        text = STAGE_TEXT.get(self.stage, self.stage)
        if self.state == JobState.RUNNING:
            if len(self.frames) > 1:
                text += f" (frame {min(len(self.summaries) + 1, len(self.frames))} of {len(self.frames)})"
            return f"{text}... {self.elapsed:.1f} s"
        if self.state == JobState.DONE:
            stages = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
            text = f"Done in {self.elapsed:.1f} s ({stages})" + "".join(f"\nNote: {n}" for n in self.notes)
            return text + (f"\n{self.qualityText()}" if self.lowConfidence else "")
        return f"{text}: {self.message}" if self.message else text


@dataclass
class ClassificationResult:
    """A classifier's answer for one radiograph, and the activation-map volume added to the scene."""
    modelId: str
    label: str
    probability: float
    threshold: float
    heatmapNodeID: str | None

    def statusText(self) -> str:
        return (f"{self.label}: probability of the positive class {self.probability:.3f} (threshold "
                f"{self.threshold:.3f}). Decision support, not a diagnosis.")


# ----------------------------------------------------------------------------------------------- helpers
def pythonExecutable() -> str:
    """The Python to run the CLI with: PythonSlicer inside Slicer (sys.executable is Slicer itself there)."""
    if hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def missingPackages() -> list[str]:
    return [pip for module, pip in REQUIRED_PACKAGES.items() if importlib.util.find_spec(module) is None]


def _matrix(getter) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    getter(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


# ----------------------------------------------------------------------------------------------- logic
class LightSegLogic:
    """Segment MRML volumes with registered LightSeg models; results become named segmentation nodes.

    ``runnerFactory(args, env)`` makes the process runner (ProcessRunner by default); ``installer(packages)``
    installs missing packages after the user agreed (the widget passes slicer.util.pip_install behind a dialog).
    """

    def __init__(self, scene=None, runnerFactory=None, installer=None, python: str | None = None,
                 threads: int | None = None):
        self._scene = scene
        self.runnerFactory = runnerFactory or (lambda args, env: ProcessRunner(args, env=env))
        self.installer = installer
        self.python = python
        self.threads = threads

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    # ---------------------------------------------------------------- parameter node
    def parameterNode(self):
        """The module's state as a scene singleton: saved with the scene, restored when it is loaded."""
        node = self.scene.GetSingletonNode("LightSeg", "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag("LightSeg")
            node.SetName("LightSeg")
            node.SetModuleName("LightSeg")
            for key, value in self.DEFAULT_PARAMETERS.items():
                node.SetParameter(key, value)
            node = self.scene.AddNode(node)
        return node

    DEFAULT_PARAMETERS: ClassVar[dict] = {"ModelId": "", "Int8": "false", "AllFrames": "false", "Show3D": "false"}

    # ---------------------------------------------------------------- models and dependencies
    @staticmethod
    def models(includeReference: bool = False) -> list:
        """Registered model cards; ``reference`` models (baselines for comparison) are hidden from users."""
        return list_models(include_reference=includeReference)

    @staticmethod
    def modelDescription(card) -> str:
        badge = " [preview]" if card.status == "preview" else ""
        return f"{card.title}{badge} - {card.modality}, {card.task}, licence {card.licence}; {LightSegLogic.modelFacts(card)}"

    @staticmethod
    def modelFacts(card) -> str:
        """Size, cost and validation Dice from the card, so users can pick between a fast and an accurate model."""
        facts = [f"{card.params / 1e6:.2f} M parameters"]
        if card.path().is_file():
            facts.append(f"{card.path().stat().st_size / 1e6:.2f} MB")
        if card.macs:
            facts.append(f"{card.macs / 1e9:.2f} GMAC per slice")
        metrics = card.entry.get("metrics") or {}
        dice = metrics.get("val_dice_mean", metrics.get("dice_mean"))
        if isinstance(dice, (int, float)):
            facts.append(f"validation Dice {dice:.3f}")
        speed = card.entry.get("speed")
        if speed:
            facts.append(f"{speed['wall_s']:.2f} s per volume ({speed['input']}, {speed['threads']} threads on "
                         f"{speed['machine']})")
        if card.has_int8():
            facts.append("int8 version available")
        return ", ".join(facts)

    @staticmethod
    def modelLabel(card) -> str:
        """The model selector's entry: title, modality, and size and speed to choose by."""
        badge = " [preview]" if card.status == "preview" else ""
        extra = [card.modality]
        if card.path().is_file():
            extra.append(f"{card.path().stat().st_size / 1e6:.2f} MB")
        if card.entry.get("speed"):
            extra.append(f"{card.entry['speed']['wall_s']:.1f} s/volume")
        return f"{card.title}{badge} ({', '.join(extra)})"

    # ---------------------------------------------------------------- classification
    def classify(self, volumeNode, modelId: str, threshold: float | None = None) -> ClassificationResult:
        """Classify a 2D radiograph volume in this process (one small network pass, well under a second) and add
        its class activation map as a volume on the input's exact grid, named after the input."""
        from LightSegLib.classify import Classifier, check_radiograph

        self.ensureDependencies()
        card = get_model(modelId)
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
        heatmap = self._addHeatmap(volumeNode, result.cam, f"{volumeNode.GetName()} {card.positive} activation")
        return ClassificationResult(modelId, result.label, result.probability, result.threshold, heatmap.GetID())

    def _addHeatmap(self, volumeNode, cam: np.ndarray, name: str):
        from LightSegLib.classify import resize_map

        dims = volumeNode.GetImageData().GetDimensions()
        values = resize_map(cam, dims[1], dims[0]).astype(np.float32)
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(name))
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

    def ensureDependencies(self) -> None:
        missing = missingPackages()
        if not missing:
            return
        if self.installer is None:
            raise MissingDependencyError(f"LightSeg needs {', '.join(missing)}; install it first")
        self.installer(missing)
        importlib.invalidate_caches()
        still = missingPackages()
        if still:
            raise MissingDependencyError(f"installing {', '.join(still)} did not succeed")

    # ---------------------------------------------------------------- output checks
    @staticmethod
    def wouldReplace(segmentationNode) -> bool:
        """True when writing into this node would replace segments the user already has."""
        return bool(segmentationNode is not None and segmentationNode.GetSegmentation()
                    and segmentationNode.GetSegmentation().GetNumberOfSegments() > 0)

    # ---------------------------------------------------------------- sequences
    def sequenceOf(self, volumeNode):
        """(browser, sequence) when the volume is the proxy of a cine sequence, else (None, None)."""
        browsers = self.scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
        browsers.UnRegister(None)
        for i in range(browsers.GetNumberOfItems()):
            browser = browsers.GetItemAsObject(i)
            sequence = browser.GetSequenceNode(volumeNode)
            if sequence is not None:
                return browser, sequence
        return None, None

    # ---------------------------------------------------------------- start / poll / cancel
    def startSegmentation(self, volumeNode, modelId: str, outputSegmentationNode=None, *, int8: bool = False,
                          replaceExisting: bool = False, allFrames: bool = False) -> SegmentationJob:
        """Write the volume (or every frame of its sequence) to a temporary folder and start the CLI.

        Raises OutputExistsError, before any work, if ``outputSegmentationNode`` has segments and
        ``replaceExisting`` is False: the caller asks the user and calls again.
        """
        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.GetImageData() is None:
            raise LightSegError("select an input volume")
        card = get_model(modelId)
        if int8 and not card.has_int8():
            raise LightSegError(f"model '{modelId}' has no int8 version")
        browser, sequence = self.sequenceOf(volumeNode) if allFrames else (None, None)
        # All frames go to a new segmentation sequence; only a single-volume run writes into the chosen node.
        if sequence is None and not replaceExisting and self.wouldReplace(outputSegmentationNode):
            raise OutputExistsError(f"'{outputSegmentationNode.GetName()}' already has segments; "
                                    "confirm to replace them or choose a new segmentation")
        self.ensureDependencies()

        tempDir = Path(tempfile.mkdtemp(prefix="LightSeg-"))
        frames = []
        try:
            if sequence is not None:
                for i in range(sequence.GetNumberOfDataNodes()):
                    node = sequence.GetNthDataNode(i)
                    frames.append((sequence.GetNthIndexValue(i), node, tempDir / f"frame{i:04d}.nrrd",
                                   tempDir / "out" / f"frame{i:04d}.nrrd"))
                (tempDir / "out").mkdir()
            else:
                frames.append((None, volumeNode, tempDir / "input.nrrd", tempDir / "labels.nrrd"))
            for _, node, inputPath, _ in frames:
                self._writeVolume(node, inputPath)
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise

        args = [self.python or pythonExecutable(), "-m", "LightSegLib.cli", "segment", "--model", modelId,
                "--progress", "jsonl"]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if int8:
            args.append("--int8")
        if sequence is not None:
            args += [str(f[2]) for f in frames] + [str(tempDir / "out"), "--format", "nrrd"]
        else:
            args += [str(frames[0][2]), str(frames[0][3])]
        runner = self.runnerFactory(args, self._childEnvironment())
        try:
            runner.start()
        except Exception as err:  # noqa: BLE001  (e.g. Python not found: report it, leave no temporary files)
            shutil.rmtree(tempDir, ignore_errors=True)
            raise LightSegError(f"could not start the segmentation process: {err}") from err
        return SegmentationJob(
            modelId=modelId, volumeNodeID=volumeNode.GetID(),
            outputNodeID=outputSegmentationNode.GetID() if outputSegmentationNode is not None else None,
            frames=[(index, node.GetID() if node.GetScene() is self.scene else None, inputPath, outputPath)
                    for index, node, inputPath, outputPath in frames],
            tempDir=tempDir, runner=runner, int8=int8,
            sequenceNodeID=sequence.GetID() if sequence is not None else None,
            browserNodeID=browser.GetID() if browser is not None else None)

    def _childEnvironment(self) -> dict:
        """Make the child find this LightSegLib and its models, whatever PYTHONPATH Slicer's launcher set."""
        env = dict(os.environ)
        libParent = str(Path(LightSegLib.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([libParent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @staticmethod
    def _writeVolume(volumeNode, path: Path) -> None:
        """NRRD through Slicer's own storage node: exact IJK-to-RAS, written without touching the node's storage."""
        if volumeNode.GetParentTransformNode() is not None and not volumeNode.GetParentTransformNode().IsTransformToWorldLinear():
            raise LightSegError("the input volume is under a non-linear transform: harden or remove it first")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(0)
        if not storage.WriteData(volumeNode):
            raise LightSegError(f"could not write the input volume to {path}")

    def poll(self, job: SegmentationJob) -> SegmentationJob:
        """Read new progress; when the process has ended, load the result into the scene (main thread)."""
        if job.finished:
            return job
        job.elapsed = time.perf_counter() - job.startTime
        nFrames = len(job.frames)
        for message in job.runner.messages():
            if self._collect(job, message):
                job._fileProgress = 0.0
            elif "stage" in message:
                job.stage = message["stage"]
                job.history.append((job.elapsed, job.stage, float(message.get("progress", 0.0))))
                lo, hi = STAGE_SPANS.get(job.stage, (0.0, 0.97))
                job._fileProgress = lo + (hi - lo) * float(message.get("progress", 0.0))
            job.progress = min(0.97, (len(job.summaries) + job._fileProgress) / nFrames)
        code = job.runner.returncode()
        if code is None:
            return job
        for message in job.runner.messages():  # lines that arrived between the drain and the exit
            self._collect(job, message)
        if code != 0:
            stderr = job.runner.stderr_lines()  # only what the child did not say itself: a crash
            if job.errors:
                tail = job.errors[-1]
            elif code < 0 or code == 137:  # killed from outside; on Linux most often the out-of-memory killer
                tail = (f"the segmentation process was killed (exit code {code}); if the computer ran out of "
                        "memory, close other programs or crop the volume")
            else:
                tail = stderr[-1] if stderr else f"exit code {code}"
            self._finish(job, JobState.FAILED, tail)
            return job
        job.stage = "import"
        try:
            result = self._importResults(job)
            result.SetAttribute(SEGMENTATION_QUALITY_ATTRIBUTE, job.qualityText())
            job.resultNodeID = result.GetID()
        except Exception as err:  # a failed import must still end the job and clean up
            self._finish(job, JobState.FAILED, str(err))
            raise
        seconds: dict = {}
        for summary in job.summaries:
            for key, value in summary.get("seconds", {}).items():
                seconds[key] = seconds.get(key, 0.0) + value
        job.seconds = seconds
        job.progress = 1.0
        self._finish(job, JobState.DONE, "")
        return job

    @staticmethod
    def _collect(job: SegmentationJob, message: dict) -> bool:
        """Keep a finished file's summary, a note or an error from the child's JSON stream; True for a summary."""
        if "note" in message:
            job.notes.append(message["note"])
        elif "error" in message:
            job.errors.append(message["error"])
        elif message.get("done"):
            job.summaries.append(message.get("summary", {}))
            return True
        return False

    def cancel(self, job: SegmentationJob) -> None:
        """Stop the process tree; the scene is left as it was before Segment."""
        if job.finished:
            return
        job.runner.cancel()
        self._finish(job, JobState.CANCELLED, "cancelled by the user")

    @staticmethod
    def _finish(job: SegmentationJob, state: JobState, message: str) -> None:
        job.state, job.message = state, message
        job.stage = state
        job.elapsed = time.perf_counter() - job.startTime
        shutil.rmtree(job.tempDir, ignore_errors=True)

    # ---------------------------------------------------------------- blocking API
    def segment(self, volumeNode, modelId: str, outputSegmentationNode=None, *, int8: bool = False,
                replaceExisting: bool = False, allFrames: bool = False, progress=None,
                timeout_s: float | None = None, pollInterval_s: float = 0.05):
        """Segment and wait, for scripts and tests; returns the segmentation node (or sequence node).

        ``progress(job)`` is called at every poll. Raises LightSegError when the CLI fails or times out.
        """
        job = self.startSegmentation(volumeNode, modelId, outputSegmentationNode, int8=int8,
                                     replaceExisting=replaceExisting, allFrames=allFrames)
        try:
            while not self.poll(job).finished:
                if progress is not None:
                    progress(job)
                if timeout_s is not None and job.elapsed > timeout_s:
                    self.cancel(job)
                    raise LightSegError(f"segmentation took longer than {timeout_s} s and was stopped")
                time.sleep(pollInterval_s)
        except BaseException:
            self.cancel(job)  # Ctrl+C in a script must not leave the process behind
            raise
        if progress is not None:
            progress(job)
        if job.state != JobState.DONE:
            raise LightSegError(job.message or str(job.state))
        self.lastJob = job
        return self.scene.GetNodeByID(job.resultNodeID)

    # ---------------------------------------------------------------- results into MRML
    def _importResults(self, job: SegmentationJob):
        card = get_model(job.modelId)
        volumeNode = self.scene.GetNodeByID(job.volumeNodeID)
        if volumeNode is None:
            raise LightSegError("the input volume was removed from the scene while it was being segmented")
        if job.sequenceNodeID is None:
            _, _, _, labelPath = job.frames[0]
            output = self.scene.GetNodeByID(job.outputNodeID) if job.outputNodeID else None
            if output is None:
                output = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                      self.scene.GenerateUniqueName(f"{volumeNode.GetName()} {card.id}"))
            self.labelmapToSegmentation(labelPath, card, volumeNode, output)
            output.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())  # overlays a moved volume
            self.placeInHierarchy(output, volumeNode)
            return output
        return self._importSequence(job, card, volumeNode)

    def labelmapToSegmentation(self, labelPath, card, referenceVolumeNode, segmentationNode):
        """A labelmap file on the reference volume's grid -> one segment per card label (name, colour,
        terminology), all sharing one labelmap layer; existing segments are replaced."""
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
        labels = sorted(card.labels, key=lambda item: item["value"])
        array = numpy_support.vtk_to_numpy(label.GetImageData().GetPointData().GetScalars())
        lut = np.zeros(256, np.uint8)
        for order, item in enumerate(labels, start=1):  # card values -> 1..N in card order (segment order)
            lut[item["value"]] = order
        array[:] = lut[array.astype(np.uint8, copy=False)]
        label.GetImageData().Modified()

        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        segmentation = segmentationNode.GetSegmentation()
        wasModifying = segmentationNode.StartModify()
        try:
            segmentation.RemoveAllSegments()
            # Import in the volume's own frame: no transform on either node until the end (see _importResults).
            segmentationNode.SetAndObserveTransformNodeID(None)
            if referenceVolumeNode is not None:
                self.setReferenceGeometry(segmentationNode, referenceVolumeNode)
            ids = vtk.vtkStringArray()
            for item in labels:
                colour = [c / 255.0 for c in item["color"]]
                segmentId = segmentation.AddEmptySegment(f"{card.id}_{item['value']}", item["name"], colour)
                segment = segmentation.GetSegment(segmentId)
                if segment is None:  # e.g. the Segmentations module logic (converter rules) is not loaded
                    raise LightSegError(f"could not add segment '{item['name']}' to the segmentation")
                segment.SetTerminology(terminology_string(item["terminology"]))
                ids.InsertNextValue(segmentId)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, segmentationNode, ids):
                raise LightSegError("could not import the result into the segmentation")
            segmentationNode.SetAttribute(SEGMENTATION_MODEL_ATTRIBUTE, card.id)
        finally:
            segmentationNode.EndModify(wasModifying)
        return segmentationNode

    @staticmethod
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

    def placeInHierarchy(self, segmentationNode, volumeNode) -> None:
        """Keep the segmentation with its input in the subject hierarchy.

        A volume loaded from DICOM sits in a study: the segmentation goes into that same study, beside its
        series, which is where DICOM SEG export looks for it. Any other volume gets the segmentation as its child.
        """
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
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

    def _importSequence(self, job: SegmentationJob, card, volumeNode):
        """One segmentation per frame in a new sequence, synchronised with the input's browser."""
        inputSequence = self.scene.GetNodeByID(job.sequenceNodeID)
        name = self.scene.GenerateUniqueName(f"{inputSequence.GetName()} {card.id}")
        sequence = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        sequence.SetIndexName(inputSequence.GetIndexName())
        sequence.SetIndexUnit(inputSequence.GetIndexUnit())
        sequence.SetIndexType(inputSequence.GetIndexType())
        scratch = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "LightSeg frame")
        try:
            for i, (indexValue, _, _, labelPath) in enumerate(job.frames):
                self.labelmapToSegmentation(labelPath, card, inputSequence.GetNthDataNode(i), scratch)
                sequence.SetDataNodeAtValue(scratch, indexValue)
        finally:
            self.scene.RemoveNode(scratch)
        browser = self.scene.GetNodeByID(job.browserNodeID)
        if browser is not None:
            browser.AddSynchronizedSequenceNode(sequence)
            sequencesModule = getattr(getattr(slicer, "modules", None), "sequences", None)
            if sequencesModule is not None:
                sequencesModule.logic().UpdateProxyNodesFromSequences(browser)
                proxy = browser.GetProxyNode(sequence)
                if proxy is not None:
                    proxy.CreateDefaultDisplayNodes()
                    self.setReferenceGeometry(proxy, volumeNode)
                    proxy.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
                    self.placeInHierarchy(proxy, volumeNode)
        return sequence

    # ---------------------------------------------------------------- display
    @staticmethod
    def setShow3D(segmentationNode, show: bool) -> None:
        if segmentationNode is None:
            return
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        else:
            segmentationNode.RemoveClosedSurfaceRepresentation()

    # ---------------------------------------------------------------- label arrays, Dice, cardiac function
    def labelArray(self, segmentationNode, referenceVolumeNode, valuesByName: dict) -> np.ndarray:
        """A [k, j, i] uint8 array on the reference volume's grid; segments matched by name (case-insensitive)
        get the given values, others are left out. Works for sequence data nodes too."""
        wanted = {name.strip().lower(): value for name, value in valuesByName.items()}
        segmentation = segmentationNode.GetSegmentation()
        ids = vtk.vtkStringArray()
        values = []
        for i in range(segmentation.GetNumberOfSegments()):
            value = wanted.get(segmentation.GetNthSegment(i).GetName().strip().lower())
            if value is not None:
                ids.InsertNextValue(segmentation.GetNthSegmentID(i))
                values.append(value)
        if not values:
            raise LightSegError(f"'{segmentationNode.GetName()}' has no segment named "
                                f"{', '.join(valuesByName)}")
        label = slicer.vtkMRMLLabelMapVolumeNode()
        self.scene.AddNode(label)
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    segmentationNode, ids, label, referenceVolumeNode):
                raise LightSegError("could not export the segments to a labelmap")
            dims = label.GetImageData().GetDimensions()
            exported = numpy_support.vtk_to_numpy(label.GetImageData().GetPointData().GetScalars())
            exported = exported.reshape(dims[2], dims[1], dims[0])
            out = np.zeros(exported.shape, np.uint8)
            for order, value in enumerate(values, start=1):  # exported values follow the order of ids
                out[exported == order] = value
            return out
        finally:
            self.scene.RemoveNode(label)

    def cardiacLabelArray(self, segmentationNode, referenceVolumeNode) -> np.ndarray:
        """1 right ventricle, 2 myocardium, 3 left ventricle (LightSegLib.cardiac's convention)."""
        from LightSegLib.cardiac import VALUES_BY_NAME

        return self.labelArray(segmentationNode, referenceVolumeNode, VALUES_BY_NAME)

    def diceScores(self, segmentationNode, referenceLabelPath, modelId: str, referenceVolumeNode) -> dict:
        """Dice of each model label against a reference labelmap file on the volume's grid (the self-test); NaN for a
        structure in neither (LightSegLib.metrics)."""
        card = get_model(modelId)
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
        predicted = self.labelArray(segmentationNode, referenceVolumeNode, names)
        return {name: dice(predicted == value, truth == value) for name, value in names.items()}

    def cardiacFunction(self, edSegmentationNode, esSegmentationNode, referenceVolumeNode, tableNode=None):
        """LV/RV volumes, stroke volumes, EF and LV mass (LightSegLib.cardiac) into a table node."""
        import SimpleITK as sitk

        from LightSegLib.cardiac import cardiac_function

        spacing = referenceVolumeNode.GetSpacing()
        images = []
        for node in (edSegmentationNode, esSegmentationNode):
            image = sitk.GetImageFromArray(self.cardiacLabelArray(node, referenceVolumeNode))
            image.SetSpacing(spacing)  # volumes depend on spacing only; direction/origin do not change counts
            images.append(image)
        result = cardiac_function(*images)
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode",
                                                     self.scene.GenerateUniqueName("LightSeg cardiac function"))
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
        self.lastCardiacFunction = result
        return tableNode
