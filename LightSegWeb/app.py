"""The page: Slicer's own slice and 3D views (trame-slicer) beside a panel to open a volume, pick a model, segment,
refine a segment with clicks and download. Everything done to the scene goes through LightSegLogic (the Slicer
module's logic: the child process, its progress and cancel, the result's named segments, the CLI's reader and
writers, the click controller); this file holds layout and events only."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from LightSegLib import model_text
from LightSegLib.errors import LightSegError
from LightSegLib.registry import get_model
from LightSegLib.segments import named_segments
from LightSegLogic import JobState, LightSegLogic, SegmentClicks
from slicer import vtkMRMLSliceNode
from vtkmodules.vtkCommonCore import vtkCommand
from trame.app import get_server
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from .files import Workspace

POLL_S = 0.1
SURFACES_AFTER_S = 0.5
CLICK_PRIORITY = 10.0  # before Slicer's slice interactor style, so a click in click mode neither pans nor windows
CLICK_HELP = {"add": "Click in a slice view: a click adds, Shift- or Ctrl-click removes.",
              "remove": "Click in a slice view: a click removes."}
DOWNLOADS = {"seg.nrrd": "application/octet-stream", "nii.gz": "application/gzip"}


@dataclass
class Opened:
    """A volume the user opened, and what LightSeg made of it."""
    volumeID: str
    name: str
    segmentationID: str | None = None
    modelId: str | None = None
    summary: dict | None = None
    quality: str = ""


class LightSegWebApp:
    def __init__(self, workspace: Workspace, server=None, threads: int | None = None):
        self.workspace = workspace
        self.server = get_server(server, client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layouts = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layouts.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layouts.set_layout("Axial Primary")
        self.logic = LightSegLogic(scene=self.slicer.scene, threads=threads)
        self.opened: dict[str, Opened] = {}
        self.job = None
        self.waiting: deque = deque()  # (volume ID, model id) in the order Segment was clicked
        self.clicks: SegmentClicks | None = None
        self._click_observers: list = []  # (interactor, tag) while click mode is on
        self._init_state()
        self._build_ui()
        self.ctrl.trigger("lightseg_upload")(self.upload)
        self.ctrl.trigger("lightseg_download")(self.download)
        self.state.change("data_pick")(self._on_data_pick)
        self.state.change("volume_id")(self._on_volume_pick)
        self.state.change("model_id")(self._on_model_pick)
        self.state.change("click_mode")(self._on_click_mode)
        self.state.change("click_segment")(self._on_click_choice)
        self.state.change("click_action")(self._on_click_choice)

    # ------------------------------------------------------------------------------------------------ state
    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "LightSeg"
        models = self.logic.models()
        s.models = [{"value": c.id, "title": model_text.selector_label(c)} for c in models]
        s.model_id = next((c.id for c in models if c.status == "stable"), models[0].id)
        s.data_files = self.workspace.data_files()
        s.data_pick = None
        s.max_upload = self.workspace.max_upload_bytes
        s.volumes, s.volume_id = [], None
        s.error = ""
        s.running, s.progress, s.status, s.waiting = False, 0, "Open a volume to start.", []
        s.legend, s.quality, s.quality_ok, s.shown_at = [], "", True, ""
        s.has_result, s.classification = False, ""
        s.click_mode, s.click_segments, s.click_segment, s.click_action, s.click_status = False, [], None, "add", ""
        s.cardiac_choices, s.cardiac_ed, s.cardiac_es, s.cardiac_rows, s.cardiac_notes = [], None, None, [], ""
        self._on_model_pick(s.model_id)

    def _on_model_pick(self, model_id, **_):
        card = get_model(model_id)
        self.state.model_text = f"{model_text.title(card)}: {model_text.summary(card)}"
        self.state.model_licence = card.licence
        self.state.model_classifies = card.task == "classification"

    # ------------------------------------------------------------------------------------------------ opening
    def upload(self, file: dict) -> None:
        """A file sent by the page (the page refuses files over the limit before sending; checked again here)."""
        content = file.get("content") or b""
        if isinstance(content, list):
            content = b"".join(content)
        try:
            path = self.workspace.save_upload(file.get("name", "upload"), content)
        except LightSegError as err:
            self.state.error = str(err)
            return
        self.open(path)

    def _on_data_pick(self, data_pick, **_):
        if not data_pick:
            return
        try:
            path = self.workspace.data_file(data_pick)
        except LightSegError as err:
            self.state.error = str(err)
            return
        self.open(path, shown=data_pick)

    def open(self, path: Path, shown: str | None = None) -> None:
        """Read the volume as the CLI would and show it; a file the CLI refuses shows the CLI's one line."""
        shown = shown or path.name
        try:
            node = self.logic.loadVolume(path, name=Path(shown).name.split(".")[0])
        except LightSegError as err:
            self.state.error = str(err).replace(str(path), shown)
            return
        self.opened[node.GetID()] = Opened(node.GetID(), shown)
        node.SetAttribute("LightSegWeb.Source", str(path))
        self.state.error = ""
        self.state.volumes = [{"value": o.volumeID, "title": o.name} for o in self.opened.values()]
        self.state.volume_id = node.GetID()
        self._on_volume_pick(node.GetID())
        self.state.status = f"Opened {shown}. Choose a model and click Segment."

    def _on_volume_pick(self, volume_id, **_):
        """Show the chosen volume and its segmentation (if any) in every view; hide the others'."""
        opened = self.opened.get(volume_id)
        if opened is None:
            return
        scene = self.slicer.scene
        self.slicer.display_manager.show_volume_in_slice_background(scene.GetNodeByID(volume_id))
        self.slicer.display_manager.show_volume_in_slice_foreground(None)
        for other in self.opened.values():
            segmentation = scene.GetNodeByID(other.segmentationID) if other.segmentationID else None
            if segmentation is not None and segmentation.GetDisplayNode() is not None:
                segmentation.GetDisplayNode().SetVisibility(other is opened)
        self.slicer.display_manager.reset_views()
        self._show_result(opened)

    # ------------------------------------------------------------------------------------------------ segmenting
    def segment(self) -> None:
        """Segment (or, for a radiograph model, classify) the shown volume; while a job runs, wait in line."""
        if self.state.volume_id not in self.opened:
            self.state.error = "open a volume first"
            return
        self.state.error = ""
        request = (self.state.volume_id, self.state.model_id)
        if self.state.model_classifies:
            self._classify(*request)
            return
        self.waiting.append(request)
        self._show_waiting()
        if self.job is None:
            self._start_next()

    def _start_next(self) -> None:
        while self.waiting:
            volume_id, model_id = self.waiting.popleft()
            self._show_waiting()
            try:
                self.job = self.logic.startSegmentation(self.slicer.scene.GetNodeByID(volume_id), model_id)
            except LightSegError as err:
                self.state.error = str(err)
                continue
            self.clicked = time.perf_counter()
            self.state.running, self.state.progress = True, 0
            asyncio.get_event_loop().create_task(self._watch(self.job))
            return

    async def _watch(self, job) -> None:
        """Poll the job (the Slicer widget's timer does the same); the server stays free between polls."""
        while True:
            try:
                self.logic.poll(job)
            except LightSegError as err:  # the import failed: the job is already marked failed
                job.message = str(err)
            with self.state:
                self.state.progress = round(100 * job.progress)
                self.state.status = job.statusText()
                if job.finished:
                    self._finished(job)
            if job.finished:
                break
            await asyncio.sleep(POLL_S)
        self.job = None
        with self.state:
            self._start_next()

    def _finished(self, job) -> None:
        self.state.running = False
        if job.state == JobState.FAILED:
            self.state.error = job.message
        if job.state != JobState.DONE:
            return
        opened = self.opened[job.volumeNodeID]
        old = self.slicer.scene.GetNodeByID(opened.segmentationID) if opened.segmentationID else None
        if old is not None:
            self.slicer.scene.RemoveNode(old)
        opened.segmentationID, opened.modelId = job.resultNodeID, job.modelId
        opened.summary = job.summaries[0] if job.summaries else {}
        opened.quality = job.qualityText()
        self.state.shown_seconds = round(time.perf_counter() - self.clicked, 2)
        if self.state.volume_id == opened.volumeID:
            self._show_result(opened, centre=True)
        self._refresh_cardiac()
        # Surfaces take a while on a large organ: build them once the slices have reached the page.
        asyncio.get_event_loop().call_later(SURFACES_AFTER_S, self._show_3d, job.resultNodeID)

    def cancel(self) -> None:
        """Stop the running job; the scene stays as it was before Segment."""
        if self.job is not None:
            self.logic.cancel(self.job)

    def _show_waiting(self) -> None:
        self.state.waiting = [f"{position}. {model} on {self.opened[volume].name}"
                              for position, (volume, model) in enumerate(self.waiting, start=1)]

    # ------------------------------------------------------------------------------------------------ results
    def _show_result(self, opened: Opened, centre: bool = False) -> None:
        """Legend (names, colours, volumes), quality line and downloads for the shown volume."""
        segmentation = self.slicer.scene.GetNodeByID(opened.segmentationID) if opened.segmentationID else None
        self.state.has_result = segmentation is not None
        self.state.click_mode = False
        if segmentation is None:
            self.state.legend, self.state.quality, self.state.shown_at = [], "", ""
            return
        ids = segmentation.GetSegmentation().GetSegmentIDs()
        self.state.click_segments = [{"value": i, "title": segmentation.GetSegmentation().GetSegment(i).GetName()}
                                     for i in ids]
        self.state.click_segment = ids[0] if ids else None
        volumes = (opened.summary or {}).get("volumes_ml", {})
        self.state.legend = [{"name": s["name"], "color": "#" + "".join(f"{round(c * 255):02x}" for c in s["color"]),
                              "ml": f"{volumes[s['name']]:.1f} mL" if s["name"] in volumes else ""}
                             for s in named_segments(get_model(opened.modelId).labels)]
        self.state.quality_ok = opened.quality == "ok"
        self.state.quality = "Quality: ok" if self.state.quality_ok else opened.quality
        self.state.download_name = f"{opened.name.split('/')[-1].split('.')[0]}_{opened.modelId}"
        if centre and volumes:
            largest = max(volumes, key=volumes.get)
            self._centre_on(segmentation, largest)

    def _centre_on(self, segmentation, name: str) -> None:
        """Centre every slice view on a point inside the named segment."""
        point = self.logic.segmentFocus(segmentation, name)
        if point is None:
            return
        vtkMRMLSliceNode.JumpAllSlices(self.slicer.scene, *point, vtkMRMLSliceNode.CenteredJumpSlice)
        self.state.shown_at = f"{name} centred at R {point[0]:.1f}, A {point[1]:.1f}, S {point[2]:.1f} mm"

    def _show_3d(self, segmentation_id: str) -> None:
        segmentation = self.slicer.scene.GetNodeByID(segmentation_id)
        if segmentation is None:
            return
        self.logic.setShow3D(segmentation, True)
        for view in self.slicer.view_manager.get_threed_views():
            view.reset_view()

    def download(self, fmt: str):
        """The shown volume's result as the CLI writes it (.seg.nrrd or .nii.gz, on the input's grid)."""
        opened = self.opened.get(self.state.volume_id)
        if fmt not in DOWNLOADS or opened is None or opened.segmentationID is None:
            return None
        scene = self.slicer.scene
        path = self.workspace.output(f"{self.state.download_name}.{fmt}")
        self.logic.saveResult(scene.GetNodeByID(opened.segmentationID), scene.GetNodeByID(opened.volumeID), path,
                              overwrite=True)
        return path.read_bytes()

    def _classify(self, volume_id: str, model_id: str) -> None:
        try:
            result = self.logic.classify(self.slicer.scene.GetNodeByID(volume_id), model_id)
        except LightSegError as err:
            self.state.error = str(err)
            return
        heatmap = self.slicer.scene.GetNodeByID(result.heatmapNodeID)
        self.slicer.display_manager.show_volume_in_slice_foreground(heatmap)
        composites = self.slicer.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        composites.UnRegister(None)
        for i in range(composites.GetNumberOfItems()):
            composites.GetItemAsObject(i).SetForegroundOpacity(0.4)
        self.state.classification = result.statusText()

    def _refresh_cardiac(self) -> None:
        """Cardiac segmentations can be paired as end-diastole and end-systole for the function table."""
        cardiac = [o for o in self.opened.values() if o.modelId and get_model(o.modelId).task == "cardiac"]
        self.state.cardiac_choices = [{"value": o.volumeID, "title": o.name} for o in cardiac]
        if len(cardiac) >= 2 and not self.state.cardiac_ed:
            self.state.cardiac_ed, self.state.cardiac_es = cardiac[0].volumeID, cardiac[1].volumeID

    def cardiac_function(self) -> None:
        scene = self.slicer.scene
        ed, es = self.opened.get(self.state.cardiac_ed), self.opened.get(self.state.cardiac_es)
        if ed is None or es is None or ed is es:
            self.state.error = "choose two different cardiac segmentations: end-diastole and end-systole"
            return
        try:
            self.logic.cardiacFunction(scene.GetNodeByID(ed.segmentationID), scene.GetNodeByID(es.segmentationID),
                                       scene.GetNodeByID(ed.volumeID))
        except LightSegError as err:
            self.state.error = str(err)
            return
        r = self.logic.lastCardiacFunction
        fmt = lambda value: "" if value is None else f"{value:.1f}"  # noqa: E731
        self.state.cardiac_rows = [
            {"measure": m, "lv": fmt(lv), "rv": fmt(rv), "unit": u} for m, lv, rv, u in (
                ("End-diastolic volume", r.lv_edv_ml, r.rv_edv_ml, "mL"),
                ("End-systolic volume", r.lv_esv_ml, r.rv_esv_ml, "mL"),
                ("Stroke volume", r.lv_sv_ml, r.rv_sv_ml, "mL"),
                ("Ejection fraction", r.lv_ef_percent, r.rv_ef_percent, "%"),
                ("Myocardial mass (ED)", r.lv_myocardial_mass_g, None, "g"))]
        self.state.cardiac_notes = " | ".join(r.notes)

    # ------------------------------------------------------------------------------------------------ clicks
    def _on_click_mode(self, click_mode, **_):
        """In click mode a left click in a slice view refines the chosen segment (LightSegLogic.SegmentClicks)."""
        for interactor, tag in self._click_observers:
            interactor.RemoveObserver(tag)
        self._click_observers = []
        if not click_mode:
            self.state.click_status = ""
            return
        for view in self.slicer.view_manager.get_slice_views():
            interactor = view.interactor()
            tag = interactor.AddObserver(vtkCommand.LeftButtonPressEvent,
                                         lambda *_, v=view: self._on_slice_click(v), CLICK_PRIORITY)
            self._click_observers.append((interactor, tag))
        self._click_controller()

    def _on_click_choice(self, **_):
        if self.state.click_mode and self._click_controller() is not None:
            self._show_clicks(CLICK_HELP[self.state.click_action])

    def _click_controller(self) -> SegmentClicks | None:
        """The controller for the shown volume's chosen segment (made again when either changes)."""
        opened = self.opened.get(self.state.volume_id)
        scene = self.slicer.scene
        if opened is None or opened.segmentationID is None or not self.state.click_segment:
            return None
        key = (scene.GetNodeByID(opened.volumeID), scene.GetNodeByID(opened.segmentationID), self.state.click_segment)
        c = self.clicks
        if c is None or (c.volume_node, c.segmentation_node, c.segment_id) != key:
            try:
                self.clicks = SegmentClicks(*key, threads=self.logic.threads or 2)
            except LightSegError as err:  # no click model installed
                self.state.error = str(err)
                self.state.click_mode = False
                return None
            note = self.clicks.session.note
            self._show_clicks(CLICK_HELP[self.state.click_action] + (f" Note: {note}." if note else ""))
        return self.clicks

    def _on_slice_click(self, view) -> None:
        interactor = view.interactor()
        for observed, tag in self._click_observers:  # the click is ours: the slice view does not pan or window
            if observed is interactor:
                interactor.GetCommand(tag).SetAbortFlag(1)
        clicks = self._click_controller()
        if clicks is None:
            return
        x, y = interactor.GetEventPosition()
        ras = view.get_view_node().GetXYToRAS().MultiplyPoint((x, y, 0.0, 1.0))[:3]
        ijk = clicks.ras_to_ijk(ras)
        with self.state:
            if not clicks.inside(ijk):
                self._show_clicks("That point is outside the volume.")
                return
            positive = self.state.click_action == "add" and not (interactor.GetShiftKey() or interactor.GetControlKey())
            started = time.perf_counter()
            clicks.write(clicks.click(ijk, positive))
            self._show_clicks(f"{'Added' if positive else 'Removed'} at R {ras[0]:.1f}, A {ras[1]:.1f}, "
                              f"S {ras[2]:.1f} mm, voxel ({ijk[0]}, {ijk[1]}, {ijk[2]}) in "
                              f"{time.perf_counter() - started:.2f} s")

    def click_undo(self) -> None:
        clicks = self._click_controller()
        if clicks is None:
            return
        labelmap = clicks.undo()
        if labelmap is None:
            self._show_clicks("Nothing to undo.")
            return
        clicks.write(labelmap)
        self._show_clicks("Undone.")

    def click_propagate(self, direction: int) -> None:
        clicks = self._click_controller()
        if clicks is None:
            return
        started = time.perf_counter()
        try:
            clicks.write(clicks.propagate(direction))
        except LightSegError as err:
            self._show_clicks(str(err))
            return
        self._show_clicks(f"Propagated {'up' if direction > 0 else 'down'} in {time.perf_counter() - started:.2f} s: "
                          + clicks.propagated())

    def _show_clicks(self, message: str) -> None:
        """The segment's size as the scene holds it (and in the legend), then what the last action did."""
        clicks = self.clicks
        name = clicks.segmentation_node.GetSegmentation().GetSegment(clicks.segment_id).GetName()
        voxels = clicks.voxels()
        ml = voxels * float(np.prod(clicks.volume_node.GetSpacing())) / 1000.0
        self.state.click_status = f"{name}: {voxels} voxels, {ml:.1f} mL. {message}"
        self.state.legend = [{**item, "ml": f"{ml:.1f} mL"} if item["name"] == name else item
                             for item in self.state.legend]

    # ------------------------------------------------------------------------------------------------ layout
    def _build_ui(self) -> None:
        limit_mb = self.workspace.max_upload_bytes / 1e6
        upload = ("(f => { if (!f) return; if (f.size > max_upload) { error = f.name + ' is ' + "
                  "Math.round(f.size / 1e6) + ' MB: uploads are limited to " + f"{limit_mb:.0f}" + " MB'; return; } "
                  "trigger('lightseg_upload', [f]); })($event.target.files[0])")
        with SinglePageWithDrawerLayout(self.server, width=380) as layout:
            layout.title.set_text("LightSeg")
            with layout.toolbar:
                v3.VSpacer()
                html.Div("CPU segmentation on Slicer's views", classes="text-caption mr-4")
            with layout.drawer, html.Div(classes="pa-3 d-flex flex-column", style="gap: 10px"):
                v3.VFileInput(label="Open a volume (upload)", change=upload, density="compact",
                              prepend_icon="mdi-file-upload", id="upload", hide_details=True,
                              accept=".nii,.nii.gz,.nrrd,.nhdr,.mha,.mhd,.dcm,.jpeg,.jpg,.png")
                v3.VSelect(v_if="data_files.length", label="...or a file of the server's data folder",
                           items=("data_files",), v_model=("data_pick",), density="compact", hide_details=True,
                           id="data")
                v3.VSelect(label="Volume", items=("volumes",), v_model=("volume_id",), density="compact",
                           hide_details=True, v_if="volumes.length > 1")
                v3.VSelect(label="Model", items=("models",), v_model=("model_id",), density="compact",
                           hide_details=True, id="model")
                html.Div("{{ model_text }}", classes="text-caption")
                html.Div("Licence: {{ model_licence }}", classes="text-caption text-medium-emphasis")
                with html.Div(classes="d-flex", style="gap: 8px"):
                    v3.VBtn("{{ model_classifies ? 'Classify' : 'Segment' }}", click=self.segment, color="primary",
                            id="segment", disabled=("!volume_id",))
                    v3.VBtn("Cancel", click=self.cancel, id="cancel", disabled=("!running",))
                v3.VProgressLinear(v_show="running", model_value=("progress",), height=8, color="primary",
                                   id="progress")
                html.Div("{{ status }}", classes="text-caption", style="white-space: pre-line", id="status")
                with html.Div(v_if="waiting.length", id="waiting", classes="text-caption"):
                    html.Div("Waiting:")
                    html.Div("{{ item }}", v_for="item in waiting")
                v3.VAlert(v_if="error", text=("error",), type="error", density="compact", id="error")
                with html.Div(v_if="has_result", id="result"):
                    with html.Div(id="legend"):
                        with html.Div(v_for="item in legend", classes="d-flex align-center legend-row",
                                      style="gap: 8px"):
                            html.Span(style=("{ background: item.color, width: '14px', height: '14px', "
                                             "display: 'inline-block', borderRadius: '3px' }",))
                            html.Span("{{ item.name }}", classes="legend-name")
                            v3.VSpacer()
                            html.Span("{{ item.ml }}", classes="legend-ml")
                    html.Div("{{ quality }}", id="quality", classes=("quality_ok ? 'text-success' : 'text-warning'",))
                    html.Div("{{ shown_at }}", classes="text-caption", id="shown-at")
                    with html.Div(classes="d-flex mt-2", style="gap: 8px"):
                        for fmt, mime in DOWNLOADS.items():
                            v3.VBtn(f".{fmt}", prepend_icon="mdi-download", size="small", id=f"download-{fmt.split('.')[0]}",
                                    click=f"utils.download(download_name + '.{fmt}', "
                                          f"trigger('lightseg_download', ['{fmt}']), '{mime}')")
                    v3.VSwitch(label="Refine with clicks", v_model=("click_mode",), density="compact", color="primary",
                               hide_details=True, id="click-mode", disabled=("running",))
                    with html.Div(v_if="click_mode", id="clicks", classes="d-flex flex-column", style="gap: 6px"):
                        v3.VSelect(label="Segment", items=("click_segments",), v_model=("click_segment",),
                                   density="compact", hide_details=True, id="click-segment")
                        with v3.VBtnToggle(v_model=("click_action",), mandatory=True, density="compact",
                                           color="primary", variant="outlined", divided=True):
                            v3.VBtn("+ add", value="add", size="small", id="click-add")
                            v3.VBtn("- remove", value="remove", size="small", id="click-remove")
                        with html.Div(classes="d-flex", style="gap: 8px"):
                            v3.VBtn("Undo", click=self.click_undo, size="small", id="click-undo",
                                    prepend_icon="mdi-undo")
                            v3.VBtn("Propagate up", click=(self.click_propagate, "[1]"), size="small",
                                    id="propagate-up")
                            v3.VBtn("Propagate down", click=(self.click_propagate, "[-1]"), size="small",
                                    id="propagate-down")
                        html.Div("{{ click_status }}", classes="text-caption", id="click-status")
                html.Div("{{ classification }}", v_if="classification", id="classification")
                with html.Div(v_if="cardiac_choices.length > 1", id="cardiac"):
                    html.Div("Cardiac function", classes="text-subtitle-2")
                    v3.VSelect(label="End-diastole", items=("cardiac_choices",), v_model=("cardiac_ed",),
                               density="compact", hide_details=True)
                    v3.VSelect(label="End-systole", items=("cardiac_choices",), v_model=("cardiac_es",),
                               density="compact", hide_details=True)
                    v3.VBtn("Compute", click=self.cardiac_function, size="small", id="cardiac-compute")
                    with v3.VTable(v_if="cardiac_rows.length", density="compact", id="cardiac-table"):
                        with html.Thead(), html.Tr():
                            for head in ("", "LV", "RV", ""):
                                html.Th(head)
                        with html.Tbody(), html.Tr(v_for="row in cardiac_rows"):
                            for key in ("measure", "lv", "rv", "unit"):
                                html.Td(f"{{{{ row.{key} }}}}")
                    html.Div("{{ cardiac_notes }}", classes="text-caption")
            with layout.content, html.Div(style="height: calc(100vh - 64px); display: flex;"):
                self.layouts.initialize_layout_grid(layout)


def serve(workspace: Workspace, host: str = "127.0.0.1", port: int = 0, threads: int | None = None,
          open_browser: bool = False) -> None:
    """Build the app and serve it until interrupted (port 0: a free one, printed by trame)."""
    app = LightSegWebApp(workspace, threads=threads)
    app.server.start(host=host, port=port, open_browser=open_browser, show_connection_info=True)
