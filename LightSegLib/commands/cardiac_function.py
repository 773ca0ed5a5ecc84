"""``lightseg cardiac-function``: ventricular volumes, ejection fractions and LV mass from ED and ES labels."""
from __future__ import annotations

import json


def register(sub) -> None:
    parser = sub.add_parser("cardiac-function", help="LV/RV volumes, stroke volumes, EF and LV mass from ED/ES labels",
                            description="Labelmaps with 1 right ventricle, 2 myocardium, 3 left ventricle (as written "
                                        "by 'lightseg segment --model cardiac-acdc').")
    parser.add_argument("--ed", required=True, help="end-diastolic labelmap (or .seg.nrrd, or DICOM SEG .dcm)")
    parser.add_argument("--es", required=True, help="end-systolic labelmap (or .seg.nrrd, or DICOM SEG .dcm)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sr", metavar="OUT.dcm", default=None,
                        help="also write the measurements as a DICOM Structured Report (TID 1500) referencing the "
                             "segments they were measured on: --ed and --es must be DICOM SEGs")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier --sr output")
    parser.set_defaults(func=run)


def read_labels(path):
    from ..io import as_3d_scalar, read_image, suffix_of

    if suffix_of(path) == ".seg.nrrd":
        return read_seg_nrrd_labels(path)
    if suffix_of(path) == ".dcm":
        return read_dicom_seg_labels(path)[0]
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


def read_dicom_seg_labels(path):
    """A DICOM SEG back to a labelmap with the cardiac values, matched by segment name; and the SEG with its
    segment names, for an SR's references."""
    import numpy as np
    import SimpleITK as sitk

    from ..cardiac import VALUES_BY_NAME as wanted
    from ..dicom_seg import read_seg
    from ..errors import LightSegError

    image, names, seg = read_seg(path)
    lookup = np.zeros(max(names) + 1, np.uint8)
    for number, name in names.items():
        lookup[number] = wanted.get(name.lower(), 0)
    if not lookup.any():
        raise LightSegError(f"{path} has no segments named {', '.join(wanted)}")
    labels = sitk.GetImageFromArray(lookup[sitk.GetArrayViewFromImage(image)])
    labels.CopyInformation(image)
    return labels, (seg, names, path)


def sr_inputs(args) -> tuple:
    """For --sr: the ED and ES labelmaps with their SEGs' references, after checking every path first."""
    from ..errors import LightSegError
    from ..io import check_output, suffix_of

    if not all(suffix_of(p) == ".dcm" for p in (args.ed, args.es)):
        raise LightSegError("--sr references the segmentations the measurements come from: give --ed and --es as "
                            "DICOM SEGs (lightseg segment --model cardiac-acdc <DICOM folder> ed.dcm)")
    if suffix_of(args.sr) != ".dcm":
        raise LightSegError(f"--sr writes a DICOM file: name it .dcm, not {args.sr}")
    check_output(args.sr, args.overwrite)
    return read_dicom_seg_labels(args.ed), read_dicom_seg_labels(args.es)


def run(args) -> int:
    from ..cardiac import cardiac_function, format_table
    from ..cli import say

    if args.sr:
        from ..dicom_seg import build_cardiac_sr
        from ..io import write_dicom

        (ed, ed_ref), (es, es_ref) = sr_inputs(args)
        result = cardiac_function(ed, es)
        write_dicom(build_cardiac_sr(result, ed_ref, es_ref), args.sr, overwrite=args.overwrite)
    else:
        result = cardiac_function(read_labels(args.ed), read_labels(args.es))
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        print(format_table(result))
        for note in result.notes:
            say("note", note)
    return 0
