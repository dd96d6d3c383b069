"""A run's lineage: fine-tuning from a parent model (training.init_from) and extending a
finished run by more epochs (train.py --continue)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from translator import config as config_lib
from translator import model_folder as mf
from translator.data.tokenizer import Tokenizer
from translator.metrics import bleu
from translator.train.state import STATE_FILE, RunState
from translator.translator import Translator


class RunFolderError(ValueError):
    """The output folder holds something this run must not overwrite or resume."""


def extended(config: config_lib.Config, folder: Path, more_epochs: int):
    """The config of a run extended by more_epochs (see train)."""
    state_file = folder / mf.CHECKPOINT_DIR / STATE_FILE
    if not state_file.exists():
        raise RunFolderError(f"{folder} holds no training run to continue ({state_file} is "
                             "missing)")
    state = RunState.load(folder / mf.CHECKPOINT_DIR)
    training = dataclasses.replace(config.training, epochs=state.epoch + more_epochs,
                                   max_minutes=None)
    return dataclasses.replace(config, training=training)


def check_parent(config: config_lib.Config) -> None:
    """Fine-tuning needs the parent's model and tokenizer settings: its weights and
    vocabulary must fit this run's model."""
    parent = Path(config.training.init_from)
    if not (parent / mf.WEIGHTS_FILE).exists():
        members = (mf.read_config(parent).training.members
                   if (parent / mf.CONFIG_FILE).exists() else 1)
        if members > 1:
            raise RunFolderError(f"--init-from {parent} is an ensemble of {members} models: "
                                 f"fine-tune one of them (--init-from "
                                 f"{parent / mf.MEMBERS_DIR / '1'})")
        raise RunFolderError(f"--init-from {parent}: no trained model there "
                             f"({parent / mf.WEIGHTS_FILE} is missing)")
    old, new = mf.read_config(parent).to_dict(), config.to_dict()
    differ = [f"{s}.{k}" for s in ("model", "tokenizer") for k in new[s]
              if new[s][k] != old[s][k]]
    if differ:
        raise RunFolderError(
            f"--init-from {parent}: this run's {', '.join(differ)} differ from the parent's; "
            "fine-tuning keeps the parent's model and tokenizer (its vocabulary)")


def parent_card(config, tokenizer: Tokenizer, model, splits, log) -> dict:
    """What the run card says of the parent, with its dev BLEU on this run's dev set."""
    parent = Path(config.training.init_from)
    translator = Translator(model, tokenizer, config)
    hyps = translator.translate([s for s, _ in splits.dev], beam=config.training.eval_beam)
    before = bleu(hyps, [t for _, t in splits.dev], config.data.tgt).score
    log(f"fine-tuning {parent}: its dev BLEU on this dev set is {before:.2f}")
    return {"folder": str(parent.resolve()), "tokenizer": tokenizer.fingerprint(),
            "dev_bleu_before": before}
