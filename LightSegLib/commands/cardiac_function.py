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
    """A .seg.nrrd back to a labelmap with the cardiac values, matched by segment name. SimpleITK reads Slicer's
    layers as the components of a vector image and the segments' names and values as header fields."""
    import itertools

    import numpy as np
    import SimpleITK as sitk

    from ..cardiac import VALUES_BY_NAME as wanted
    from ..errors import LightSegError

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise LightSegError(f"not a readable image: {path}") from None
    if image.GetDimension() != 3:
        raise LightSegError(f"{path} is {image.GetDimension()}D: a 3D segmentation is needed")
    fields = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    voxels = sitk.GetArrayViewFromImage(image)
    layers = voxels[..., None] if image.GetNumberOfComponentsPerPixel() == 1 else voxels
    out = np.zeros(layers.shape[:3], np.uint8)
    named = False
    for i in itertools.takewhile(lambda i: f"Segment{i}_Name" in fields, itertools.count()):
        value = wanted.get(fields[f"Segment{i}_Name"].lower())
        if value is not None:
            named = True
            layer = int(fields.get(f"Segment{i}_Layer", 0))
            out[layers[..., layer] == int(fields[f"Segment{i}_LabelValue"])] = value
    if not named:
        raise LightSegError(f"{path} has no segments named {', '.join(wanted)}")
    labels = sitk.GetImageFromArray(out)
    labels.CopyInformation(image)
    return labels


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
