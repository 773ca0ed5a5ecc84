"""A segmentation job: ``lightseg segment --progress jsonl`` run in a child process on the input written as NRRD,
its progress lines read into stage, fraction, notes and errors, and its end (done, failed, cancelled).

A child process keeps the UI responsive, keeps ONNX Runtime's thread pool from fighting Slicer's, keeps a crash out
of Slicer, and lets Cancel end the whole process tree (process.py). NRRD keeps the geometry exactly, oblique
included. Loading what the job wrote into the scene is results.py's part.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import LightSegLib
import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from LightSegLib.classify import read_radiograph
from LightSegLib.errors import LightSegError
from LightSegLib.io import read_image
from LightSegLib.stages import INFER, POSTPROCESS, READ, WRITE
from vtk.util import numpy_support

#: Where each CLI stage falls within one file's progress bar (fraction start, fraction end).
STAGE_SPANS = {READ: (0.0, 0.05), INFER: (0.05, 0.85), POSTPROCESS: (0.85, 0.92), WRITE: (0.92, 0.97)}
#: SimpleITK is LPS, MRML is RAS: IJK-to-RAS = LPS_TO_RAS . [direction . diag(spacing) | origin]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
RADIOGRAPH_SUFFIXES = (".jpg", ".jpeg", ".png")
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

    def readProgress(self) -> bool:
        """Take in what the child said since the last call; True once it has ended well and its result waits to be
        imported. A child that failed finishes the job here (FAILED, with the child's own error where it gave one)."""
        if self.finished:
            return False
        self.elapsed = time.perf_counter() - self.startTime
        for message in self.runner.messages():
            if self._collect(message):
                self._fileProgress = 0.0
            elif "stage" in message:
                self.stage = message["stage"]
                self.history.append((self.elapsed, self.stage, float(message.get("progress", 0.0))))
                lo, hi = STAGE_SPANS.get(self.stage, (0.0, 0.97))
                self._fileProgress = lo + (hi - lo) * float(message.get("progress", 0.0))
            self.progress = min(0.97, (len(self.summaries) + self._fileProgress) / len(self.frames))
        code = self.runner.returncode()
        if code is None:
            return False
        for message in self.runner.messages():  # lines that arrived between the drain and the exit
            self._collect(message)
        if code != 0:
            stderr = self.runner.stderr_lines()  # only what the child did not say itself: a crash
            if self.errors:
                tail = self.errors[-1]
            elif code < 0 or code == 137:  # killed from outside; on Linux most often the out-of-memory killer
                tail = (f"the segmentation process was killed (exit code {code}); if the computer ran out of "
                        "memory, close other programs or crop the volume")
            else:
                tail = stderr[-1] if stderr else f"exit code {code}"
            self.finish(JobState.FAILED, tail)
            return False
        self.stage = "import"
        return True

    def _collect(self, message: dict) -> bool:
        """Keep a finished file's summary, a note or an error from the child's JSON stream; True for a summary."""
        if "note" in message:
            self.notes.append(message["note"])
        elif "error" in message:
            self.errors.append(message["error"])
        elif message.get("done"):
            self.summaries.append(message.get("summary", {}))
            return True
        return False

    def succeed(self, resultNodeID: str) -> None:
        """The result is in the scene: the job is done, with the seconds of each stage summed over its files."""
        seconds: dict = {}
        for summary in self.summaries:
            for key, value in summary.get("seconds", {}).items():
                seconds[key] = seconds.get(key, 0.0) + value
        self.seconds = seconds
        self.resultNodeID = resultNodeID
        self.progress = 1.0
        self.finish(JobState.DONE, "")

    def cancel(self) -> None:
        """Stop the process tree; the scene is left as it was before Segment."""
        if self.finished:
            return
        self.runner.cancel()
        self.finish(JobState.CANCELLED, "cancelled by the user")

    def finish(self, state: JobState, message: str) -> None:
        self.state, self.message = state, message
        self.stage = state
        self.elapsed = time.perf_counter() - self.startTime
        shutil.rmtree(self.tempDir, ignore_errors=True)


def startJob(scene, volumeNode, modelId: str, outputNode, sequence, browser, *, runnerFactory, python: str | None,
             threads: int | None, int8: bool) -> SegmentationJob:
    """Write the volume (or, with a sequence, every one of its frames) to a temporary folder and start the CLI."""
    tempDir = Path(tempfile.mkdtemp(prefix="LightSeg-"))
    frames = []
    try:
        if sequence is not None:
            for i in range(sequence.GetNumberOfDataNodes()):
                frames.append((sequence.GetNthIndexValue(i), sequence.GetNthDataNode(i),
                               tempDir / f"frame{i:04d}.nrrd", tempDir / "out" / f"frame{i:04d}.nrrd"))
            (tempDir / "out").mkdir()
        else:
            frames.append((None, volumeNode, tempDir / "input.nrrd", tempDir / "labels.nrrd"))
        for _, node, inputPath, _ in frames:
            writeVolume(node, inputPath)
    except Exception:
        shutil.rmtree(tempDir, ignore_errors=True)
        raise

    args = [python or pythonExecutable(), "-m", "LightSegLib.cli", "segment", "--model", modelId,
            "--progress", "jsonl"]
    if threads:
        args += ["--threads", str(threads)]
    if int8:
        args.append("--int8")
    if sequence is not None:
        args += [str(f[2]) for f in frames] + [str(tempDir / "out"), "--format", "nrrd"]
    else:
        args += [str(frames[0][2]), str(frames[0][3])]
    runner = runnerFactory(args, childEnvironment())
    try:
        runner.start()
    except Exception as err:  # noqa: BLE001  (e.g. Python not found: report it, leave no temporary files)
        shutil.rmtree(tempDir, ignore_errors=True)
        raise LightSegError(f"could not start the segmentation process: {err}") from err
    return SegmentationJob(
        modelId=modelId, volumeNodeID=volumeNode.GetID(),
        outputNodeID=outputNode.GetID() if outputNode is not None else None,
        frames=[(index, node.GetID() if node.GetScene() is scene else None, inputPath, outputPath)
                for index, node, inputPath, outputPath in frames],
        tempDir=tempDir, runner=runner, int8=int8,
        sequenceNodeID=sequence.GetID() if sequence is not None else None,
        browserNodeID=browser.GetID() if browser is not None else None)


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


def childEnvironment() -> dict:
    """Make the child find this LightSegLib and its models, whatever PYTHONPATH Slicer's launcher set."""
    env = dict(os.environ)
    libParent = str(Path(LightSegLib.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([libParent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def writeVolume(volumeNode, path: Path) -> None:
    """NRRD through Slicer's own storage node: exact IJK-to-RAS, written without touching the node's storage."""
    if volumeNode.GetParentTransformNode() is not None and not volumeNode.GetParentTransformNode().IsTransformToWorldLinear():
        raise LightSegError("the input volume is under a non-linear transform: harden or remove it first")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    if not storage.WriteData(volumeNode):
        raise LightSegError(f"could not write the input volume to {path}")


def loadVolume(scene, path, name: str | None = None, notes: list | None = None):
    """A scalar volume node from a file or DICOM folder read by the CLI's own reader (``LightSegLib.io.read_image``):
    what the CLI refuses is refused with its one-line message, and the node has the geometry the CLI sees. A 2D
    radiograph (JPEG, PNG) is read as ``lightseg classify`` reads it: one grey slice, 1 mm pixels."""
    if Path(path).suffix.lower() in RADIOGRAPH_SUFFIXES:
        image = sitk.GetImageFromArray(read_radiograph(path)[None])
    else:
        image = read_image(path, notes=notes)
    array = sitk.GetArrayFromImage(image)  # [k, j, i]
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*image.GetSize())
    imageData.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        array.ravel(), deep=True, array_type=numpy_support.get_vtk_array_type(array.dtype)))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name or Path(path).name))
    node.SetAndObserveImageData(imageData)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for i, row in enumerate(LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())):
        for j, value in enumerate(row):
            matrix.SetElement(i, j, float(value))
    for i, value in enumerate(LPS_TO_RAS @ np.array(image.GetOrigin())):
        matrix.SetElement(i, 3, float(value))
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    return node
