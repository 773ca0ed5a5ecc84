"""A fresh, real MRML scene per test (slicer-core wheel, no Qt), with the module logics Slicer would have."""
from __future__ import annotations

import types

import pytest


def real_scene(monkeypatch):
    """Generator behind a ``mrml`` fixture: the scene plus the volumes/segmentations/sequences logics, installed as ``slicer.mrmlScene`` and a
    ``slicer.modules`` stand-in (slicer.util's segment helpers and the LightSeg logic look there)."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)
    logics = {}
    for name, cls in (("volumes", slicer.vtkSlicerVolumesLogic),
                      ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("sequences", slicer.vtkSlicerSequencesLogic)):
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name.capitalize(), logic)
        logics[name] = logic
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        **{k: types.SimpleNamespace(logic=(lambda lg=v: lg)) for k, v in logics.items()}), raising=False)
    yield types.SimpleNamespace(scene=scene, app=app, **logics)
    scene.Clear(True)
