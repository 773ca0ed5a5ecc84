"""Render the extension's screenshot (docs/screenshot-cardiac.png) headlessly from a real LightSeg run.

The Slicer GUI cannot run on a build machine, so this shows what the module produces instead: the bundled cine
MRI frames segmented through LightSegLogic (real MRML from the slicer-core wheel, the real CLI), a short-axis
slice with the segments, their 3D surfaces (VTK off-screen) and the cardiac function table.

    .venv/bin/python LightSeg/Testing/render_screenshot.py [--model cardiac-acdc] [--out docs/screenshot-cardiac.png]
"""
from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "LightSeg"), str(REPO)]


def scene_with_logics():
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)
    logics = {}
    for name, cls in (("volumes", slicer.vtkSlicerVolumesLogic), ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic)):
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name.capitalize(), logic)
        logics[name] = logic
    slicer.modules = types.SimpleNamespace(**{k: types.SimpleNamespace(logic=(lambda lg=v: lg)) for k, v in logics.items()})
    logics["application"] = app  # keep it alive: the module logics hold raw pointers to it
    return scene, logics


def render_surfaces(segmentation_node, size=(600, 600)):
    """The segments' closed surfaces, lit and coloured as in Slicer's 3D view, as an RGB array."""
    import vtk
    from vtk.util import numpy_support

    segmentation_node.CreateClosedSurfaceRepresentation()
    segmentation = segmentation_node.GetSegmentation()
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.76, 0.76, 0.90)
    renderer.SetBackground2(0.0, 0.0, 0.0)
    renderer.GradientBackgroundOn()
    for i in range(segmentation.GetNumberOfSegments()):
        polydata = vtk.vtkPolyData()
        segmentation_node.GetClosedSurfaceRepresentation(segmentation.GetNthSegmentID(i), polydata)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(polydata)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(segmentation.GetNthSegment(i).GetColor())
        if segmentation.GetNthSegment(i).GetName() == "myocardium":
            actor.GetProperty().SetOpacity(0.55)
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    camera.Elevation(-35)
    camera.Azimuth(25)
    camera.Zoom(1.3)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    return rgb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cardiac-acdc")
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshot-cardiac.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import slicer.util
    from LightSegLogic import LightSegLogic, measures

    scene, logics = scene_with_logics()
    samples = REPO / "Resources" / "Samples"
    ed = logics["volumes"].AddArchetypeVolume(str(samples / "acdc_patient002_ED.nii.gz"), "cine ED")
    es = logics["volumes"].AddArchetypeVolume(str(samples / "acdc_patient002_ES.nii.gz"), "cine ES")
    logic = LightSegLogic()
    start = time.perf_counter()
    ed_seg = logic.segment(ed, args.model)
    seconds = time.perf_counter() - start
    es_seg = logic.segment(es, args.model)
    table = logic.cardiacFunction(ed_seg, es_seg, ed)
    card = logic.models(includeReference=True)
    card = next(c for c in card if c.id == args.model)

    volume = slicer.util.arrayFromVolume(ed)
    labels = measures.cardiacLabelArray(scene, ed_seg, ed)
    k = int(np.argmax((labels == 2).sum(axis=(1, 2))))  # the slice with most myocardium: mid-ventricular
    spacing = ed.GetSpacing()
    colours = np.zeros((256, 4))
    for label in card.labels:
        colours[label["value"]] = [*(np.array(label["color"]) / 255.0), 0.55]

    fig = plt.figure(figsize=(13, 6), dpi=100, facecolor="#1e1e1e")
    ax = fig.add_axes([0.01, 0.12, 0.38, 0.78])
    ax.imshow(volume[k], cmap="gray", aspect=spacing[1] / spacing[0])
    ax.imshow(colours[labels[k]], aspect=spacing[1] / spacing[0])
    for label in card.labels:  # outlines, brighter, so neighbouring segments stay apart
        if (labels[k] == label["value"]).any():
            ax.contour(labels[k] == label["value"], levels=[0.5], linewidths=1.2,
                       colors=[np.minimum(1.0, np.array(label["color"]) / 255.0 * 1.4)])
    ax.set_title(f"short axis, slice {k}", color="w", fontsize=11)
    ax.axis("off")
    ax3 = fig.add_axes([0.40, 0.12, 0.32, 0.78])
    ax3.imshow(render_surfaces(ed_seg))
    ax3.set_title("3D (Show 3D)", color="w", fontsize=11)
    ax3.axis("off")
    rows = [[table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())] for r in range(table.GetNumberOfRows())]
    text = "\n".join(f"{m:<21}{lv:>6} {rv:>6} {u}" for m, lv, rv, u in rows)
    fig.text(0.735, 0.62, f"{'':<21}{'LV':>6} {'RV':>6}\n{text}", color="w", family="monospace", fontsize=9,
             va="center")
    segments = "\n".join(f"  {lab['name']}" for lab in card.labels)
    fig.text(0.735, 0.32, f"Segments (SNOMED CT terminology):\n{segments}", color="#cccccc", fontsize=9.5,
             va="center")
    fig.suptitle(f"LightSeg - {card.title}: {seconds:.1f} s on the CPU (ACDC patient 002, end-diastole)",
                 color="w", fontsize=13)
    fig.text(0.01, 0.03, "Rendered headlessly from LightSegLogic over real MRML (LightSeg/Testing/render_screenshot.py); "
             "volumes use the sample's nominal spacing.", color="#999999", fontsize=8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, facecolor=fig.get_facecolor())
    print(f"wrote {args.out} ({seconds:.1f} s segmentation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
