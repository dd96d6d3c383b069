"""The callback that steers a training run: learning rate, dev BLEU, early stopping,
checkpoints for resuming, the best model, history and the time budget.

Keras' own EarlyStopping/ModelCheckpoint/ReduceLROnPlateau each keep state that a
resumed run would lose (best score, wait counter, plateau scale); one callback that
writes all of it into the checkpoint makes resume exact.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from translator.config import TrainingConfig
from translator.faults import crash_point
from translator.io_utils import atomic_open, atomic_path
from translator.train.schedule import learning_rate
from translator.train.state import RunState


class EpochProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, with the run's epoch count: training calls fit one epoch at a
    time (to resume mid-epoch), so Keras' own would read "Epoch 2/2", "Epoch 3/3", ...
    Listed before TrainingControl, it also ends its line before the epoch's dev BLEU is
    logged (Keras would add its own after ours, and the BLEU line would continue the
    bar's: '... loss: 3.9881epoch 2: dev BLEU 21.72')."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.total_epochs = epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs


class TrainingControl(keras.callbacks.Callback):
    """Per batch: sets the learning rate, checkpoints every cfg.checkpoint_every steps and
    watches the time budget. Per epoch: dev BLEU, history, best model, early stopping."""

    def __init__(self, folder: Path, cfg: TrainingConfig, state: RunState, steps_per_epoch: int,
                 evaluate: Callable[[], float], save_best: Callable[[], None],
                 log: Callable[[str], None] = print,
                 agree: Callable[[bool], bool] = bool) -> None:
        """agree(flag): True if any worker's flag is (translator.train.distribute.agree):
        the workers of a multi-worker run stop at the same step whatever their clocks."""
        super().__init__()
        self.agree = agree
        self.folder, self.cfg, self.state = folder, cfg, state
        self.steps_per_epoch, self.evaluate, self.save_best = steps_per_epoch, evaluate, save_best
        self.log = log
        self._started = time.monotonic()
        self._seconds_before = state.seconds

    def elapsed(self) -> float:
        return self._seconds_before + time.monotonic() - self._started

    def on_train_batch_begin(self, batch, logs=None):
        lr = learning_rate(self.cfg, self.state.global_step + 1, self.state.lr_scale)
        self.model.optimizer.learning_rate.assign(lr)

    def on_train_batch_end(self, batch, logs=None):
        self.state.global_step += 1
        self.state.step_in_epoch += 1
        every = self.cfg.checkpoint_every
        if every and self.state.global_step % every == 0:
            self.checkpoint()
        if self.cfg.max_minutes and self.agree(self._out_of_time()):
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        complete = self.state.step_in_epoch >= self.steps_per_epoch
        bleu = self.evaluate()
        self.state.history.append({
            "epoch": epoch + 1 if complete else round(epoch + self.state.step_in_epoch
                                                      / self.steps_per_epoch, 2),
            "step": self.state.global_step,
            "loss": round(float(logs.get("loss", np.nan)), 4),
            "dev_loss": round(float(logs.get("val_loss", np.nan)), 4),
            "dev_bleu": round(bleu, 2),
            "learning_rate": float(self.model.optimizer.learning_rate.numpy()),
            "minutes": round(self.elapsed() / 60, 2),
        })
        self._track_best(bleu, self.state.history[-1]["epoch"])
        if complete:
            self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
        self.write_history()
        reason = ""
        if self.state.bad_evals >= self.cfg.patience:
            reason = f"early stopping: no better dev BLEU for {self.cfg.patience} epochs"
        elif self.state.epoch >= self.cfg.epochs:
            reason = f"reached {self.cfg.epochs} epochs"
        elif self._out_of_time():
            reason = f"time budget of {self.cfg.max_minutes} minutes spent"
        if self.agree(bool(reason)):
            self._stop(reason or "stopped with the other workers")
        self.checkpoint(keep_epoch=epoch + 1 if self.cfg.average_last and complete else None)

    def _track_best(self, bleu: float, epoch: float) -> None:
        """epoch: the 1-based epoch just evaluated (fractional for a part epoch)."""
        s = self.state
        if bleu > s.best_bleu:
            s.best_bleu, s.best_epoch, s.bad_evals, s.plateau_evals = bleu, epoch, 0, 0
            self.save_best()
            self.log(f"epoch {epoch}: dev BLEU {bleu:.2f} (best so far, saved)")
            return
        s.bad_evals += 1
        s.plateau_evals += 1
        self.log(f"epoch {epoch}: dev BLEU {bleu:.2f} (best {s.best_bleu:.2f} "
                 f"at epoch {s.best_epoch})")
        if self.cfg.decay == "plateau" and s.plateau_evals >= self.cfg.plateau_patience:
            s.lr_scale *= self.cfg.plateau_factor
            s.plateau_evals = 0
            self.log(f"learning rate scaled to {s.lr_scale:g} x base")

    def _out_of_time(self) -> bool:
        return bool(self.cfg.max_minutes) and self.elapsed() > 60 * self.cfg.max_minutes

    def _stop(self, reason: str) -> None:
        self.state.finished, self.state.stop_reason = True, reason
        self.model.stop_training = True
        self.log(reason)

    def checkpoint(self, keep_epoch: int | None = None) -> None:
        """Weights + optimizer into step-N.keras, then state.json naming that file, then the
        older step files go: a kill at any moment leaves a state and the file it names."""
        # Ctrl-C can land after a step's update but before on_train_batch_end counted it:
        # the optimizer's iteration count is the truth.
        lag = int(self.model.optimizer.iterations.numpy()) - self.state.global_step
        self.state.global_step += lag
        self.state.step_in_epoch += lag
        folder = self.folder
        name = f"step-{self.state.global_step}.keras"
        with atomic_path(folder / name) as tmp:
            self.model.save(tmp)
            crash_point("checkpoint-write")
        if keep_epoch is not None:
            with atomic_path(folder / f"epoch-{keep_epoch}.weights.h5") as tmp:
                self.model.save_weights(tmp)
            stale = folder / f"epoch-{keep_epoch - self.cfg.average_last}.weights.h5"
            stale.unlink(missing_ok=True)
        self.state.seconds = self.elapsed()
        self.state.checkpoint = name
        self.state.capture_seeds(self.model)
        self.state.save(folder)
        for old in folder.glob("step-*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def write_history(self) -> None:
        rows = self.state.history
        with atomic_open(self.folder.parent / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
