"""Compression toolkit: real channel pruning (Torch-Pruning), CPRUN reconstruction, Ghost conversion,
distillation losses, int8 quantization and the side-by-side benchmark.

Everything here imports torch / Torch-Pruning / ONNX Runtime's quantizer itself, lazily where a CLI may load it,
so the inference path never pays for it.
"""
