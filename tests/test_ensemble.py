"""Ensembles: the step averages the members' log-probabilities; an ensemble of one model
translates as the model; training.members trains the members into one folder that every
front end translates with, resumes after kill -9, and refuses what it cannot do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from translator import config as config_lib
from translator.model import Ensemble, Seq2Seq
from translator.train.run import RunFolderError, train
from translator.translator import Translator

ROOT = Path(__file__).resolve().parent.parent
# Two members of two epochs (19 steps each) on a 600-pair slice, with the base preset's
# input feeding and additive attention: seconds per member.
MEMBERS = ["training.members=2", "data.train_limit=600", "data.dev_limit=20",
           "training.epochs=2", "decoding.beam=3", "model.input_feeding=true",
           "model.attention=additive"]
SOURCES = ["A man is riding a bicycle down the street.", "Two dogs play in the snow.",
           "A little girl is climbing a tree.", ""]


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def ensemble_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ensemble") / "model"
    train(config_lib.load(preset="tiny", overrides=MEMBERS), folder, verbose=0, log=quiet)
    return folder


def float32_plain(translator: Translator) -> Translator:
    """The translator's model in float32 on the plain operations, where a search reads the
    same float32 logits that an ensemble's members give (in bfloat16, and with the
    kernels' fused search output, the two round differently)."""
    from dataclasses import replace

    from translator.model import PLAIN
    from translator.model_folder import build_model

    config = translator.config
    config = replace(config, training=replace(config.training, precision="float32"))
    model = build_model(config, translator.tokenizer)
    model.build()
    model.set_weights(translator.model.get_weights())
    model.use_operations(PLAIN)
    return Translator(model, translator.tokenizer, config)


def test_an_ensemble_of_one_model_translates_as_the_model(tiny_translator):
    alone = float32_plain(tiny_translator)
    for members in ([alone.model], [alone.model] * 2):
        together = Translator(Ensemble(members), alone.tokenizer, alone.config)
        for beam in (1, 3):
            ours = together.translate(SOURCES, beam=beam, return_scores=True)
            theirs = alone.translate(SOURCES, beam=beam, return_scores=True)
            assert [h.text for h in ours] == [h.text for h in theirs]
            np.testing.assert_allclose([h.score for h in ours], [h.score for h in theirs],
                                       atol=1e-4)


def test_an_ensemble_step_averages_the_members_log_probabilities(ensemble_folder):
    first, second = Translator.load(ensemble_folder).model.members
    source = tf.constant([[25, 40, 7, 3], [31, 3, 0, 0]], tf.int32)
    tokens = tf.constant([2, 2], tf.int32)
    ensemble = Ensemble([first, second])
    _, _, state = ensemble.encode(source, training=False)
    log_probs, new_state, attention = ensemble.decode_step(tokens, state)
    expected, weights = [], []
    for member in (first, second):
        _, _, own = member.encode(source, training=False)
        logits, own_next, att = member.decode_step(tokens, own)
        expected.append(tf.nn.log_softmax(logits).numpy())
        weights.append(tf.cast(att, tf.float32).numpy())
    np.testing.assert_allclose(log_probs.numpy(), (expected[0] + expected[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(attention.numpy(), (weights[0] + weights[1]) / 2, atol=1e-6)
    assert not np.allclose(expected[0], expected[1], atol=1e-3), "the members must differ"
    assert set(new_state) == set(state) and all(len(v) == 2 for v in new_state.values())


def eager_greedy(members, ids: list[int], limit: int) -> list[int]:
    """Greedy search over an ensemble in plain eager code, one sentence: each member keeps
    its own state; the next token is the argmax of the members' mean log-probabilities."""
    source = tf.constant([ids], tf.int32)
    states = [member.encode(source, training=False)[2] for member in members]
    token, out = 2, []  # BOS
    for _ in range(limit):
        log_probs = []
        for i, member in enumerate(members):
            logits, states[i], _ = member.decode_step(tf.constant([token]), states[i])
            log_probs.append(tf.nn.log_softmax(logits)[0].numpy())
        token = int(np.argmax(np.mean(log_probs, axis=0)))
        if token == 3:  # EOS
            break
        out.append(token)
    return out


def test_greedy_search_over_two_members_matches_a_plain_eager_loop(ensemble_folder):
    from translator import search
    from translator.data.pipeline import encode_sources

    translator = Translator.load(ensemble_folder)
    for text in SOURCES[:3]:  # one at a time: no padding, the eager loop's shapes
        hyp = translator.translate(text, beam=1, return_scores=True)
        ids = encode_sources(translator.tokenizer, [text])[0]
        limit = int(search.max_output_lengths(np.array([len(ids)], np.int32), 1.5, 5)[0])
        expected = eager_greedy(translator.model.members, ids.tolist(), limit)
        assert hyp.tokens == translator.tokenizer.pieces(expected), text


def test_members_train_into_one_folder_and_translate_together(ensemble_folder):
    from translator.model_folder import read_config

    folder = ensemble_folder
    assert not (folder / "model.keras").exists()
    spm = (folder / "spm.model").read_bytes()
    for k, seed in ((1, 1234), (2, 1235)):
        member = folder / "members" / str(k)
        config = read_config(member)
        assert (config.training.members, config.training.seed) == (1, seed)
        assert (member / "spm.model").read_bytes() == spm, "the members share the tokenizer"
        assert (member / "model.keras").exists() and (member / "history.csv").exists()
    scores = json.loads((folder / "scores.json").read_text())
    assert [m["folder"] for m in scores["members"]] == ["members/1", "members/2"]
    assert [m["seed"] for m in scores["members"]] == [1234, 1235]
    assert "bleu" in scores["dev"] and "bleu" in scores["test"]
    card = json.loads((folder / "run.json").read_text())
    assert [m["epochs"] for m in card["members"]] == [2, 2]

    translator = Translator.load(folder)
    assert isinstance(translator.model, Ensemble) and len(translator.model.members) == 2
    api = translator.translate(SOURCES)
    first, second = (Translator.load(folder / "members" / str(k)) for k in (1, 2))
    assert isinstance(first.model, Seq2Seq)  # a member's folder is one model's
    assert len(first.translate(SOURCES)) == len(SOURCES) and api[-1] == ""
    pairs = zip(first.model.get_weights(), second.model.get_weights())
    assert not all(np.array_equal(a, b) for a, b in pairs), "the members' seeds differ"
    cli = subprocess.run([sys.executable, "translate.py", "--model", str(folder), *SOURCES[:3]],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.splitlines() == api[:3]
    hyps = translator.translate(SOURCES[0], return_attention=True)
    assert hyps.attention.shape == (len(hyps.tokens), len(hyps.source_tokens))
    np.testing.assert_allclose(hyps.attention.sum(-1), 1.0, atol=1e-2)


def test_the_time_budget_is_split_between_the_members():
    from translator.model_folder import member_config

    config = config_lib.load(preset="base", overrides=["training.members=2"])
    assert config.training.max_minutes == 52
    assert [member_config(config, k).training.max_minutes for k in (1, 2)] == [26, 26]
    assert [member_config(config, k).training.seed for k in (1, 2)] == [1234, 1235]


# member 2's second checkpoint (each member checkpoints at its 2 epoch ends), so that it
# resumes from its first; the ensemble's own final scores (after the members' two)
KILLS = {"checkpoint-write:4": "resuming from step 19 of ", "final-scores:3": "is finished"}


@pytest.mark.parametrize("point", list(KILLS))
def test_a_killed_ensemble_run_resumes_and_matches_an_uninterrupted_one(ensemble_folder,
                                                                        tmp_path, point):
    broken = tmp_path / "broken"
    args = [sys.executable, "train.py", "--preset", "tiny", "--output", str(broken), "--quiet"]
    for item in MEMBERS:
        args += ["--set", item]
    env = {**os.environ, "TRANSLATOR_CRASH_AT": point}
    killed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert (broken / "members" / "1" / "model.keras").exists()
    assert not (broken / "scores.json").exists()
    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{broken / 'members' / '1'} is finished" in resumed.stdout  # not trained again
    member = broken / "members" / "2"
    assert KILLS[point] + (str(member) if "resuming" in KILLS[point] else "") in resumed.stdout
    ours = Translator.load(broken).translate(SOURCES, return_scores=True)
    reference = Translator.load(ensemble_folder).translate(SOURCES, return_scores=True)
    assert [h.text for h in ours] == [h.text for h in reference]
    np.testing.assert_allclose([h.score for h in ours], [h.score for h in reference],
                               atol=1e-5)


def test_what_an_ensemble_refuses(ensemble_folder, tmp_path):
    with pytest.raises(config_lib.ConfigError, match="training.members must be positive"):
        config_lib.load(preset="tiny", overrides=["training.members=0"])
    with pytest.raises(config_lib.ConfigError, match="cannot fine-tune"):
        config_lib.load(preset="tiny", overrides=["training.members=2",
                                                  f"training.init_from={ensemble_folder}"])
    config = config_lib.load(preset="tiny", overrides=MEMBERS)
    with pytest.raises(RunFolderError, match="--continue extends one model's run"):
        train(config, ensemble_folder, more_epochs=1, log=quiet)
    with pytest.raises(ValueError, match="trains on one device"):
        train(config, tmp_path / "mirrored", strategy="mirrored", log=quiet)
    fine_tune = subprocess.run(
        [sys.executable, "train.py", "--init-from", str(ensemble_folder), "--output",
         str(tmp_path / "child"), "--set", "data.train_limit=100"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fine_tune.returncode == 2
    assert f"fine-tune one of them (--init-from {ensemble_folder / 'members' / '1'})" in \
        fine_tune.stderr


@pytest.mark.skipif(os.environ.get("TRANSLATOR_NATIVE") == "0",
                    reason="the export traces TensorFlow's own ops in both suites")
def test_an_exported_ensemble_translates_as_the_ensemble_on_the_plain_path(
        ensemble_folder, tmp_path):
    pytest.importorskip("tensorflow_text", reason="the export needs tensorflow-text ([export])")
    from translator import export
    from translator.model import PLAIN

    out = export.export(ensemble_folder, tmp_path / "exported" / "1")
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    served = serve(text=tf.constant(SOURCES))
    translator = Translator.load(ensemble_folder)
    translator.model.use_operations(PLAIN)
    expected = translator.translate(SOURCES, return_scores=True)
    assert [t.decode("utf-8") for t in served["translation"].numpy()] == \
        [h.text for h in expected]
    np.testing.assert_allclose(served["score"].numpy(), [h.score for h in expected], rtol=1e-6)


def test_an_ensemble_folder_that_is_incomplete_or_tampered_with_is_refused(
        ensemble_folder, tiny_model, tmp_path):
    import shutil

    import yaml

    from translator.model_folder import ModelFolderError

    folder = tmp_path / "copy"
    shutil.copytree(ensemble_folder, folder)
    weights = folder / "members" / "2" / "model.keras"
    original = weights.read_bytes()
    weights.unlink()
    with pytest.raises(ModelFolderError, match=r"members/2/model.keras is missing"):
        Translator.load(folder)
    outside = tmp_path / "outside.keras"
    outside.write_bytes(original)
    weights.symlink_to(outside)
    with pytest.raises(ModelFolderError, match="outside the model folder"):
        Translator.load(folder)
    weights.unlink()
    shutil.copy(tiny_model / "model.keras", weights)  # another architecture
    with pytest.raises(ModelFolderError, match="differs in attention, input_feeding"):
        Translator.load(folder)
    weights.write_bytes(original)
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw["training"]["members"] = 10 ** 9  # fails at the first missing member
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelFolderError, match=r"members/3/model.keras is missing"):
        Translator.load(folder)
