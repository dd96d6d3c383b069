"""Fine-tuning (train.py --init-from) and extending a finished run (train.py --continue),
on real Multi30k slices."""

from __future__ import annotations

import json
import shutil

import pytest

from translator.cli import train_main
from translator.data.corpus import load_corpus


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """Pairs the tiny model never saw (it trained on the first 2,000): 3,000 training
    pairs and a 100-pair dev set from the validation split, as a user's own files."""
    folder = tmp_path_factory.mktemp("other-data")
    train = load_corpus("multi30k", "train", "en", "de")[2000:5000]
    dev = load_corpus("multi30k", "val", "en", "de")[:100]
    files = {}
    for name, pairs in (("train", train), ("dev", dev)):
        for side, lang in ((0, "en"), (1, "de")):
            path = folder / f"{name}.{lang}"
            path.write_text("".join(p[side] + "\n" for p in pairs), encoding="utf-8")
            files[f"{name}_{lang}"] = str(path)
    return files


def own_files(files: dict) -> list[str]:
    return ["--train-src", files["train_en"], "--train-tgt", files["train_de"],
            "--dev-src", files["dev_en"], "--dev-tgt", files["dev_de"]]


def test_fine_tuning_starts_from_the_parent_and_raises_dev_bleu_on_the_new_data(
        tiny_model, other_data, tmp_path):
    child = tmp_path / "child"
    code = train_main(["--init-from", str(tiny_model), *own_files(other_data), "--output",
                       str(child), "--quiet", "--set", "training.epochs=2"])
    assert code == 0
    run = json.loads((child / "run.json").read_text())
    parent = run["parent"]
    assert parent["folder"] == str(tiny_model.resolve())
    scores = json.loads((child / "scores.json").read_text())
    # the parent's weights are the start (its BLEU on this dev set is not zero), and
    # two epochs on the new data raise it
    assert 0 < parent["dev_bleu_before"] < scores["dev"]["bleu"]["score"]
    assert (child / "spm.model").read_bytes() == (tiny_model / "spm.model").read_bytes()
    config = (child / "config.yaml").read_text()
    assert f"init_from: {tiny_model}" in config and "corpus: null" in config
    state = json.loads((child / "checkpoint" / "state.json").read_text())
    assert state["global_step"] == 2 * -(-3000 // 32)  # a fresh schedule: two epochs' steps
    assert state["lr_scale"] <= 1 and state["parent"] == parent


@pytest.mark.parametrize("extra, message", [
    (["--set", "tokenizer.vocab_size=700"], "tokenizer.vocab_size differ from the parent's"),
    (["--set", "model.decoder_units=32"], "model.decoder_units differ from the parent's"),
    (["--preset", "tiny"], "--preset sets a model's size"),
    (["--continue", "2"], "not both"),
])
def test_fine_tuning_refuses_another_model_or_tokenizer(tiny_model, other_data, tmp_path,
                                                        capsys, extra, message):
    code = train_main(["--init-from", str(tiny_model), *own_files(other_data), "--output",
                       str(tmp_path / "child"), "--quiet", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "child").exists()


def test_fine_tuning_from_a_folder_without_a_model_is_refused(tmp_path, other_data, capsys):
    assert train_main(["--init-from", str(tmp_path), *own_files(other_data), "--output",
                       str(tmp_path / "child")]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_continue_extends_a_finished_run_by_more_epochs(tiny_model, tmp_path, capsys):
    folder = shutil.copytree(tiny_model, tmp_path / "run")
    before = json.loads((folder / "checkpoint" / "state.json").read_text())
    assert before["finished"] and before["epoch"] == 3
    assert train_main(["--output", str(folder), "--continue", "1", "--quiet"]) == 0
    after = json.loads((folder / "checkpoint" / "state.json").read_text())
    assert after["epoch"] == 4 and after["finished"]
    steps_per_epoch = before["global_step"] // 3
    assert after["global_step"] == before["global_step"] + steps_per_epoch
    assert [row["epoch"] for row in after["history"]] == [1, 2, 3, 4]
    assert after["history"][:3] == before["history"]
    assert "resuming from step" in capsys.readouterr().out
    assert "epochs: 4" in (folder / "config.yaml").read_text()


def test_continue_needs_a_run(tmp_path, capsys):
    assert train_main(["--output", str(tmp_path / "none"), "--continue", "1"]) == 2
    assert "not a model folder" in capsys.readouterr().err
