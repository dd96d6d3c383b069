"""Typed, validated settings: data, tokenizer, model, training and decoding.

A config is a YAML mapping with the sections below; anything not given keeps its
default. Unknown keys and impossible values are refused with a ConfigError that
names the key. Presets (`tiny`, `demo`, `base`) are partial configs applied first.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key is unknown or its value is impossible."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.2), not as a string (PyYAML's YAML 1.1)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


@dataclass
class DataConfig:
    corpus: str | None = "multi30k"  # a registered corpus, or None for your own files
    src: str = "en"
    tgt: str = "de"
    train_src: str | None = None
    train_tgt: str | None = None
    dev_src: str | None = None
    dev_tgt: str | None = None
    train_tsv: str | None = None
    dev_tsv: str | None = None
    mirror: str | None = None
    train_limit: int | None = None  # use only the first N training pairs
    dev_limit: int | None = None  # use only the first N dev pairs (for quick runs)
    max_chars: int = 1000  # training pairs longer than this (either side) are dropped
    max_ratio: float = 9.0  # ... and pairs whose character lengths differ more than this
    max_tokens: int = 100  # ... and pairs longer than this many subwords (either side)


@dataclass
class TokenizerConfig:
    vocab_size: int = 8000
    model_type: str = "unigram"
    joint: bool = True


@dataclass
class ModelConfig:
    embedding_dim: int = 256
    encoder_units: int = 256  # per direction in the bidirectional first layer
    encoder_layers: int = 1
    decoder_units: int = 512
    decoder_layers: int = 1
    attention: str = "general"  # dot | general | additive
    input_feeding: bool = False
    dropout: float = 0.3
    word_dropout: float = 0.0  # training: drop whole source and target words (embeddings)
    tie_embeddings: bool = True  # target embedding doubles as the output projection
    share_embeddings: bool = True  # one embedding for source and target (joint vocabulary only)


@dataclass
class TrainingConfig:
    batch_size: int = 64  # sentences per batch
    epochs: int = 30
    max_minutes: float | None = None  # stop (keeping the best checkpoint) after this long
    learning_rate: float = 0.001  # 2e-3 left base's loss flat for 10 epochs; demo: 31.1 -> 32.9
    warmup_steps: int = 200
    decay: str = "plateau"  # plateau | inverse_sqrt | constant
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    clipnorm: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 1234
    patience: int = 4  # early stopping: evaluations without a better dev BLEU
    eval_beam: int = 1  # search used for dev BLEU during training (1 = greedy)
    average_last: int = 0  # average the weights of the last K epochs' checkpoints (0 = off)
    # subword regularisation: each epoch samples new segmentations of the training pairs
    # with this alpha (unigram: smoothing of P(x)^alpha; bpe: BPE-dropout rate); 0 = off
    subword_alpha: float = 0.0
    subword_nbest: int = -1  # unigram: sample among the n best segmentations (-1 = all)
    bucket_width: int = 1  # batches group target, then source lengths rounded to this
    checkpoint_every: int = 200  # steps between checkpoints for resuming (and at each epoch end)
    # fine-tuning: start from this model folder's weights and tokenizer (fresh optimizer
    # and schedule); its model and tokenizer settings must be this run's
    init_from: str | None = None
    # an ensemble: train this many models one after another (seeds seed, seed + 1, ...),
    # sharing the tokenizer and splitting max_minutes equally; they translate together
    # (translator.model.ensemble), each alone a model folder under members/
    members: int = 1
    # auto: mixed_bfloat16 where the CPU has bfloat16 instructions (faster), else
    # float32. The choice is stored with the model and used to translate too.
    precision: str = "auto"


@dataclass
class DecodingConfig:
    beam: int = 5
    length_penalty: float = 0.6
    nbest: int = 1
    max_len_ratio: float = 1.5  # maximum output length = ratio * source length + offset
    max_len_offset: int = 10
    # sentences per search batch: finished sentences leave the loop, so a bigger batch
    # loses nothing to its longest sentence, and the outputs do not depend on it
    batch_size: int = 256


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # seconds: for tests
    "tiny": {
        "data": {"train_limit": 2000, "dev_limit": 100, "max_tokens": 64},
        "tokenizer": {"vocab_size": 600},
        "model": {"embedding_dim": 32, "encoder_units": 32, "decoder_units": 64, "dropout": 0.1},
        "training": {"batch_size": 32, "epochs": 2, "warmup_steps": 10, "learning_rate": 0.005},
        "decoding": {"beam": 2, "max_len_offset": 5},
    },
    # the default of `make demo`: the best translations in eight minutes of training on 2
    # cores (the 8k vocabulary and the 256-wide embeddings: bench/README.md, levers)
    "demo": {
        "tokenizer": {"vocab_size": 8000},
        "model": {"embedding_dim": 256, "encoder_units": 128, "decoder_units": 256, "dropout": 0.2},
        "training": {"batch_size": 64, "epochs": 25, "max_minutes": 8},
        "data": {"dev_limit": 300},
    },
    # the best quality reachable in an hour on 2 cores (bench/README.md, levers): input
    # feeding with additive attention (+1.6 dev BLEU at the best epoch), a 2x256 encoder,
    # dropout 0.3, the 8k vocabulary, 128-wide embeddings, and the learning rate cut to 0.7x
    # after 2 epochs without a better dev BLEU; two such models from two seeds, 26 minutes
    # each (one model gains nothing measurable on Multi30k after 26), translating together
    "base": {
        "tokenizer": {"vocab_size": 8000},
        "model": {"embedding_dim": 128, "encoder_units": 256, "decoder_units": 256, "dropout": 0.3,
                  "attention": "additive", "input_feeding": True},
        "training": {"batch_size": 64, "epochs": 80, "max_minutes": 52, "members": 2,
                     "patience": 6, "plateau_factor": 0.7, "plateau_patience": 2},
    },
}

_CHOICES = {
    "model.attention": ("dot", "general", "additive"),
    "tokenizer.model_type": ("unigram", "bpe"),
    "training.decay": ("plateau", "inverse_sqrt", "constant"),
    "training.precision": ("auto", "float32", "mixed_bfloat16"),
}
_POSITIVE = {
    "tokenizer.vocab_size", "model.embedding_dim", "model.encoder_units", "model.encoder_layers",
    "model.decoder_units", "model.decoder_layers", "training.batch_size", "training.epochs",
    "training.learning_rate", "training.bucket_width", "training.eval_beam", "decoding.beam",
    "decoding.nbest", "decoding.batch_size", "decoding.max_len_ratio", "data.max_chars",
    "data.max_ratio", "data.max_tokens", "data.train_limit", "data.dev_limit",
    "training.max_minutes", "training.members",
}


def from_dict(raw: dict[str, Any], base: Config | None = None) -> Config:
    """Returns `base` (default: all defaults) updated with `raw`, validated."""
    config = base or Config()
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, not {type(raw).__name__}")
    for section, values in raw.items():
        if section not in {f.name for f in dataclasses.fields(Config)}:
            raise ConfigError(f"unknown config section {section!r}")
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        for key, value in values.items():
            set_value(config, f"{section}.{key}", value)
    validate(config)
    return config


def set_value(config: Config, dotted: str, value: Any, text: str | None = None) -> None:
    """Sets `section.key` to value, converting to the field's type or refusing.

    `text`, the value as typed on the command line, is kept for string fields that YAML
    would read otherwise (e.g. the language code `no` for Norwegian, which YAML reads
    as false).
    """
    section, _, key = dotted.partition(".")
    target = getattr(config, section, None) if section in config.__dataclass_fields__ else None
    if target is None or key not in target.__dataclass_fields__:
        raise ConfigError(f"unknown config key {dotted!r}")
    kind = target.__dataclass_fields__[key].type
    if text is not None and kind.startswith("str") and value is not None:
        value = text.strip()
    setattr(target, key, _convert(dotted, value, kind))


def _convert(dotted: str, value: Any, kind: str) -> Any:
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{dotted} cannot be empty")
    base = kind.replace(" | None", "")
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base == "str" and isinstance(value, str):
        return value
    raise ConfigError(f"{dotted} must be {base}{' or null' if optional else ''}, not {value!r}")


def validate(config: Config) -> None:
    flat = {f"{s}.{k}": v for s, d in config.to_dict().items() for k, v in d.items()}
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, not {flat[key]!r}")
    for key in _POSITIVE:
        if flat[key] is not None and flat[key] <= 0:
            raise ConfigError(f"{key} must be positive, not {flat[key]!r}")
    checks = [
        ("model.dropout", 0 <= flat["model.dropout"] < 1, "must be in [0, 1)"),
        ("model.word_dropout", 0 <= flat["model.word_dropout"] < 1, "must be in [0, 1)"),
        ("training.label_smoothing", 0 <= flat["training.label_smoothing"] < 1,
         "must be in [0, 1)"),
        ("training.plateau_factor", 0 < flat["training.plateau_factor"] <= 1, "must be in (0, 1]"),
        ("training.clipnorm", flat["training.clipnorm"] > 0, "must be positive"),
        ("training.patience", flat["training.patience"] >= 1, "must be >= 1"),
        ("training.plateau_patience", flat["training.plateau_patience"] >= 1, "must be >= 1"),
        ("decoding.max_len_offset", flat["decoding.max_len_offset"] >= 0, "must be >= 0"),
        ("decoding.length_penalty", flat["decoding.length_penalty"] >= 0, "must be >= 0"),
        ("decoding.nbest", flat["decoding.nbest"] <= flat["decoding.beam"], "must be <= beam"),
        ("tokenizer.vocab_size", flat["tokenizer.vocab_size"] >= 300,
         "must be >= 300 (256 byte pieces + specials + characters)"),
        ("training.average_last", flat["training.average_last"] >= 0, "must be >= 0"),
        ("training.subword_alpha", flat["training.subword_alpha"] >= 0, "must be >= 0"),
        ("training.subword_alpha", flat["tokenizer.model_type"] != "bpe"
         or flat["training.subword_alpha"] < 1, "must be < 1 with bpe (it is a dropout rate)"),
        ("training.subword_nbest", flat["training.subword_nbest"] == -1
         or flat["training.subword_nbest"] > 1, "must be -1 (all) or > 1"),
        ("training.warmup_steps", flat["training.warmup_steps"] >= 0, "must be >= 0"),
        ("training.checkpoint_every", flat["training.checkpoint_every"] >= 0, "must be >= 0"),
    ]
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"{key} {message}, not {flat[key]!r}")
    if config.training.members > 1 and config.training.init_from:
        raise ConfigError("training.members > 1 cannot fine-tune (training.init_from): "
                          "fine-tune one model")
    model = config.model
    if model.attention == "dot" and model.decoder_units != 2 * model.encoder_units:
        raise ConfigError(f"model.attention dot needs model.decoder_units "
                          f"({model.decoder_units}) = 2 x model.encoder_units "
                          f"({model.encoder_units}); use general or additive")
    _validate_data(config.data)


def _validate_data(data: DataConfig) -> None:
    own = [data.train_src, data.train_tgt, data.train_tsv]
    if data.corpus is None and not any(own):
        raise ConfigError("data: give data.corpus, or data.train_src + data.train_tgt, "
                          "or data.train_tsv")
    if bool(data.train_src) != bool(data.train_tgt):
        raise ConfigError("data.train_src and data.train_tgt must be given together")
    if bool(data.dev_src) != bool(data.dev_tgt):
        raise ConfigError("data.dev_src and data.dev_tgt must be given together")


def load(
    path: Path | str | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    base: Config | None = None,
) -> Config:
    """Preset, then the YAML file, then `key=value` overrides (values parsed as YAML), on
    top of `base` (default: the defaults), e.g. a trained model's config."""
    config = copy.deepcopy(base) if base is not None else Config()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        config = from_dict(PRESETS[preset], config)
    if path is not None:
        try:
            raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: cannot read config (invalid UTF-8 at byte "
                              f"{err.start})") from None
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config ({err})") from None
        config = from_dict(raw, config)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError:
            value = text  # not YAML (e.g. a file pattern): the text itself, typed below
        set_value(config, key.strip(), value, text)
    validate(config)
    return config


def dump(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
