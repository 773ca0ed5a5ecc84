"""``lightseg cardiac-function``: ventricular volumes, ejection fractions and LV mass from ED and ES labels."""
from __future__ import annotations

import json


def register(sub) -> None:
    parser = sub.add_parser("cardiac-function", help="LV/RV volumes, stroke volumes, EF and LV mass from ED/ES labels",
                            description="Labelmaps with 1 right ventricle, 2 myocardium, 3 left ventricle (as written "
                                        "by 'lightseg segment --model cardiac-acdc').")
    parser.add_argument("--ed", required=True, help="end-diastolic labelmap (or .seg.nrrd)")
    parser.add_argument("--es", required=True, help="end-systolic labelmap (or .seg.nrrd)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def read_labels(path):
    from ..io import as_3d_scalar, read_image, suffix_of

    if suffix_of(path) == ".seg.nrrd":
        return read_seg_nrrd_labels(path)
    return as_3d_scalar(read_image(path), path)


def read_seg_nrrd_labels(path):
    """A .seg.nrrd back to a labelmap with the cardiac values, matched by segment name."""
    import numpy as np
    import SimpleITK as sitk
    import slicerio

    from ..cardiac import VALUES_BY_NAME as wanted
    from ..errors import LightSegError

    seg = slicerio.read_segmentation(str(path))
    voxels = seg["voxels"]
    layers = voxels if voxels.ndim == 4 else voxels[None]
    out = np.zeros(layers.shape[1:], np.uint8)
    for segment in seg["segments"]:
        value = wanted.get(segment["name"].lower())
        if value is not None:
            out[layers[segment.get("layer", 0)] == segment["labelValue"]] = value
    if not out.any() and not any(s["name"].lower() in wanted for s in seg["segments"]):
        raise LightSegError(f"{path} has no segments named {', '.join(wanted)}")
    image = sitk.GetImageFromArray(out.transpose(2, 1, 0))
    matrix = np.asarray(seg["ijkToLPS"])
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((matrix[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(matrix[:3, 3].tolist())
    return image


def run(args) -> int:
    from ..cardiac import cardiac_function, format_table
    from ..cli import say

    result = cardiac_function(read_labels(args.ed), read_labels(args.es))
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        print(format_table(result))
        for note in result.notes:
            say("note", note)
    return 0
