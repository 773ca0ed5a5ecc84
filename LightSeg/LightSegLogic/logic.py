"""LightSegLogic: what the widget, scripts and the self-test call. It holds the scene and the session's choices
(process runner, installer, Python, threads) and ties the concern modules to them: job.py runs the CLI, results.py
loads its output, classification.py, install.py and measures.py do the rest. No Qt: tested headlessly against the
real MRML of the ``slicer-core`` wheel (Testing/test_slicer_logic.py).
"""
from __future__ import annotations

import time
from typing import ClassVar

import slicer
from LightSegLib.errors import LightSegError
from LightSegLib.registry import get_model, list_models

from . import classification, install, measures, results
from .job import JobState, SegmentationJob, loadVolume, startJob
from .process import ProcessRunner


class OutputExistsError(LightSegError):
    """The chosen output segmentation already holds segments and replacing them was not confirmed."""


class LightSegLogic:
    """Segment MRML volumes with registered LightSeg models; results become named segmentation nodes.

    ``runnerFactory(args, env)`` makes the process runner (ProcessRunner by default); ``installer(packages)``
    installs missing packages after the user agreed (the widget passes slicer.util.pip_install behind a dialog).
    """

    DEFAULT_PARAMETERS: ClassVar[dict] = {"ModelId": "", "Int8": "false", "AllFrames": "false", "Show3D": "false"}

    wouldReplace = staticmethod(results.wouldReplace)
    setShow3D = staticmethod(results.setShow3D)
    segmentFocus = staticmethod(results.segmentFocus)

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

    @staticmethod
    def models(includeReference: bool = False) -> list:
        """Registered model cards; ``reference`` models (baselines for comparison) are hidden from users."""
        return list_models(include_reference=includeReference)

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

    # ---------------------------------------------------------------- segmentation: start / poll / cancel
    def startSegmentation(self, volumeNode, modelId: str, outputSegmentationNode=None, *, int8: bool = False,
                          replaceExisting: bool = False, allFrames: bool = False) -> SegmentationJob:
        """Check the request, then start the CLI on the volume (or every frame of its sequence).

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
        if sequence is None and not replaceExisting and results.wouldReplace(outputSegmentationNode):
            raise OutputExistsError(f"'{outputSegmentationNode.GetName()}' already has segments; "
                                    "confirm to replace them or choose a new segmentation")
        install.ensureDependencies(self.installer)
        return startJob(self.scene, volumeNode, modelId, outputSegmentationNode, sequence, browser,
                        runnerFactory=self.runnerFactory, python=self.python, threads=self.threads, int8=int8)

    def poll(self, job: SegmentationJob) -> SegmentationJob:
        """Read new progress; when the process has ended well, load the result into the scene (main thread)."""
        if not job.readProgress():
            return job
        try:
            result = results.importResults(self.scene, job)
        except Exception as err:  # a failed import must still end the job and clean up
            job.finish(JobState.FAILED, str(err))
            raise
        job.succeed(result.GetID())
        return job

    @staticmethod
    def cancel(job: SegmentationJob) -> None:
        """Stop the process tree; the scene is left as it was before Segment."""
        job.cancel()

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
                    job.cancel()
                    raise LightSegError(f"segmentation took longer than {timeout_s} s and was stopped")
                time.sleep(pollInterval_s)
        except BaseException:
            job.cancel()  # Ctrl+C in a script must not leave the process behind
            raise
        if progress is not None:
            progress(job)
        if job.state != JobState.DONE:
            raise LightSegError(job.message or str(job.state))
        self.lastJob = job
        return self.scene.GetNodeByID(job.resultNodeID)

    # ---------------------------------------------------------------- volumes in and out, as the CLI reads and writes
    def loadVolume(self, path, name: str | None = None, notes: list | None = None):
        """A volume node from a file or DICOM folder, refused with the CLI's one-line message when the CLI would."""
        return loadVolume(self.scene, path, name, notes)

    def saveResult(self, segmentationNode, volumeNode, path, overwrite: bool = False) -> None:
        """A LightSeg segmentation as the CLI writes it (the file name says the format), on the volume's grid."""
        results.saveResult(self.scene, segmentationNode, volumeNode, path, overwrite)

    # ---------------------------------------------------------------- classification and measures
    def classify(self, volumeNode, modelId: str, threshold: float | None = None):
        """Classify a 2D radiograph volume and add its activation map (classification.py)."""
        install.ensureDependencies(self.installer)
        return classification.classify(self.scene, volumeNode, get_model(modelId), threshold)

    def diceScores(self, segmentationNode, referenceLabelPath, modelId: str, referenceVolumeNode) -> dict:
        """Dice of each of the model's labels against a reference labelmap file (the self-test)."""
        return measures.diceScores(self.scene, segmentationNode, referenceLabelPath, get_model(modelId),
                                   referenceVolumeNode)

    def cardiacFunction(self, edSegmentationNode, esSegmentationNode, referenceVolumeNode, tableNode=None):
        """LV/RV volumes, stroke volumes, EF and LV mass into a table node (a new one unless given)."""
        result = measures.cardiacFunction(self.scene, edSegmentationNode, esSegmentationNode, referenceVolumeNode)
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode",
                                                     self.scene.GenerateUniqueName("LightSeg cardiac function"))
        measures.fillCardiacTable(tableNode, result)
        self.lastCardiacFunction = result
        return tableNode
