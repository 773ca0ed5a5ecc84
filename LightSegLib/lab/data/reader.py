"""The one data reader: ``load_split(cfg, split)`` gives the preprocessed cases of a config's split, for
training, fine-tuning, distillation and validation alike.

Every case is an ``msd.Case`` built with ``LightSegLib.preprocess`` (orientation, window, in-plane geometry), so
the trainer, its validation and the inference engine all see the same pixels:

- ``lits_npz`` (``lits_liver_2d``): one npz per CT volume, 256x256 uint8 = about clip(HU, 0, 255); split by volume.
- ``nih_npz`` (``nih_pancreas_2d``): one npz per patient, 512x512 uint8; split by patient. Slices with
  ``crop_margin`` 40/80 are zoomed centre crops: kept in training as real scale augmentation, never evaluated
  (their geometry differs from a real slice).
- ``msd`` (ACDC, ``Task03_Liver``, ``Task07_Pancreas``): volumes of an MSD / nnU-Net folder, its own split lists
  or ``data.holdout``, labels mapped by ``data.label_map`` (liver 1 + tumour 2 -> 1).
- ``npz``: any folder of such slice files; without ``data.holdout``, a seeded 80/20 draw by file.
- ``data.negatives``: slices of HU CTs (TotalSegmentator's example, s0009) where their map has no organ (and,
  with ``positives``, the organ's slices), converted like the 2D sets (clip [0, 255] HU, scale, LPS radiological
  view, pad to square and resize), so the 2D models learn that most slices of a real volume hold no liver or
  pancreas; or (``slices``) a reviewed list of another slice set's slices known to hold no organ, e.g. the
  upper-abdomen LiTS slices above the pancreas, in the 2D sets' own coding.

Splits are drawn once from a seeded permutation of the case ids (``data.holdout``) and named ``train``, ``val``
and ``test``; ``force_test`` ids (e.g. the NIH patients whose true-HU slices are used for the HU check) always go
to ``test``. ``fold``/``folds`` rotate the non-test cases for cross-validation.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ... import preprocess
from ...errors import LightSegError
from .msd import Case, case_from

FORMATS = ("msd", "npz", "lits_npz", "nih_npz")  # the npz names read alike


# ---------------------------------------------------------------- conversion shared by all readers
def slices_to_case(name: str, image: np.ndarray, label: np.ndarray | None, prep: dict,
                   spacing_yx=(1.0, 1.0)) -> Case:
    """Oriented slices ``[n, h, w]`` (raw intensities) -> a Case on the model grid, as the engine would see them."""
    if image.ndim != 3:
        raise LightSegError(f"{name}: expected [n, h, w] slices, got shape {image.shape}")
    prepared = preprocess.Preprocessing.from_prep(prep).prepare_array(image, (1.0, *map(float, spacing_yx)))
    return case_from(name, prepared, label)


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


def load_npz_case(path: Path, prep: dict, label_map: dict | None = None, evaluation: bool = False) -> Case | None:
    """One volume/patient of a slice folder (``image``, ``label`` [N, H, W], e.g. ``lits_liver_2d``,
    ``nih_pancreas_2d``). ``evaluation``: only real-geometry slices (``crop_margin`` 0), so figures are on slices
    as a scanner makes them."""
    with np.load(path) as f:
        image, label = f["image"], f["label"]
        if image.ndim != 3 or image.shape != label.shape:
            raise LightSegError(f"{path}: expected image and label arrays [N, H, W] of one shape")
        keep = np.ones(len(image), bool)
        if evaluation and "crop_margin" in f.files:
            keep = f["crop_margin"] == 0
    if not keep.any():
        return None
    return slices_to_case(path.stem, image[keep], apply_label_map(label[keep].astype(np.uint8), label_map), prep)


# ---------------------------------------------------------------- slices of whole HU volumes
def negative_specs(dcfg: dict) -> list[dict]:
    """``data.negatives`` as a list (one table or several)."""
    specs = dcfg.get("negatives") or []
    return [specs] if isinstance(specs, dict) else list(specs)


def _resolve(path, base: Path | None) -> Path:
    path = Path(path)
    return path if path.is_absolute() or base is None else base / path


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

    image = sitk.ReadImage(str(_resolve(spec["image"], base)))
    seg = sitk.ReadImage(str(_resolve(spec["label"], base)))
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


def listed_slices(spec: dict, part: str = "train", base: Path | None = None) -> dict[str, np.ndarray]:
    """The slices of an npz slice folder (``dataset``) named in a reviewed list (``slices``: a JSON file whose
    ``slices`` maps file stem -> ``slice_index`` values), per file. ``part`` "check": the ``check`` files of a
    seeded draw by volume, never trained on; "train": the others."""
    listed = json.loads(_resolve(spec["slices"], base).read_text())["slices"]
    parts = split_ids(list(listed), {"seed": int(spec.get("seed", 0)), "test": int(spec.get("check", 0))})
    files = _npz_files(_resolve(spec["dataset"], base))
    out = {}
    for n in parts["test" if part == "check" else "train"]:
        with np.load(files[n]) as f:
            out[n] = f["image"][np.isin(f["slice_index"], listed[n])]
    return out


def slice_list_cases(spec: dict, prep: dict, base: Path | None = None) -> list[Case]:
    """The training part of a reviewed organ-free slice list (``listed_slices``), labelled 0, in ``groups``
    cases."""
    images = list(listed_slices(spec, "train", base).values())
    if not images:
        return []
    image = np.concatenate(images)
    groups = max(1, min(int(spec.get("groups", 8)), len(image)))
    stem = Path(spec["slices"]).name.split(".")[0]
    cases = []
    for g, idx in enumerate(np.array_split(np.arange(len(image)), groups)):
        case = slices_to_case(f"{stem}_{g}", image[idx], np.zeros_like(image[idx], np.uint8), prep)
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


# ---------------------------------------------------------------- the one entry point
def data_format(dcfg: dict) -> str:
    """``data.format``, or what the folder holds: ``dataset.json`` (MSD) or ``.npz`` slice files."""
    fmt = dcfg.get("format")
    if fmt is None:
        root = Path(dcfg["dataset"])
        fmt = "npz" if not (root / "dataset.json").is_file() and any(root.glob("*.npz")) else "msd"
    if fmt not in FORMATS:
        raise LightSegError(f"data.format {fmt!r} unknown (one of {', '.join(FORMATS)})")
    return fmt


def dataset_ids(dcfg: dict) -> list[str]:
    if data_format(dcfg) == "msd":
        return sorted(msd_entries(Path(dcfg["dataset"]), dcfg.get("source_list", "training")))
    return sorted(_npz_files(Path(dcfg["dataset"])))


def split_names(dcfg: dict, split: str) -> list[str] | None:
    """Case ids of ``split``: by ``data.holdout`` (train, val, test, all); an npz folder without one is a seeded
    80/20 draw by file (training, validation); an MSD folder without one uses its own lists (None here)."""
    holdout = dcfg.get("holdout")
    if not holdout and data_format(dcfg) != "msd":
        holdout = {"seed": 0, "val": max(1, round(0.2 * len(dataset_ids(dcfg))))}
        split = {"training": "train", "validation": "val"}.get(split, split)
        if split not in ("train", "val"):
            raise LightSegError(f"split {split!r} unknown for a slice folder (use training or validation)")
    if not holdout:
        return None
    names = split_ids(dataset_ids(dcfg), holdout).get(split)
    if names is None:
        raise LightSegError(f"split {split!r}: with data.holdout use train, val, test or all")
    return names


def prep_spec(cfg: dict) -> dict:
    """The preprocessing a config's data section asks for, in the form a checkpoint and a model card keep: the
    engine's contract, so the cases read here are the pixels the model will see."""
    return preprocess.Preprocessing.from_config(cfg).to_prep()


def load_split(cfg: dict, split: str, prep: dict | None = None, limit: int | None = None) -> list[Case]:
    """The cases of ``split`` preprocessed as the engine would (``prep``: the config's unless given): what
    training, fine-tuning and validation all read. The training split also gets ``data.negatives``."""
    dcfg = cfg["data"]
    if not dcfg.get("dataset"):
        raise LightSegError("no dataset: set data.dataset in the config or pass --data")
    prep = prep or prep_spec(cfg)
    fmt = data_format(dcfg)
    if int(prep.get("context_slices", 0)) and fmt != "msd":
        raise LightSegError("context_slices > 0 needs real neighbouring slices: the 2D sets hold scattered slices")
    root = Path(dcfg["dataset"])
    training = split == dcfg.get("train_split", "train")
    names = split_names(dcfg, split)
    cases: list[Case] = []
    if fmt == "msd":
        if names is None:
            from .msd import read_split

            entries = {Path(e["image"]).name.split(".")[0]: e for e in read_split(root, split)}
            names = sorted(entries)
        else:
            entries = msd_entries(root, dcfg.get("source_list", "training"))
        for n in names[:limit or None]:
            cases.append(load_msd_case(entries[n], prep, dcfg.get("label_map"), training,
                                       int(dcfg.get("negative_every", 0))))
    else:
        files = _npz_files(root)
        for n in names[:limit or None]:
            case = load_npz_case(files[n], prep, dcfg.get("label_map"), evaluation=not training)
            if case is not None:
                cases.append(case)
    if training:
        base = Path(dcfg.get("negatives_base", "."))
        for spec in negative_specs(dcfg):
            cases += slice_list_cases(spec, prep, base=base) if "slices" in spec else volume_cases(spec, prep, base)
    return cases


def write_split(cfg: dict, out: Path) -> None:
    """The ids in each split, beside the run (for the model card)."""
    dcfg = cfg["data"]
    if dcfg.get("holdout"):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "split.json").write_text(json.dumps(split_ids(dataset_ids(dcfg), dcfg["holdout"]), indent=1))
