"""The state of a training run beyond its weights and optimizer, saved with every
checkpoint so that a resumed run continues exactly where it stopped."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from translator.config import TrainingConfig
from translator.io_utils import atomic_write_json

STATE_FILE = "state.json"


@dataclass
class RunState:
    """Everything beyond the weights and the optimizer that a resumed run needs."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # batches of that epoch already trained
    global_step: int = 0
    best_bleu: float = -1.0
    best_epoch: float = -1  # fractional when the best was a part epoch (time budget)
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    plateau_evals: int = 0  # evaluations since the last improvement or LR cut
    lr_scale: float = 1.0
    seconds: float = 0.0  # training time spent so far, over all sessions
    checkpoint: str = ""  # the weights + optimizer file this state belongs to
    data_files: dict[str, str] = field(default_factory=dict)  # path -> sha256 of the data
    finished: bool = False
    stop_reason: str = ""
    history: list[dict] = field(default_factory=list)
    # fine-tuning: the parent model folder, its tokenizer's fingerprint and its dev BLEU on
    # this run's dev set before training
    parent: dict = field(default_factory=dict)
    # Dropout's random generators: Keras does not save their state with the model, so a
    # resumed run would draw other dropout masks than an uninterrupted one.
    seed_states: list[list[int]] = field(default_factory=list)

    def save(self, folder: Path) -> None:
        atomic_write_json(folder / STATE_FILE, asdict(self))

    def done(self, cfg: TrainingConfig) -> bool:
        """Whether a stopping rule holds under cfg (which may allow more than the last run)."""
        return (self.epoch >= cfg.epochs or self.bad_evals >= cfg.patience
                or bool(cfg.max_minutes) and self.seconds >= 60 * cfg.max_minutes)

    def capture_seeds(self, model: keras.Model) -> None:
        self.seed_states = [v.numpy().tolist() for v in _seed_variables(model)]

    def restore_seeds(self, model: keras.Model) -> None:
        variables = _seed_variables(model)
        if self.seed_states and len(variables) == len(self.seed_states):
            for variable, value in zip(variables, self.seed_states):
                variable.assign(np.asarray(value, variable.dtype))

    @classmethod
    def load(cls, folder: Path) -> RunState:
        """The saved state; a damaged or crafted one (unknown fields, a checkpoint named
        outside `folder`) is refused with a ValueError naming the file."""
        path = folder / STATE_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            state = cls(**raw)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path} is corrupt ({err}); start afresh with --overwrite"
                             ) from None
        name = state.checkpoint
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise ValueError(f"{path} names the checkpoint {name!r}, not a file of {folder}")
        if not (folder / name).is_file():
            raise ValueError(f"{path} names the checkpoint {name}, which is missing; "
                             "start afresh with --overwrite")
        return state


def _seed_variables(model: keras.Model) -> list:
    return [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]
