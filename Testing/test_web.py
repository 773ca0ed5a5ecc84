"""The web app (``lightseg web``) in a real browser: Debian's Chromium, headless, driven by Playwright (no browser
download), against the server started as a user starts it. The page is checked as a user sees it: the legend, the
quality line, the segment colour in the slice view where the reference label is, the downloads against the CLI's
own output, a damaged upload's one line, Cancel, and a segment refined with clicks and undone.

Set LIGHTSEG_WEB_SCREENSHOTS=docs/img to refresh the documentation's screenshots from this run.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO

pytest.importorskip("trame_slicer", reason="needs the web extra (pip install -e '.[web]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the web extra)")
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("needs Debian's chromium (`make env` installs it)", allow_module_level=True)

from LightSegLib.errors import LightSegError  # noqa: E402
from LightSegLib.model_text import selector_label  # noqa: E402
from LightSegLib.registry import get_model  # noqa: E402
from PIL import Image  # noqa: E402

pytestmark = pytest.mark.slow
SAMPLES = REPO / "Resources" / "Samples"
CT, CT_REFERENCE, LIVER_IN_REFERENCE = SAMPLES / "totalseg_example_ct_sm.nii.gz", SAMPLES / "totalseg_example_seg_sm.nii.gz", 5
ED, ES = SAMPLES / "acdc_patient002_ED.nii.gz", SAMPLES / "acdc_patient002_ES.nii.gz"
TIMINGS: dict = {}


def lightseg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "LightSegLib.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("LIGHTSEG_WEB_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The server as ``lightseg web`` starts it (127.0.0.1, a free port), and one Chromium page on it."""
    work = tmp_path_factory.mktemp("web")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "LightSegLib.cli", "web", "--port", str(port), "--threads", "2",
                               "--work", str(work / "files"), "--max-upload-mb", "50"],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "DISPLAY": ""})
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
            deadline = time.time() + 60
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except sync_api.Error:
                    if time.time() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.3)
            page.wait_for_selector("#segment", timeout=60_000)
            yield page
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        print("web timings:", json.dumps(TIMINGS))


def open_file(page, path: Path) -> None:
    page.set_input_files("#upload", str(path))
    page.wait_for_function(f"document.querySelector('#status').innerText.includes('Opened {path.name}')",
                           timeout=30_000)


def choose_model(page, model_id: str) -> None:
    page.locator("#model").click(force=True)
    page.get_by_role("option").filter(has_text=selector_label(get_model(model_id))).first.click()
    page.wait_for_function(f"document.querySelector('#model').value.startsWith({json.dumps(get_model(model_id).title)})")


def axial(page) -> np.ndarray:
    """The axial slice view as the page shows it (the large view of the layout), RGB."""
    png = page.locator("img.image-display-area").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)


def tint_towards(pixels: np.ndarray, color) -> float:
    """How far the mean colour of these pixels leans towards ``color`` away from grey (0 for a grey CT pixel)."""
    mean = pixels.reshape(-1, 3).mean(0)
    color = np.asarray(color, float)
    return float(np.dot(mean - mean.mean(), (color - color.mean()) / np.linalg.norm(color - color.mean())))


def centre(image: np.ndarray, half: int = 3) -> np.ndarray:
    h, w, _ = image.shape
    return image[h // 2 - half:h // 2 + half + 1, w // 2 - half:w // 2 + half + 1]


def shown_point(page) -> tuple[str, list[float]]:
    text = page.inner_text("#shown-at")
    name, r, a, s = re.match(r"(.+) centred at R (\S+), A (\S+), S (\S+) mm", text).groups()
    return name, [float(r), float(a), float(s)]


def reference_value_at(reference: Path, ras: list[float]) -> int:
    image = sitk.ReadImage(str(reference))
    index = image.TransformPhysicalPointToIndex([-ras[0], -ras[1], ras[2]])  # RAS -> LPS
    return int(sitk.GetArrayViewFromImage(image)[index[2], index[1], index[0]])


def segment_and_wait_until_shown(page, color, timeout_s: float = 60) -> float:
    """Click Segment; seconds until the legend is there and the slice view's centre shows the segment's colour."""
    clicked = time.perf_counter()
    page.click("#segment")
    page.wait_for_selector("#legend .legend-row", timeout=timeout_s * 1000)
    while True:
        if tint_towards(centre(axial(page)), color) > 15:
            return time.perf_counter() - clicked
        assert time.perf_counter() - clicked < timeout_s, "the segment's colour never reached the slice view"
        time.sleep(0.05)


def download(page, button: str, target: Path) -> Path:
    with page.expect_download() as got:
        page.click(button)
    got.value.save_as(target)
    return target


def assert_same_labels(downloaded: Path, cli_output: Path) -> None:
    ours, theirs = sitk.ReadImage(str(downloaded)), sitk.ReadImage(str(cli_output))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)), downloaded.name
    assert np.allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-4)
    assert np.allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-3)
    assert np.allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-5)


def test_ct_liver_shown_where_the_reference_has_it_and_downloads_equal_the_cli(page, shots, tmp_path):
    open_file(page, CT)
    choose_model(page, "liver-ct")
    before = axial(page)
    assert abs(tint_towards(centre(before, 40), [221, 130, 101])) < 5, "the CT alone is grey"
    liver = get_model("liver-ct").labels[0]["color"]
    TIMINGS["ct_click_to_liver_s"] = segment_and_wait_until_shown(page, liver)

    assert page.inner_text("#legend .legend-name") == "liver"
    assert re.fullmatch(r"\d+\.\d mL", page.inner_text("#legend .legend-ml"))
    assert page.inner_text("#quality") == "Quality: ok"
    name, ras = shown_point(page)
    assert name == "liver" and reference_value_at(CT_REFERENCE, ras) == LIVER_IN_REFERENCE, ras
    page.wait_for_timeout(1500)  # the liver's surface in the 3D view, for the picture
    page.screenshot(path=str(shots / "web_ct_liver.png"))

    cli = lightseg("segment", "--model", "liver-ct", "--threads", "2", CT, tmp_path / "cli.nii.gz")
    assert cli.returncode == 0, cli.stderr
    assert_same_labels(download(page, "#download-nii", tmp_path / "web.nii.gz"), tmp_path / "cli.nii.gz")
    assert_same_labels(download(page, "#download-seg", tmp_path / "web.seg.nrrd"), tmp_path / "cli.nii.gz")


def test_a_damaged_upload_shows_the_cli_line(page, shots, tmp_path):
    damaged = tmp_path / "damaged_ct.nii.gz"
    damaged.write_bytes(CT.read_bytes()[:20_000])
    cli = lightseg("segment", "--model", "liver-ct", damaged.name, "out.nii.gz", cwd=tmp_path)
    assert cli.returncode == 2
    page.set_input_files("#upload", str(damaged))
    page.wait_for_selector("#error", timeout=30_000)
    assert page.inner_text("#error") == cli.stderr.strip().removeprefix("lightseg: error: ")
    page.screenshot(path=str(shots / "web_damaged_upload.png"))


def finer_slices(source: Path, target: Path, z_mm: float) -> Path:
    """The CT resampled to thinner slices (same extent): a job several times longer than the bundled CT's."""
    image = sitk.ReadImage(str(source))
    size = [*image.GetSize()[:2], round(image.GetSize()[2] * image.GetSpacing()[2] / z_mm)]
    spacing = [*image.GetSpacing()[:2], z_mm]
    sitk.WriteImage(sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                                  image.GetDirection(), -1024.0, image.GetPixelID()), str(target))
    return target


def test_the_page_answers_while_a_job_runs_and_cancel_leaves_the_scene_as_it_was(page, tmp_path):
    """On a CT of 0.25 mm slices, so the job still runs when Cancel is pressed (on the bundled CT's 3 mm slices it
    could end between the check and the press)."""
    again = finer_slices(CT, tmp_path / "ct_again.nii.gz", 0.25)
    open_file(page, again)
    choose_model(page, "liver-ct")
    page.wait_for_timeout(500)
    before = axial(page)
    page.click("#segment")
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('Running the network')",
                           timeout=30_000)
    thumb = page.locator(".slice-slider .v-slider-thumb").first  # the axial view's slice slider
    thumb.focus()
    pressed = time.perf_counter()
    page.keyboard.press("PageUp")
    while np.abs(axial(page) - before).mean() < 1:
        assert time.perf_counter() - pressed < 10, "the slice view did not move while the job ran"
    TIMINGS["slice_step_during_job_s"] = time.perf_counter() - pressed
    page.keyboard.press("PageDown")
    assert page.is_enabled("#cancel"), "the job ended before Cancel could be tried"
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('Cancelled')", timeout=30_000)
    assert not page.is_visible("#result")
    page.wait_for_timeout(1000)
    assert np.abs(axial(page) - before).mean() < 1, "the slice view changed after Cancel"


def test_cardiac_pair_segments_and_gives_the_function_table(page, shots, tmp_path):
    colours = {label["name"]: label["color"] for label in get_model("cardiac-acdc").labels}
    for sample in (ED, ES):
        open_file(page, sample)
        choose_model(page, "cardiac-acdc")
        before = axial(page)
        assert abs(tint_towards(centre(before, 20), colours["right ventricle"])) < 5
        page.click("#segment")
        page.wait_for_function("document.querySelector('#status').innerText.startsWith('Done')", timeout=60_000)
        assert [e.inner_text() for e in page.locator("#legend .legend-name").all()] == [
            "right ventricle", "myocardium", "left ventricle"]
        assert page.inner_text("#quality").startswith(("Quality: ok", "Low confidence: check carefully"))
        name, ras = shown_point(page)
        deadline = time.time() + 20
        while tint_towards(centre(axial(page)), colours[name]) <= 15:
            assert time.time() < deadline, f"{name}'s colour never reached the slice view"
        reference = SAMPLES / sample.name.replace(".nii.gz", "_label.nii.gz")
        value = {label["name"]: label["value"] for label in get_model("cardiac-acdc").labels}[name]
        assert reference_value_at(reference, ras) == value, (name, ras)
        phase = sample.name.split("_")[-1].split(".")[0]
        cli = lightseg("segment", "--model", "cardiac-acdc", "--threads", "2", sample, tmp_path / f"cli_{phase}.nii.gz")
        assert cli.returncode == 0, cli.stderr
        assert_same_labels(download(page, "#download-nii", tmp_path / f"web_{phase}.nii.gz"),
                           tmp_path / f"cli_{phase}.nii.gz")

    page.click("#cardiac-compute")
    page.wait_for_selector("#cardiac-table", timeout=30_000)
    rows = {r.locator("td").first.inner_text(): r.locator("td").nth(1).inner_text()
            for r in page.locator("#cardiac-table tbody tr").all()}
    cli = lightseg("cardiac-function", "--json", "--ed", tmp_path / "cli_ED.nii.gz", "--es", tmp_path / "cli_ES.nii.gz")
    assert cli.returncode == 0, cli.stderr
    assert float(rows["Ejection fraction"]) == pytest.approx(json.loads(cli.stdout)["lv_ef_percent"], abs=0.05)
    page.screenshot(path=str(shots / "web_cardiac.png"))


def test_a_chest_xray_gets_the_cli_label_and_its_activation_map(page, tmp_path):
    from conftest import shared

    xray = sorted(shared("chest_xray/train/PNEUMONIA").glob("*.jpeg"))[0]
    open_file(page, xray)
    choose_model(page, "pneumonia-cxr")
    before = axial(page)
    page.click("#segment")
    page.wait_for_selector("#classification", timeout=60_000)
    cli = lightseg("classify", "--model", "pneumonia-cxr", "--json", xray)
    assert cli.returncode == 0, cli.stderr
    answer = json.loads(cli.stdout)[0]
    assert page.inner_text("#classification").startswith(
        f"{answer['label']}: probability of the positive class {answer['probability']:.3f}")
    deadline = time.time() + 20
    while np.abs(axial(page) - before).mean() < 5:  # the activation map laid over the radiograph
        assert time.time() < deadline, "the activation map never reached the slice view"


def click_count(page) -> tuple[int, str]:
    """The refined segment's voxel count as the server read it from the segmentation node, and the whole line."""
    text = page.inner_text("#click-status")
    return int(re.search(r": (\d+) voxels", text).group(1)), text


def after(page, action, before: str, timeout_s: float = 30) -> tuple[int, str]:
    """Do ``action``; the click line once the server has answered it (it always changes the line)."""
    action()
    page.wait_for_function(f"document.querySelector('#click-status').innerText != {json.dumps(before)}",
                           timeout=timeout_s * 1000)
    return click_count(page)


TINT_AT = """([x, y, color]) => {
    const img = document.querySelector('img.image-display-area');
    if (!img || !img.complete || !img.naturalWidth) return false;
    const canvas = document.createElement('canvas');
    canvas.width = 5; canvas.height = 5;
    const k = img.naturalWidth / img.clientWidth;
    canvas.getContext('2d').drawImage(img, x * k - 2, y * k - 2, 5, 5, 0, 0, 5, 5);
    const px = canvas.getContext('2d').getImageData(0, 0, 5, 5).data;
    const mean = [0, 1, 2].map(c => px.filter((_, i) => i % 4 === c).reduce((a, b) => a + b, 0) / 25);
    const m = (mean[0] + mean[1] + mean[2]) / 3, cm = (color[0] + color[1] + color[2]) / 3;
    const dir = color.map(c => c - cm), norm = Math.hypot(...dir);
    return mean.reduce((a, v, i) => a + (v - m) * dir[i] / norm, 0) > 15;
}"""


def wait_for_tint(page, x: int, y: int, color, timeout_s: float = 10) -> None:
    """Until the frame the page shows has the colour at (x, y) of the axial view (checked at every animation frame,
    in the page: a screenshot per check would take longer than what is measured)."""
    page.wait_for_function(TINT_AT, arg=[x, y, list(color)], polling="raf", timeout=timeout_s * 1000)


def seconds_to_new_frame(page, action) -> float:
    """Seconds from ``action`` to the next frame of the axial view in the page (the same stack's own latency, beside
    which a click's is read)."""
    shown = page.evaluate("document.querySelector('img.image-display-area').src")
    started = time.perf_counter()
    action()
    page.wait_for_function("src => document.querySelector('img.image-display-area').src != src", arg=shown,
                           polling="raf", timeout=10_000)
    return round(time.perf_counter() - started, 3)


def shift_click(page, x: float, y: float) -> None:
    page.keyboard.down("Shift")
    page.mouse.click(x, y)
    page.keyboard.up("Shift")


def clicked_ras(text: str) -> list[float]:
    return [float(v) for v in re.search(r"at R (\S+), A (\S+), S (\S+) mm", text).groups()]


def outside_point(image: np.ndarray, color) -> tuple[int, int]:
    """An untinted body pixel (soft tissue grey) of the view, far from the segment's colour, nearest the centre."""
    from scipy import ndimage

    tinted = np.array([[tint_towards(px, color) > 15 for px in row] for row in image[::4, ::4]])
    far = ndimage.distance_transform_edt(~tinted) * 4 > 40
    grey = image[::4, ::4]
    body = (grey.mean(-1) > 90) & (grey.mean(-1) < 200) & (np.ptp(grey, -1) < 4)
    ys, xs = np.nonzero(far & body)
    assert ys.size, "no body pixel away from the segment in the view"
    h, w = tinted.shape
    nearest = int(np.argmin((ys - h / 2) ** 2 + (xs - w / 2) ** 2))
    return int(ys[nearest] * 4), int(xs[nearest] * 4)


def test_clicks_refine_the_liver_and_undo_restores_it(page, shots, tmp_path):
    """Refine with clicks on the bundled CT: a Shift-click inside the liver removes, a click outside it adds, where
    the reference says those points are; each click reaches the slice view; Undo gives back the CLI's exact labels."""
    try:
        get_model("click-refine")
    except LightSegError:
        pytest.skip("no click model is registered (click-refine): the registry has none to refine with")
    ct = tmp_path / "ct_clicks.nii.gz"
    shutil.copy(CT, ct)
    open_file(page, ct)
    choose_model(page, "liver-ct")
    liver = get_model("liver-ct").labels[0]["color"]
    segment_and_wait_until_shown(page, liver)
    _, centred_at = shown_point(page)
    page.click("#click-mode")
    page.wait_for_function("document.querySelector('#click-status')?.innerText.includes('voxels')",
                           timeout=30_000)
    original, line = click_count(page)
    view = page.locator("img.image-display-area").first
    box = view.bounding_box()

    removed, line = after(page, lambda: shift_click(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2),
                          line)
    assert line.split(". ", 1)[1].startswith("Removed") and removed < original
    ras = clicked_ras(line)
    assert reference_value_at(CT_REFERENCE, ras) == LIVER_IN_REFERENCE, ras
    assert np.linalg.norm(np.subtract(ras, centred_at)) < 4.5, (ras, centred_at)  # the view's centre, within a voxel
    restored, line = after(page, lambda: page.click("#click-undo"), line)
    assert restored == original
    _, line = after(page, lambda: page.click("#click-remove"), line)  # the toggle instead of the modifier:
    again, line = after(page, lambda: page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2),
                        line)
    assert line.split(". ", 1)[1].startswith("Removed") and again == removed  # the same click, the same answer
    restored, line = after(page, lambda: page.click("#click-undo"), line)
    assert restored == original
    _, line = after(page, lambda: page.click("#click-add"), line)

    y, x = outside_point(axial(page), liver)
    clicked = time.perf_counter()
    added, line = after(page, lambda: page.mouse.click(box["x"] + x, box["y"] + y), line)
    assert line.split(". ", 1)[1].startswith("Added") and added > original
    assert reference_value_at(CT_REFERENCE, clicked_ras(line)) != LIVER_IN_REFERENCE
    wait_for_tint(page, x, y, liver)
    TIMINGS["click_to_screen_s"] = round(time.perf_counter() - clicked, 3)
    TIMINGS["click_server_s"] = float(re.search(r"in (\S+) s", line).group(1))
    page.screenshot(path=str(shots / "web_clicks.png"))

    restored, line = after(page, lambda: page.click("#click-undo"), line)
    assert restored == original
    unchanged, line = after(page, lambda: page.click("#click-undo"), line)
    assert line.endswith("Nothing to undo.") and unchanged == original
    grown, line = after(page, lambda: page.click("#propagate-up"), line)
    assert grown >= original and "Propagated up" in line and "added; it stopped " in line, line  # it only adds
    TIMINGS["propagate_server_s"] = float(re.search(r"in (\S+) s", line).group(1))
    restored, line = after(page, lambda: page.click("#click-undo"), line)
    assert restored == original

    cli = lightseg("segment", "--model", "liver-ct", "--threads", "2", CT, tmp_path / "cli.nii.gz")
    assert cli.returncode == 0, cli.stderr
    assert_same_labels(download(page, "#download-nii", tmp_path / "web.nii.gz"), tmp_path / "cli.nii.gz")
    page.locator(".slice-slider .v-slider-thumb").first.focus()
    TIMINGS["slice_step_idle_s"] = seconds_to_new_frame(page, lambda: page.keyboard.press("PageUp"))
    page.click("#click-mode")
