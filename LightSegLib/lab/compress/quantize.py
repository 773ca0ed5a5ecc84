"""Post-training static int8 quantization of an exported ONNX model (ONNX Runtime, QDQ, per-channel weights).

Calibration reads real training volumes of an MSD-layout dataset and feeds the net the exact arrays the
inference engine would (``LightSegLib.preprocess``: orientation, per-volume normalisation, in-plane grid,
2.5D context), so activation ranges are those the deployed model meets. Slices are taken evenly through each
volume (apex to base in cardiac stacks), a few per volume over many volumes, for diversity.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import LightSegError


def preprocessed_slices(image_path, prep: dict, slices: int) -> np.ndarray:
    """``slices`` evenly spaced slices of one volume as the engine feeds them: (n, C, h, w) float32."""
    import SimpleITK as sitk

    from ...preprocess import Preprocessing

    image = sitk.ReadImage(str(image_path))
    if image.GetDimension() == 4:  # cine: first frame
        size = list(image.GetSize())
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
    prepared = Preprocessing.from_prep(prep).prepare(image)
    picks = np.unique(np.linspace(0, prepared.depth - 1, num=min(slices, prepared.depth)).round().astype(int))
    return np.concatenate([prepared.batch(int(z), int(z) + 1) for z in picks], axis=0)


def calibration_images(dataset_dir, split: str = "training", max_volumes: int = 20) -> list[str]:
    from ..data.msd import read_split

    entries = read_split(dataset_dir, split)
    if not entries:
        raise LightSegError(f"split {split!r} of {dataset_dir} is empty")
    step = max(1, len(entries) // max_volumes)
    return [e["image"] for e in entries[::step][:max_volumes]]


class SliceReader:
    """onnxruntime CalibrationDataReader: one preprocessed volume's slices per batch (lazy: one volume in memory)."""

    def __init__(self, input_name: str, images: list[str], prep: dict, slices_per_volume: int = 4):
        self.input_name = input_name
        self.images = list(images)
        self.prep = prep
        self.slices = int(slices_per_volume)
        self._i = 0

    def get_next(self):
        if self._i >= len(self.images):
            return None
        x = preprocessed_slices(self.images[self._i], self.prep, self.slices)
        self._i += 1
        return {self.input_name: x}

    def rewind(self):
        self._i = 0


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(SliceReader, CalibrationDataReader):
        pass

    return Reader


def quantize_model(model_path, out_path, prep: dict, dataset_dir, *, split: str = "training",
                   max_volumes: int = 20, slices_per_volume: int = 4, method: str = "minmax",
                   per_channel: bool = True, log=print) -> Path:
    """Write a static QDQ int8 model (uint8 activations, int8 per-channel weights) calibrated on real slices."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model_path, out_path = Path(model_path), Path(out_path)
    if not model_path.is_file():
        raise LightSegError(f"model file not found: {model_path}")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise LightSegError(f"unknown calibration method {method!r} ({', '.join(methods)})")
    images = calibration_images(dataset_dir, split, max_volumes)
    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    source = model_path
    tmp = out_path.with_name(out_path.name + ".pre.onnx")
    try:
        # Shape inference + graph clean-up first, as ONNX Runtime recommends for static quantization.
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(model_path), str(tmp), skip_symbolic_shape=True)
        source = tmp
    except Exception as err:  # pre-processing is an optimisation; quantization works without it
        log(f"(quantization pre-processing skipped: {str(err).splitlines()[0][:120]})")
    reader = _reader_class()(input_name, images, prep, slices_per_volume)
    log(f"calibrating on {len(images)} volumes x {slices_per_volume} slices ({method})")
    try:
        quantize_static(str(source), str(out_path), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        calibrate_method=methods[method])
    finally:
        if tmp.exists():
            tmp.unlink()
    ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])  # must load
    return out_path


def agreement(fp32_path, int8_path, x: np.ndarray, threads: int = 1) -> dict:
    """Argmax agreement (fraction of pixels) and largest logit difference between fp32 and int8 on ``x``."""
    import onnxruntime as ort

    def run(path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    a, b = run(fp32_path), run(int8_path)
    return {"argmax_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(a - b).max()), "pixels": int(a.shape[0] * a.shape[2] * a.shape[3])}
