"""CT training data for the liver and pancreas models: the 8-bit 2D slice sets, organ-free slices from a HU
volume, and MSD volumes with their label values merged.

Every reader returns ``msd.Case`` objects built with ``LightSegLib.preprocess`` (orientation, window, in-plane
geometry), so the issue-3 trainer, its validation and the inference engine all see the same pixels:

- ``lits_npz`` (``lits_liver_2d``): one npz per CT volume, 256x256 uint8 = about clip(HU, 0, 255); split by volume.
- ``nih_npz`` (``nih_pancreas_2d``): one npz per patient, 512x512 uint8; split by patient. Slices with
  ``crop_margin`` 40/80 are zoomed centre crops: kept in training as real scale augmentation, never evaluated
  (their geometry differs from a real slice).
- ``msd`` (``Task03_Liver``, ``Task07_Pancreas``): HU volumes, sliced axially in LPS, labels mapped by
  ``data.label_map`` (liver 1 + tumour 2 -> 1).
- ``data.negatives``: slices of HU CTs (TotalSegmentator's example, s0009) where their map has no organ (and,
  with ``positives``, the organ's slices), converted like the 2D sets (clip [0, 255] HU, scale, LPS radiological
  view, pad to square and resize), so the 2D models learn that most slices of a real volume hold no liver or
  pancreas.

Splits are drawn once from a seeded permutation of the case ids (``data.holdout``) and named ``train``, ``val``
and ``test``; ``force_test`` ids (e.g. the NIH patients whose true-HU slices are used for the HU check) always go
to ``test``. ``fold``/``folds`` rotate the non-test cases for cross-validation.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import preprocess
from ..errors import LightSegError
from .msd import Case

FORMATS = ("msd", "lits_npz", "nih_npz")


# ---------------------------------------------------------------- conversion shared by all readers
def slices_to_case(name: str, image: np.ndarray, label: np.ndarray | None, prep: dict,
                   spacing_yx=(1.0, 1.0)) -> Case:
    """Oriented slices ``[n, h, w]`` (raw intensities) -> a Case on the model grid, as the engine would see them."""
    if image.ndim != 3:
        raise LightSegError(f"{name}: expected [n, h, w] slices, got shape {image.shape}")
    geometry = preprocess.plane_geometry(image.shape[1:], spacing_yx, prep["inplane"])
    stats = preprocess.intensity_stats(image, prep["normalization"])
    x = geometry.to_model(preprocess.normalise(image, prep["normalization"], stats), float(prep.get("pad_value", 0.0)))
    lab = native = None
    if label is not None:
        native = np.ascontiguousarray(label, dtype=np.uint8)
        t, b, l, r = geometry.pad
        padded = np.pad(native, ((0, 0), (t, b), (l, r))) if any(geometry.pad) else native
        lab = np.ascontiguousarray(preprocess.resize_slices(padded, geometry.model_hw, linear=False))
    return Case(name, np.ascontiguousarray(x, dtype=np.float32), lab, geometry, preprocess.IDENTITY, native,
                (1.0, float(spacing_yx[0]), float(spacing_yx[1])))


def apply_label_map(label: np.ndarray, label_map: dict | None) -> np.ndarray:
    """Map label values (``{"1": 1, "2": 1}``); values not listed become 0 (background)."""
    if not label_map:
        return label
    lut = np.zeros(256, np.uint8)
    for src, dst in label_map.items():
        lut[int(src)] = int(dst)
    return lut[np.asarray(label, dtype=np.uint8)]


# ---------------------------------------------------------------- splits
def split_ids(ids: list[str], holdout: dict) -> dict[str, list[str]]:
    """Deterministic ``train``/``val``/``test`` split of case ids (by volume or patient, never by slice)."""
    ids = sorted(ids)
    rng = np.random.default_rng(int(holdout.get("seed", 0)))
    order = [ids[i] for i in rng.permutation(len(ids))]
    forced = [i for i in holdout.get("force_test", []) if i in ids]
    rest = [i for i in order if i not in forced]
    n_test = max(0, int(holdout.get("test", 0)) - len(forced))
    test = forced + rest[:n_test]
    pool = rest[n_test:]
    n_val = int(holdout.get("val", 0))
    folds = int(holdout.get("folds", 0))
    if folds > 1:  # cross-validation: fold k takes its turn as validation
        k = int(holdout.get("fold", 0)) % folds
        chunks = np.array_split(np.arange(len(pool)), folds)
        val = [pool[i] for i in chunks[k]]
    else:
        val = pool[:n_val]
    train = [i for i in pool if i not in val]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test), "all": sorted(ids)}


# ---------------------------------------------------------------- 2D npz sets
def _npz_files(root: Path) -> dict[str, Path]:
    files = {p.stem: p for p in sorted(Path(root).glob("*.npz"))}
    if not files:
        raise LightSegError(f"no .npz files in {root}")
    return files


def load_npz_case(path: Path, prep: dict, evaluation: bool = False) -> Case | None:
    """One volume/patient of ``lits_liver_2d`` or ``nih_pancreas_2d``. ``evaluation``: only real-geometry
    slices (``crop_margin`` 0), so figures are on slices as a scanner makes them."""
    with np.load(path) as f:
        image, label = f["image"], f["label"]
        keep = np.ones(len(image), bool)
        if evaluation and "crop_margin" in f.files:
            keep = f["crop_margin"] == 0
    if not keep.any():
        return None
    return slices_to_case(path.stem, image[keep], (label[keep] > 0).astype(np.uint8), prep)


# ---------------------------------------------------------------- slices of whole HU volumes
def block_slices(depth: int, spec: dict, part: str) -> np.ndarray:
    """File slice indices of ``part`` ("train" or "check") of a volume split along z into alternating blocks of
    ``blocks`` slices (even blocks train, odd blocks check), ``guard`` slices dropped at every block edge so no
    checked slice has a trained neighbour closer than ``guard + 1`` slices. Without ``blocks``, every slice
    trains and none is checked."""
    z = np.arange(depth)
    size = int(spec.get("blocks", 0))
    if not size:
        return z if part == "train" else z[:0]
    guard = int(spec.get("guard", 2))
    inner = (z % size >= guard) & (z % size < size - guard)
    return z[inner & ((z // size) % 2 == (0 if part == "train" else 1))]


def volume_cases(spec: dict, prep: dict, base: Path | None = None) -> list[Case]:
    """Training slices of a HU CT with an organ map, LPS-oriented and converted with the model's preprocessing,
    in ``groups`` cases so the sampler draws them at a controlled rate (a group is picked as often as one
    training volume). Slices without the organ (``organ_values``) are negatives, so the 2D models learn that most
    slices of a real volume hold no liver or pancreas; ``positives`` keeps the organ's slices too, labelled 1.
    ``blocks`` trains on half the volume (``block_slices``) and leaves the rest for checking."""
    import SimpleITK as sitk

    def resolve(p):
        p = Path(p)
        return p if p.is_absolute() or base is None else (base / p)

    image = sitk.ReadImage(str(resolve(spec["image"])))
    seg = sitk.ReadImage(str(resolve(spec["label"])))
    orientation = preprocess.orientation_for(image.GetDirection(), "LPS")
    raw = sitk.GetArrayFromImage(image)
    volume = orientation.apply(raw)
    organ = orientation.apply(np.isin(sitk.GetArrayFromImage(seg), [int(v) for v in spec["organ_values"]]))
    file_z = orientation.apply(np.broadcast_to(np.arange(raw.shape[0])[:, None, None], raw.shape))[:, 0, 0]
    allowed = np.isin(file_z, block_slices(raw.shape[0], spec, "train"))
    present = np.flatnonzero(organ.any(axis=(1, 2)))
    empty = np.flatnonzero(~organ.any(axis=(1, 2)) & allowed)
    # Slices next to the organ's ends are ambiguous for an automatic map: leave a margin.
    margin = int(spec.get("margin_slices", 2))
    if present.size:
        empty = np.array([z for z in empty if min(abs(z - present.min()), abs(z - present.max())) > margin], int)
    empty = empty[::max(1, int(spec.get("every", 1)))]
    keep = np.union1d(empty, present[allowed[present]]) if spec.get("positives") else empty
    if keep.size == 0:
        return []
    spacing = orientation.spacing(image.GetSpacing())
    groups = max(1, min(int(spec.get("groups", 8)), keep.size))
    stem = "_".join((Path(spec["image"]).parent.name, Path(spec["image"]).name.split(".")[0]))
    cases = []
    for g, idx in enumerate(np.array_split(keep, groups)):
        case = slices_to_case(f"{stem}_slices{g}", volume[idx], organ[idx].astype(np.uint8), prep, spacing[1:])
        case.native_label = None  # training only
        cases.append(case)
    return cases


# ---------------------------------------------------------------- MSD volumes with label merging
def msd_entries(root: Path, list_name: str = "training") -> dict[str, dict]:
    from .msd import read_split

    return {Path(e["image"]).name.split(".")[0]: e for e in read_split(root, list_name)}


def load_msd_case(entry: dict, prep: dict, label_map: dict | None, training: bool,
                  negative_every: int = 0) -> Case:
    """An MSD volume through ``msd.load_case`` (LPS, window, in-plane geometry), labels merged. Training
    volumes keep the organ slices and every ``negative_every``-th other slice only (a 2D model needs no
    more, and full 512x512x500 volumes would not fit in memory by the hundred); no native grid copy."""
    from .msd import load_case

    case = load_case(entry, prep)
    case.label = apply_label_map(case.label, label_map)
    if case.native_label is not None:
        case.native_label = None if training else apply_label_map(case.native_label, label_map)
    if training and negative_every and case.label is not None:
        has = case.label.any(axis=(1, 2))
        keep = has | (np.arange(len(has)) % int(negative_every) == 0)
        case.image = np.ascontiguousarray(case.image[keep])
        case.label = np.ascontiguousarray(case.label[keep])
    return case


# ---------------------------------------------------------------- one entry point for the trainer
def dataset_ids(dcfg: dict) -> list[str]:
    fmt = dcfg.get("format", "msd")
    root = Path(dcfg["dataset"])
    if fmt == "msd":
        return sorted(msd_entries(root, dcfg.get("source_list", "training")))
    return sorted(_npz_files(root))


def load_split_cfg(cfg: dict, split: str, prep: dict | None = None) -> list[Case]:
    """Cases of ``split`` (``train``, ``val``, ``test``, ``all`` with ``data.holdout``; else an MSD list name)."""
    from ..train.config import prep_spec

    dcfg = cfg["data"]
    prep = prep or prep_spec(cfg)
    fmt = dcfg.get("format", "msd")
    if fmt not in FORMATS:
        raise LightSegError(f"data.format {fmt!r} unknown (one of {', '.join(FORMATS)})")
    if int(prep.get("context_slices", 0)) and fmt != "msd":
        raise LightSegError("context_slices > 0 needs real neighbouring slices: the 2D sets hold scattered slices")
    root = Path(dcfg["dataset"])
    training = split == dcfg.get("train_split", "train")
    holdout = dcfg.get("holdout")
    if holdout:
        names = split_ids(dataset_ids(dcfg), holdout).get(split)
        if names is None:
            raise LightSegError(f"split {split!r}: with data.holdout use train, val, test or all")
    else:
        names = None
    cases: list[Case] = []
    if fmt == "msd":
        label_map = dcfg.get("label_map")
        if names is None:
            from .msd import read_split

            entries = {Path(e["image"]).name.split(".")[0]: e for e in read_split(root, split)}
            names = sorted(entries)
        else:
            entries = msd_entries(root, dcfg.get("source_list", "training"))
        for n in names:
            cases.append(load_msd_case(entries[n], prep, label_map, training, int(dcfg.get("negative_every", 0))))
    else:
        files = _npz_files(root)
        if names is None:
            raise LightSegError(f"data.format {fmt!r} needs data.holdout (the npz sets have no split lists)")
        for n in names:
            case = load_npz_case(files[n], prep, evaluation=not training)
            if case is not None:
                cases.append(case)
    if training and dcfg.get("negatives"):
        specs = dcfg["negatives"]
        for spec in [specs] if isinstance(specs, dict) else specs:
            cases += volume_cases(spec, prep, base=Path(dcfg.get("negatives_base", ".")))
    return cases


@contextmanager
def trainer_data_hook(cfg: dict):
    """Route the issue-3 trainer's ``msd.load_split`` through ``loader_for(cfg)`` while it runs (it imports the
    function when training starts), until the trainer calls ``loader_for`` itself."""
    from . import msd

    original = msd.load_split
    msd.load_split = loader_for(cfg)
    try:
        yield
    finally:
        msd.load_split = original


def describe_split(cfg: dict) -> dict:
    """The ids in each split (for the model card and the run folder)."""
    dcfg = cfg["data"]
    if not dcfg.get("holdout"):
        return {}
    return split_ids(dataset_ids(dcfg), dcfg["holdout"])


def write_split(cfg: dict, out: Path) -> None:
    split = describe_split(cfg)
    if split:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "split.json").write_text(json.dumps(split, indent=1))


def loader_for(cfg: dict):
    """The ``load_split(root, split, prep)`` the trainer should call for ``cfg``: ``msd.load_split`` for a plain
    MSD config, the CT readers when the config names a format, a holdout, a label map or negatives. The
    one-line hook for the trainer: ``load_split = ct2d.loader_for(cfg)`` in place of importing msd's."""
    from . import msd

    d = cfg["data"]
    if d.get("format", "msd") == "msd" and not any(d.get(k) for k in ("holdout", "label_map", "negatives")):
        return msd.load_split

    def load_split(root, split, prep, limit=None):
        cases = load_split_cfg({**cfg, "data": {**d, "dataset": str(root)}}, split, prep)
        return cases[:limit] if limit else cases

    return load_split
