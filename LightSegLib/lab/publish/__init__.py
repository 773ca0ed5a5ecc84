"""Publishing: the one writer of the model registry (``writer``: every entry added or changed by export,
quantization, a speed record, a published model or a benchmark goes through it; the runtime only reads), the
model cards rendered from measured figures (``cards``), and a CT model's way from checkpoint to card (``model``,
the ``lightseg publish`` and ``lightseg bench --record`` steps)."""
