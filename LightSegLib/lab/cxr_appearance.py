"""The classifier's appearance model: does an input look like the paediatric AP chest X-rays it was trained on?

Why a model of the image and not of the network's confidence: the classifier gave a CT slice PNEUMONIA with
p = 0.89, so its probability says nothing about whether the question makes sense. Chest AP radiographs are
framed alike (lungs left and right of the spine, the diaphragm below them, air around), so a principal-component
model of the network's own input, pooled to 32 x 32, holds them closely: an image is far from them either inside
the model's subspace (an unusual mix of the usual patterns: ``inside``, a Mahalanobis distance per component) or
off it (patterns no chest X-ray has: ``outside``, the residual energy against the training images' mean). Both
are 1.0 on average over the training images; each has a limit, and ``distance`` = the larger of the two ratios to
its limit, so distance > 1 flags the image.

Data, each part with one use:
- fitted on the training part of the old subset (1,607 images, what the classifier saw);
- limits chosen on the validation part (393 images): the 99.5th percentile of each score;
- checked on what chose nothing: the new-patient images as read and shifted (``cxr_protocol.SHIFTS``), and
  negatives (``negatives``): CT slices rendered as 8-bit images (LiTS, NIH pancreas, coronal and axial reformats
  of IRCADb and TotalSegmentator volumes in lung and soft-tissue windows), ACDC cine MR slices, the repository's
  screenshots and plots, X-rays inverted, rotated and cropped to a corner, and noise.

The model ships as ONNX (``Resources/Models/<id>.appearance.onnx``): input the classifier's preprocessed image,
outputs ``inside`` and ``outside``; its limits and their calibration are in the file's metadata, so the runtime
(``LightSegLib.classify``) needs nothing but ONNX Runtime.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..classify import read_radiograph
from ..cxr_prep import prepare
from ..errors import LightSegError
from .data import cxr as radiographs

GRID = 32
COMPONENTS = 20
PERCENTILE = 99.5


def thumbnail(array: np.ndarray, size: int) -> np.ndarray:
    """The classifier's input (``prepare``) pooled to GRID x GRID, as the ONNX graph pools it."""
    x = prepare(array, size)[0, 0]
    f = size // GRID
    return x.reshape(GRID, f, GRID, f).mean(axis=(1, 3)).ravel()


def fit(thumbs: np.ndarray, k: int = COMPONENTS) -> dict:
    mean = thumbs.mean(axis=0)
    centred = thumbs - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    u = vt[:k].T                                     # (GRID^2, k), orthonormal columns
    sd = s[:k] / np.sqrt(len(thumbs) - 1)            # each component's standard deviation
    residual = centred - centred @ u @ u.T
    return {"mean": mean, "u": u, "sd": sd, "residual": float(np.mean(residual ** 2)),
            "explained": float((s[:k] ** 2).sum() / (s ** 2).sum())}


def scores(model: dict, thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside) in numpy: what the ONNX graph computes."""
    centred = np.atleast_2d(thumbs) - model["mean"]
    z = centred @ model["u"] / model["sd"]
    residual = centred - centred @ model["u"] @ model["u"].T
    return np.mean(z ** 2, axis=1), np.mean(residual ** 2, axis=1) / model["residual"]


def to_onnx(model: dict, size: int, limits: dict, calibration: str) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = size // GRID
    const = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[f, f], strides=[f, f]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Sub", ["flat", "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "whiten"], ["z"]),
        helper.make_node("Mul", ["z", "z"], ["z2"]),
        helper.make_node("ReduceMean", ["z2"], ["inside"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["centred", "u"], ["coef"]),
        helper.make_node("MatMul", ["coef", "ut"], ["recon"]),
        helper.make_node("Sub", ["centred", "recon"], ["r"]),
        helper.make_node("Mul", ["r", "r"], ["r2"]),
        helper.make_node("ReduceMean", ["r2"], ["r2mean"], axes=[1], keepdims=0),
        helper.make_node("Div", ["r2mean", "r0"], ["outside"]),
    ]
    graph = helper.make_graph(
        nodes, "cxr_appearance",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("inside", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("outside", TensorProto.FLOAT, ["batch"])],
        [const("mean", model["mean"][None]), const("whiten", model["u"] / model["sd"]), const("u", model["u"]),
         const("ut", model["u"].T), const("r0", [model["residual"]])])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="LightSegLib")
    onnx_model.ir_version = 8
    helper.set_model_props(onnx_model, {"limits": json.dumps(limits), "calibration": calibration})
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


# ---------------------------------------------------------------- what is not a paediatric AP chest X-ray
def _eight_bit(a: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.round(255.0 * np.clip((a - (centre - width / 2)) / width, 0.0, 1.0)).astype(np.float32)


def _volume_views(path: Path, every: int) -> list[tuple[str, np.ndarray]]:
    """Axial and coronal slices of a CT in a lung and a soft-tissue window, 8-bit as a screenshot would be;
    the coronal ones stretched to the patient's proportions by the voxel size (the nearest a CT gets to a film)."""
    image = sitk.ReadImage(str(path)) if path.is_file() else _dicom(path)
    image = sitk.DICOMOrient(image, "LPS")
    a = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    sx, sy, sz = image.GetSpacing()
    out = []
    for window, (c, w) in {"lung": (-600, 1500), "soft": (40, 400)}.items():
        for i in range(a.shape[0] // (2 * every), a.shape[0], every):
            out.append((f"{path.name} axial {i} {window}", _eight_bit(a[i], c, w)))
        for j in np.linspace(0.3, 0.7, 3):
            cor = a[::-1, int(j * a.shape[1]), :]  # head up
            h = max(8, round(cor.shape[0] * sz / sx))
            cor = sitk.GetArrayFromImage(sitk.Resample(
                sitk.GetImageFromArray(cor), (cor.shape[1], h), sitk.Transform(), sitk.sitkLinear, (0.0, 0.0),
                (1.0, cor.shape[0] / h), (1.0, 0.0, 0.0, 1.0), -1024.0, sitk.sitkFloat32))
            out.append((f"{path.name} coronal {j:.1f} {window}", _eight_bit(cor, c, w)))
    return out


def _dicom(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _xray_variants(paths) -> dict[str, list[tuple[str, np.ndarray]]]:
    out = {"X-ray inverted": [], "X-ray rotated 90": [], "X-ray upside down": [], "X-ray corner (top-left quarter)": [],
           "X-ray corner (bottom-right quarter)": []}
    for p in paths:
        a = read_radiograph(p)
        h, w = a.shape
        out["X-ray inverted"].append((p.name, 255.0 - a))
        out["X-ray rotated 90"].append((p.name, np.rot90(a).copy()))
        out["X-ray upside down"].append((p.name, a[::-1].copy()))
        out["X-ray corner (top-left quarter)"].append((p.name, a[: h // 2, : w // 2].copy()))
        out["X-ray corner (bottom-right quarter)"].append((p.name, a[h // 2:, w // 2:].copy()))
    return out


def _noise(n: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        sigma = (0.0, 2.0, 8.0)[i % 3]
        a = rng.random((224, 224)).astype(np.float32)
        if sigma:
            a = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(a), sigma))
        out.append((f"noise {i} sigma {sigma}", a))
    return out


def negatives(shared: Path, repo: Path, xrays) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Named groups of images that are not paediatric AP chest X-rays, built from what is here."""
    groups: dict[str, list] = {"CT 8-bit slices (LiTS)": [], "CT 8-bit slices (NIH pancreas)": [],
                               "CT reformats (IRCADb, TotalSegmentator)": [], "MR cine slices (ACDC)": [],
                               "screenshots and plots": [], "noise": _noise(30)}
    for f in sorted((shared / "lits_liver_2d").glob("*.npz"))[:60]:
        groups["CT 8-bit slices (LiTS)"].append((f.name, np.load(f)["image"][0].astype(np.float32)))
    for f in sorted((shared / "nih_pancreas_2d").glob("*.npz"))[:40]:
        image = np.load(f)["image"]
        groups["CT 8-bit slices (NIH pancreas)"].append((f.name, image[len(image) // 2].astype(np.float32)))
    for source in (shared / "ircadb" / "imagesTr" / "ircadb1_17.nii.gz", shared / "totalseg_s0009" / "ct.nii.gz",
                   shared / "totalseg_example" / "example_ct_dicom"):
        if source.exists():
            groups["CT reformats (IRCADb, TotalSegmentator)"] += _volume_views(source, every=40)
    for f in sorted((shared / "acdc" / "imagesTr").glob("*.nii.gz"))[:40]:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.float32)
        groups["MR cine slices (ACDC)"].append((f.name, a[len(a) // 2]))
    for f in sorted(f for folder in ("docs", "Resources", "LightSeg") for f in (repo / folder).rglob("*.png")):
        try:
            groups["screenshots and plots"].append((f.name, read_radiograph(f)))
        except LightSegError:  # an icon under 128 px: refused before any quality estimate
            continue
    return groups | _xray_variants(xrays)


# ---------------------------------------------------------------- build and check
def build(root, shared: Path, repo: Path, size: int, out_onnx: Path, out_json: Path, log=print) -> dict:
    from .cxr_protocol import SHIFTS

    items = radiographs.list_images(root)
    old = radiographs.old_subset(items)
    parts = radiographs.split(old, 0.2, 0)
    new = radiographs.unseen_patients(items, old)
    thumbs = lambda arrays: np.stack([thumbnail(a, size) for a in arrays])  # noqa: E731
    train = thumbs(read_radiograph(p) for p, _ in parts["train"])
    model = fit(train)
    log(f"fitted on {len(train)} training images; {COMPONENTS} components explain {model['explained']:.3f}")
    val_in, val_out = scores(model, thumbs(read_radiograph(p) for p, _ in parts["val"]))
    limits = {"inside": float(np.percentile(val_in, PERCENTILE)), "outside": float(np.percentile(val_out, PERCENTILE))}

    def distance(arrays) -> np.ndarray:
        i, o = scores(model, thumbs(arrays))
        return np.maximum(i / limits["inside"], o / limits["outside"])

    def rate(d) -> dict:
        return {"images": int(len(d)), "flagged": int((d > 1).sum()), "flagged_fraction": float((d > 1).mean()),
                "distance_p5_p50_p95": [float(v) for v in np.percentile(d, [5, 50, 95])]}

    check = {"training part (fitted on)": rate(distance(read_radiograph(p) for p, _ in parts["train"])),
             "validation part (limits chosen on)": rate(np.maximum(val_in / limits["inside"],
                                                                   val_out / limits["outside"])),
             "new patients (check)": rate(distance(read_radiograph(p) for p, _ in new))}
    sample = new[::9]  # every 9th new-patient image (191) under each shift
    for name, shift in SHIFTS.items():
        check[f"new patients, {name} (check)"] = rate(distance(shift(read_radiograph(p), p.name) for p, _ in sample))
    worst = {}
    for group, images in negatives(shared, repo, [p for p, _ in new[::17]]).items():
        d = distance(a for _, a in images)
        check[f"not a chest X-ray: {group}"] = rate(d)
        worst[group] = [(n, float(v)) for n, v in sorted(zip((n for n, _ in images), d), key=lambda t: t[1])[:3]]
        log(f"{group}: {int((d > 1).sum())} of {len(d)} flagged")
    calibration = ("fitted on the old subset's training part (1,607 images); limits = the 99.5th percentile of each "
                   "score on its validation part (393); checked on new patients, shifted new patients and "
                   "negatives (benchmarks/cxr_appearance.py)")
    out_onnx.write_bytes(to_onnx(model, size, limits, calibration))
    record = {"components": COMPONENTS, "explained_variance": model["explained"], "grid": GRID, "size": size,
              "limits": limits, "calibration": calibration, "check": check, "closest_negatives": worst}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(record, indent=1))
    return record
