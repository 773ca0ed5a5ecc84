"""Training: TOML config, trainer (DiceCE, deep supervision, AdamW + poly/cosine, checkpoints, time budget), DDP."""
