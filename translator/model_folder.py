"""The model folder: everything needed to translate, independent of where it was trained.

models/NAME/
  config.yaml        the full config (data, tokenizer, model, training, decoding)
  spm.model          the SentencePiece model (or spm.src.model + spm.tgt.model)
  model.keras        the best weights (Keras 3 format, no optimizer state)
  history.csv        one row per epoch: loss, dev loss, dev BLEU, learning rate, time
  scores.json        dev (and test) scores with sacreBLEU signatures
  run.json           the run card: data files and checksums, versions, seed, wall time, machine
  evaluations/NAME/  scores, translations and a per-sentence report (translator.evaluate)
  checkpoint/        the latest training state, for resuming (not needed to translate)

An ensemble (training.members: N > 1) holds, instead of model.keras, history.csv and
checkpoint/, one model folder per member, each complete (it translates alone too):

  members/1/ ... members/N/
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import yaml

from translator import __version__
from translator import config as config_lib
from translator import kernels
from translator.data.tokenizer import JOINT_FILE, SRC_FILE, TGT_FILE, Tokenizer, TokenizerError
from translator.kernels import cpu
from translator.model import Ensemble, Seq2Seq

CONFIG_FILE, WEIGHTS_FILE = "config.yaml", "model.keras"
HISTORY_FILE, SCORES_FILE, RUN_FILE = "history.csv", "scores.json", "run.json"
CHECKPOINT_DIR, MEMBERS_DIR = "checkpoint", "members"
# The layout and meaning of the files above. Raised when an older version could no longer
# read a folder right; run.json records it, and a folder of a higher format is refused.
FOLDER_FORMAT = 1


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete or corrupt; the message names the file."""


def member_folders(folder: Path | str, config: config_lib.Config) -> list[Path]:
    """The folders of an ensemble's members, in order (none for one model)."""
    n = config.training.members
    return [Path(folder) / MEMBERS_DIR / str(k) for k in range(1, n + 1)] if n > 1 else []


def member_config(config: config_lib.Config, k: int) -> config_lib.Config:
    """The config of an ensemble's k-th member (from 1): one model, its own seed, an equal
    share of the time budget."""
    cfg = config.training
    minutes = cfg.max_minutes / cfg.members if cfg.max_minutes else None
    training = dataclasses.replace(cfg, members=1, seed=cfg.seed + k - 1, max_minutes=minutes)
    return dataclasses.replace(config, training=training)


def read_config(folder: Path | str) -> config_lib.Config:
    """The folder's config. A folder written by a newer version of the translator (its
    run card says so) is refused as such, before its config is read."""
    _check_format(Path(folder))
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise ModelFolderError(f"{path} is missing: {folder} is not a model folder")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return config_lib.from_dict(raw or {})
    except UnicodeDecodeError as err:
        raise ModelFolderError(f"{path} is corrupt: invalid UTF-8 at byte {err.start}") from None
    except (yaml.YAMLError, config_lib.ConfigError) as err:
        hint = (" (if a newer version of the translator wrote this folder, upgrade the "
                "translator)" if "unknown config" in str(err) else "")
        raise ModelFolderError(f"{path} is corrupt: {err}{hint}") from None


def _check_format(folder: Path) -> None:
    """Refuses a folder whose run card names a newer folder format than this version's."""
    try:
        card = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        written = int(card.get("folder_format", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return  # no run card (e.g. a copied folder) or an unreadable one: the config decides
    versions = card.get("versions")
    by = versions.get("translator") if isinstance(versions, dict) else None
    by = by if isinstance(by, str) else "a newer version"
    if written > FOLDER_FORMAT:
        raise ModelFolderError(
            f"{folder / RUN_FILE}: the folder was written by translator {by} in folder "
            f"format {written}; this translator ({__version__}) reads format {FOLDER_FORMAT} "
            "and older: upgrade the translator to use this model")


def resolve_precision(precision: str) -> str:
    """'auto' -> mixed_bfloat16 on CPUs with full-speed bfloat16 math (AVX-512 BF16 or AMX
    on x86, BF16 on ARM), else float32."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if cpu.has_bfloat16_math() else "float32"


def build_model(config: config_lib.Config, tokenizer: Tokenizer) -> Seq2Seq:
    """A fresh model whose sizes come from the config and the tokenizer, on this
    machine's operations (the compiled kernels where they load)."""
    m = config.model
    model = Seq2Seq(
        tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, embedding_dim=m.embedding_dim,
        encoder_units=m.encoder_units, encoder_layers=m.encoder_layers,
        decoder_units=m.decoder_units, decoder_layers=m.decoder_layers, attention=m.attention,
        input_feeding=m.input_feeding, dropout=m.dropout, tie_embeddings=m.tie_embeddings,
        share_embeddings=m.share_embeddings and tokenizer.joint, word_dropout=m.word_dropout,
        dtype=resolve_precision(config.training.precision),
    )
    model.use_operations(kernels.choose_operations())
    return model


def load_checkpoint(path: Path) -> Seq2Seq:
    """A training checkpoint: the model with its optimizer (see load_weights)."""
    return load_weights(path, compile=True)


def load_weights(path: Path, compile: bool = False) -> Seq2Seq:
    """The model in a .keras archive. Keras' safe mode is on: an archive cannot make the
    loader run code (no lambda layers, no classes outside Keras and this package)."""
    if not path.exists():
        raise ModelFolderError(f"{path} is missing: the folder has no trained weights")
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as err:  # Keras raises many kinds for a damaged archive
        if "could not be loaded" in str(err):  # an archive whose layers do not match ours
            first = str(err).strip().splitlines()[0]
            raise ModelFolderError(
                f"{path} does not match this version's layers (a folder written by an "
                f"older version of the translator?): retrain the model ({first})") from None
        raise ModelFolderError(f"{path} is corrupt or not a translator model: {err}") from None
    if not isinstance(model, Seq2Seq):
        raise ModelFolderError(f"{path} holds a {type(model).__name__}, not a translator model")
    model.use_operations(kernels.choose_operations())
    return model


def load_model_folder(folder: Path | str
                      ) -> tuple[Seq2Seq | Ensemble, Tokenizer, config_lib.Config]:
    """Loads what Translator needs; errors name the missing or bad file. An ensemble's
    folder gives its members' models together (translator.model.Ensemble).

    Only the folder's own files are read, by fixed names (no path from the config is
    followed), and none is a link to a file outside the folder. No code from the folder
    runs: the config is plain YAML read safely, the weights load in Keras' safe mode.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder")
    inside = folder.resolve()
    _check_files(folder, inside, (CONFIG_FILE, RUN_FILE, WEIGHTS_FILE, JOINT_FILE, SRC_FILE,
                                  TGT_FILE))
    config = read_config(folder)
    try:
        tokenizer = Tokenizer.load(folder)
    except TokenizerError as err:
        raise ModelFolderError(str(err)) from None
    n = config.training.members
    if n == 1:
        return _load_checked(folder / WEIGHTS_FILE, tokenizer), tokenizer, config
    models: list[Seq2Seq] = []
    for k in range(1, n + 1):  # one at a time: the first missing member ends it
        path = folder / MEMBERS_DIR / str(k) / WEIGHTS_FILE
        _check_files(path.parent, inside, (WEIGHTS_FILE,))
        models.append(_load_checked(path, tokenizer))
        if models[-1].settings != models[0].settings:
            differ = sorted(key for key, value in models[0].settings.items()
                            if models[-1].settings.get(key) != value)
            raise ModelFolderError(f"{path} is not of the ensemble's first member's "
                                   f"architecture (differs in {', '.join(differ)})")
    return Ensemble(models), tokenizer, config


def _check_files(folder: Path, inside: Path, names: tuple[str, ...]) -> None:
    """Refuses links to outside the model folder `inside`, broken links and non-files."""
    for name in names:
        path = folder / name
        if not (path.exists() or path.is_symlink()):
            continue
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link, a loop of links
            raise ModelFolderError(f"{path} is a broken link") from None
        if not target.is_relative_to(inside):
            raise ModelFolderError(f"{path} links to {target}, outside the model folder: "
                                   "a model folder holds its own files")
        if not target.is_file():
            raise ModelFolderError(f"{path} is not a file")


def _load_checked(path: Path, tokenizer: Tokenizer) -> Seq2Seq:
    """The weights in path, whose vocabularies must be the tokenizer's."""
    model = load_weights(path)
    for side, name in (("src", "source"), ("tgt", "target")):
        ours = model.settings[f"{side}_vocab_size"]
        theirs = getattr(tokenizer, f"{side}_vocab_size")
        if ours != theirs:
            raise ModelFolderError(f"{path} has a {name} vocabulary of {ours} but the "
                                   f"tokenizer has {theirs}")
    return model
