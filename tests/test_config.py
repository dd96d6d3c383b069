"""Tests for translator.config: presets, validation messages that name the key, overrides, YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from translator import config
from translator.config import Config, ConfigError


def _flat(raw: dict) -> dict:
    return {f"{section}.{key}": value for section, values in raw.items()
            for key, value in values.items()}


# --- presets --------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "demo", "base"])
def test_presets_load_validate_and_apply_every_value(preset):
    loaded = config.load(preset=preset)
    assert isinstance(loaded, Config)
    config.validate(loaded)
    flat = _flat(loaded.to_dict())
    for key, value in _flat(config.PRESETS[preset]).items():
        assert flat[key] == value, key
    # Keys a preset does not give keep their defaults.
    defaults = _flat(Config().to_dict())
    untouched = set(defaults) - set(_flat(config.PRESETS[preset]))
    assert {k: flat[k] for k in untouched} == {k: defaults[k] for k in untouched}


def test_the_2x128_base_variant_in_bench_configs_is_base_with_exactly_its_settings():
    """The README's results for the pairs other than en->de name this file on top of the
    base preset: it must load and change only the settings it names."""
    path = Path(__file__).resolve().parent.parent / "bench" / "configs" / "base-2x128.yaml"
    variant = _flat(config.load(path, preset="base").to_dict())
    base = _flat(config.load(preset="base").to_dict())
    changed = {k: variant[k] for k in variant if variant[k] != base[k]}
    assert changed == {"model.encoder_units": 128, "model.dropout": 0.2,
                       "model.attention": "general", "model.input_feeding": False,
                       "training.plateau_factor": 0.5, "training.plateau_patience": 1,
                       "training.members": 1, "training.max_minutes": 55}


def test_presets_are_not_modified_by_loading():
    before = yaml.safe_dump(config.PRESETS)
    config.load(preset="tiny", overrides=["model.dropout=0.0", "tokenizer.vocab_size=700"])
    assert yaml.safe_dump(config.PRESETS) == before
    assert config.load(preset="tiny").tokenizer.vocab_size == 600


def test_defaults_validate():
    config.validate(Config())
    assert config.load().to_dict() == Config().to_dict()


def test_unknown_preset_raises_naming_the_presets():
    with pytest.raises(ConfigError, match="'huge'.*tiny, demo, base"):
        config.load(preset="huge")


# --- unknown keys ---------------------------------------------------------------------------


def test_unknown_key_raises_naming_it():
    with pytest.raises(ConfigError, match=r"'model\.foo'"):
        config.from_dict({"model": {"foo": 1}})
    with pytest.raises(ConfigError, match=r"'model\.foo'"):
        config.load(overrides=["model.foo=1"])


def test_unknown_section_raises_naming_it():
    with pytest.raises(ConfigError, match="section 'modle'"):
        config.from_dict({"modle": {"dropout": 0.1}})
    with pytest.raises(ConfigError, match=r"'modle\.dropout'"):
        config.load(overrides=["modle.dropout=0.1"])


@pytest.mark.parametrize("dotted", ["model", "to_dict.x", "model.__init__", "data."])
def test_malformed_or_non_field_keys_are_unknown(dotted):
    with pytest.raises(ConfigError, match="unknown config key"):
        config.load(overrides=[f"{dotted}=1"])


def test_section_that_is_not_a_mapping_raises():
    with pytest.raises(ConfigError, match="'model' must be a mapping"):
        config.from_dict({"model": 5})
    with pytest.raises(ConfigError, match="mapping of sections"):
        config.from_dict(["model"])


def test_override_without_equals_sign_raises():
    with pytest.raises(ConfigError, match="key=value.*'training.epochs'"):
        config.load(overrides=["training.epochs"])


# --- impossible values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.encoder_units=-4", "model.encoder_units"),
        ("model.decoder_units=0", "model.decoder_units"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.dropout=1", "model.dropout"),
        ("model.dropout=-0.1", "model.dropout"),
        ("model.attention=luong", "model.attention"),
        ("decoding.nbest=6", "decoding.nbest"),  # the default beam is 5
        ("decoding.beam=0", "decoding.beam"),
        ("decoding.length_penalty=-1", "decoding.length_penalty"),
        ("tokenizer.vocab_size=10", "tokenizer.vocab_size"),
        ("tokenizer.model_type=wordpiece", "tokenizer.model_type"),
        ("training.decay=cosine", "training.decay"),
        ("training.precision=float16", "training.precision"),
        ("training.label_smoothing=1.0", "training.label_smoothing"),
        ("training.learning_rate=0", "training.learning_rate"),
        ("training.max_minutes=0", "training.max_minutes"),
        ("training.max_minutes=-5", "training.max_minutes"),
        ("training.warmup_steps=-1", "training.warmup_steps"),
        ("training.average_last=-1", "training.average_last"),
        ("data.train_limit=-5", "data.train_limit"),
        ("data.dev_limit=0", "data.dev_limit"),
        ("data.max_ratio=0", "data.max_ratio"),
    ],
)
def test_impossible_values_raise_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(overrides=[override])


def test_impossible_value_in_a_mapping_raises_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.dropout must be in \[0, 1\), not 1\.5"):
        config.from_dict({"model": {"dropout": 1.5}})


def test_nbest_up_to_beam_is_accepted():
    loaded = config.load(overrides=["decoding.beam=3", "decoding.nbest=3"])
    assert (loaded.decoding.beam, loaded.decoding.nbest) == (3, 3)
    with pytest.raises(ConfigError, match=r"decoding\.nbest must be <= beam, not 4"):
        config.load(overrides=["decoding.beam=3", "decoding.nbest=4"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("training.epochs=abc", "training.epochs must be int"),
        ("training.epochs=2.5", "training.epochs must be int"),
        ("training.epochs=true", "training.epochs must be int"),  # bool is not an int here
        ("model.dropout='0.1'", "model.dropout must be float"),
        ("tokenizer.joint=1", "tokenizer.joint must be bool"),
        ("model.embedding_dim=[1, 2]", "model.embedding_dim must be int"),
        ("data.train_limit=many", "data.train_limit must be int or null"),
        ("model.dropout=null", "model.dropout cannot be empty"),
    ],
)
def test_wrong_types_raise_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(overrides=[override])


def test_wrong_type_in_a_yaml_file_raises_naming_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  epochs: abc\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"training\.epochs must be int, not 'abc'"):
        config.load(path)


# --- overrides ------------------------------------------------------------------------------


def test_overrides_parse_yaml_values():
    loaded = config.load(
        preset="tiny",
        overrides=["training.epochs=5", "data.train_limit=null", "model.input_feeding=true",
                   "data.mirror=/srv/corpora", "training.max_minutes=8", "model.dropout=0"],
    )
    assert loaded.training.epochs == 5 and type(loaded.training.epochs) is int
    assert loaded.data.train_limit is None  # the tiny preset sets 2000
    assert loaded.model.input_feeding is True
    assert loaded.data.mirror == "/srv/corpora"
    assert loaded.training.max_minutes == 8.0 and type(loaded.training.max_minutes) is float
    assert loaded.model.dropout == 0.0 and type(loaded.model.dropout) is float


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    # PyYAML's safe_load reads "1e-3" as a string; a config must not.
    loaded = config.load(overrides=["training.learning_rate=2e-3", "data.max_ratio=2E1"])
    assert loaded.training.learning_rate == 0.002
    assert loaded.data.max_ratio == 20.0
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  learning_rate: 5e-4\n", encoding="utf-8")
    assert config.load(path).training.learning_rate == 0.0005
    with pytest.raises(ConfigError, match=r"training\.epochs must be int, not 1000\.0"):
        config.load(overrides=["training.epochs=1e3"])


def test_overrides_apply_after_preset_and_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  epochs: 7\n  learning_rate: 0.0003\nmodel:\n  dropout: 0.25\n",
                    encoding="utf-8")
    loaded = config.load(path, preset="tiny", overrides=["training.epochs=9"])
    assert loaded.training.epochs == 9  # override beats file beats preset
    assert loaded.training.learning_rate == 3e-4
    assert loaded.model.dropout == 0.25
    assert loaded.model.embedding_dim == config.PRESETS["tiny"]["model"]["embedding_dim"]


def test_overrides_are_validated_together():
    # nbest=8 alone exceeds the default beam of 5; with beam=8 it is fine in either order.
    loaded = config.load(overrides=["decoding.nbest=8", "decoding.beam=8"])
    assert loaded.decoding.nbest == 8


# --- YAML files -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", [None, "tiny", "base"])
def test_yaml_file_round_trip(preset, tmp_path):
    original = config.load(preset=preset, overrides=["training.learning_rate=0.00001",
                                                     "data.corpus=null", "data.train_tsv=a.tsv",
                                                     "training.max_minutes=2.5"])
    path = tmp_path / "config.yaml"
    path.write_text(config.dump(original), encoding="utf-8")
    loaded = config.load(path)
    assert loaded.to_dict() == original.to_dict()
    assert loaded == original


def test_dump_lists_every_field(tmp_path):
    dumped = yaml.safe_load(config.dump(Config()))
    for section in dataclasses.fields(Config):
        names = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(dumped[section.name]) == names


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n", encoding="utf-8")
    assert config.load(path).to_dict() == Config().to_dict()


def test_unreadable_yaml_raises_naming_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{path}: cannot read config"):
        config.load(path)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config"):
        config.load(tmp_path / "missing.yaml")


def test_own_files_need_both_sides():
    with pytest.raises(ConfigError, match="train_src and data.train_tgt"):
        config.load(overrides=["data.train_src=train.en"])
    with pytest.raises(ConfigError, match="data.corpus"):
        config.load(overrides=["data.corpus=null"])


def test_string_fields_keep_the_text_typed_on_the_command_line():
    # YAML reads `no` as false; a language code is a string (Norwegian).
    assert config.load(overrides=["data.src=no", "data.tgt=5"]).data.src == "no"


def test_a_yaml_file_with_a_number_for_a_string_key_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  src: 5\n")
    with pytest.raises(config.ConfigError, match="data.src must be str"):
        config.load(path)
