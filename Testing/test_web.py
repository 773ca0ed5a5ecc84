"""The web app (``lightseg web``) in a real browser: Debian's Chromium, headless, driven by Playwright (no browser
download), against the server started as a user starts it. The page is checked as a user sees it: the legend, the
quality line, the segment colour in the slice view where the reference label is, the downloads against the CLI's
own output, a damaged upload's one line, and Cancel.

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


def test_the_page_answers_while_a_job_runs_and_cancel_leaves_the_scene_as_it_was(page, tmp_path):
    again = tmp_path / "ct_again.nii.gz"
    shutil.copy(CT, again)
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
