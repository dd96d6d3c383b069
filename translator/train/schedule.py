"""The learning-rate schedule: linear warm-up, then constant (halved on plateaus by
translator.train.callbacks.TrainingControl) or inverse square root."""

from __future__ import annotations

import math

from translator.config import TrainingConfig


def learning_rate(cfg: TrainingConfig, step: int, scale: float) -> float:
    """Linear warm-up, then constant (scaled down on plateaus) or inverse square root."""
    step = max(step, 1)
    warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.decay == "inverse_sqrt" and cfg.warmup_steps and step > cfg.warmup_steps:
        warm = math.sqrt(cfg.warmup_steps / step)
    return cfg.learning_rate * warm * scale
