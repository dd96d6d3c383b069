"""Training runs on real Multi30k slices: loss, resume after kill -9, refusals, the folder."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from translator import config as config_lib
from translator.train.run import RunFolderError, train

ROOT = Path(__file__).resolve().parent.parent
# A run small enough to train twice in a test: 19 steps per epoch, 2 epochs.
SMALL = ["data.train_limit=600", "data.dev_limit=20", "training.epochs=2",
         "training.checkpoint_every=4", "decoding.beam=1"]


def small_config(*extra: str) -> config_lib.Config:
    return config_lib.load(preset="tiny", overrides=SMALL + list(extra))


def cli_train(output: Path, *extra: str, **kwargs) -> subprocess.Popen:
    args = [sys.executable, "train.py", "--preset", "tiny", "--output", str(output), "--quiet"]
    for item in SMALL + list(extra):
        args += ["--set", item]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def wait_for_checkpoint(process: subprocess.Popen, state_file: Path, step: int) -> None:
    """Returns once the run has checkpointed at `step` or later (or ended, or 2 minutes)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if state_file.exists() and json.loads(state_file.read_text())["global_step"] >= step:
            return
        time.sleep(0.05)


def last_checkpoint(folder: Path) -> keras.Model:
    state = json.loads((folder / "checkpoint" / "state.json").read_text())
    return keras.saving.load_model(folder / "checkpoint" / state["checkpoint"])


def test_tiny_preset_loss_goes_down(tiny_model):
    with open(tiny_model / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.2, losses
    assert float(rows[-1]["dev_loss"]) < float(rows[0]["dev_loss"])


def test_killed_run_resumes_at_its_step_and_matches_an_uninterrupted_run(tmp_path):
    whole = train(small_config(), tmp_path / "whole", verbose=0, log=lambda m: None)

    broken = tmp_path / "broken"
    process = cli_train(broken)
    state_file = broken / "checkpoint" / "state.json"
    wait_for_checkpoint(process, state_file, step=8)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state_file.read_text())["global_step"]
    assert 0 < killed_at < whole.state.global_step, "the kill must land inside the run"

    resumed = cli_train(broken)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"resuming from step {killed_at} of {broken}" in output

    last = last_checkpoint(broken)
    assert int(last.optimizer.iterations.numpy()) == whole.state.global_step == 2 * 19
    reference = last_checkpoint(tmp_path / "whole")
    # Same seed, same batches (planned from the seed and epoch), the dropout generator's
    # state is saved with the checkpoint, and CPU kernels are deterministic here.
    for a, b in zip(last.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# Where a run can be killed (translator/faults.py), in the order one run reaches them;
# "checkpoint-write:2" is the second checkpoint, so that the first is a complete one.
CRASH_POINTS = ["tokenizer-saved", "checkpoint-write:2", "dev-evaluation", "best-model-write",
                "final-scores"]


def assert_whole_files(folder: Path, point: str) -> None:
    """Every file under its final name is complete: what exists loads."""
    from translator.model_folder import read_config
    from translator.train.state import RunState
    from translator.translator import Translator

    read_config(folder)
    if (folder / "checkpoint" / "state.json").exists():
        RunState.load(folder / "checkpoint")
        last_checkpoint(folder)
    if (folder / "model.keras").exists():
        assert Translator.load(folder).translate("A dog runs.", beam=1) is not None, point
    for name in ("scores.json", "run.json"):
        if (folder / name).exists():
            json.loads((folder / name).read_text())


def test_run_killed_at_every_crash_point_in_turn_ends_as_an_uninterrupted_run(tmp_path):
    whole = train(small_config(), tmp_path / "whole", verbose=0, log=lambda m: None)

    folder = tmp_path / "killed"
    for point in CRASH_POINTS:
        process = cli_train(folder, env={**os.environ, "TRANSLATOR_CRASH_AT": point})
        output, _ = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, f"not killed at {point}:\n{output}"
        assert not (folder / "scores.json").exists(), point  # the run never got that far
        assert_whole_files(folder, point)

    resumed = cli_train(folder)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert_whole_files(folder, "the end")
    assert not list(folder.rglob(".tmp-*")), "the killed runs' temporaries are cleaned up"
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["dev"]["bleu"]["score"] == whole.scores["dev"]["bleu"]["score"]
    done = keras.saving.load_model(folder / "model.keras", compile=False)
    reference = keras.saving.load_model(tmp_path / "whole" / "model.keras", compile=False)
    for a, b in zip(done.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_run_that_failed_before_training_leaves_the_folder_to_a_corrected_command(
        tmp_path, monkeypatch):
    from translator.data.tokenizer import Tokenizer, TokenizerError

    def failing(*args, **kwargs):
        raise TokenizerError("SentencePiece training failed: (as for too large a vocabulary)")

    folder = tmp_path / "model"
    with monkeypatch.context() as patch:
        patch.setattr(Tokenizer, "train", failing)
        with pytest.raises(TokenizerError):
            train(small_config("tokenizer.vocab_size=900"), folder, verbose=0, log=print)
    assert (folder / "config.yaml").exists() and not (folder / "checkpoint").exists()
    result = train(small_config("training.epochs=1"), folder, verbose=0, log=lambda m: None)
    assert result.state.global_step == 19 and (folder / "model.keras").exists()


def test_unknown_config_key_is_refused_by_name(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--preset", "tiny", "--output",
                             str(tmp_path / "m"), "--set", "model.colour=blue"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown config key 'model.colour'" in result.stderr
    assert not (tmp_path / "m").exists()


def test_impossible_value_is_refused_by_name():
    with pytest.raises(config_lib.ConfigError, match="model.dropout"):
        small_config("model.dropout=1.5")


def test_folder_with_a_different_run_is_refused_unless_overwrite(tiny_model, tiny_config):
    other = config_lib.load(preset="tiny", overrides=["training.epochs=3",
                                                      "model.decoder_units=32"])
    with pytest.raises(RunFolderError, match=r"different run \(differs in model.decoder_units"):
        train(other, tiny_model, verbose=0, log=lambda m: None)


def test_resuming_with_a_different_tokenizer_is_refused(tiny_model):
    other = config_lib.load(preset="tiny", overrides=["training.epochs=3",
                                                      "tokenizer.vocab_size=700"])
    with pytest.raises(RunFolderError, match="different tokenizer or vocabulary"):
        train(other, tiny_model, verbose=0, log=lambda m: None)


def test_non_empty_folder_without_a_run_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty and holds no model"):
        train(small_config(), tmp_path, verbose=0, log=lambda m: None)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_model_folder_is_complete(tiny_model):
    for name in ("config.yaml", "spm.model", "model.keras", "history.csv", "scores.json",
                 "run.json", "checkpoint/state.json"):
        assert (tiny_model / name).exists(), name
    run = json.loads((tiny_model / "run.json").read_text())
    assert run["seed"] == 1234 and run["versions"]["tensorflow"]
    assert run["data_files"]["multi30k/train.en.gz"].startswith("d79cfa99")
    assert [p.name for p in (tiny_model / "checkpoint").glob("step-*.keras")] == ["step-186.keras"]
    assert not [p for p in tiny_model.rglob(".*") if p.is_file()], "temporary files left"


def test_folder_loads_in_a_fresh_process_and_reproduces_its_dev_bleu(tiny_model):
    recorded = json.loads((tiny_model / "scores.json").read_text())["dev"]
    script = (
        "import json, sys\n"
        "from translator.translator import Translator\n"
        "from translator import metrics\n"
        "from translator.data import corpus\n"
        "t = Translator.load(sys.argv[1])\n"
        "dev = corpus.load_corpus('multi30k', 'val', 'en', 'de')[:100]\n"
        "hyps = t.translate([s for s, _ in dev], beam=int(sys.argv[2]))\n"
        "print(json.dumps(metrics.evaluate(hyps, [r for _, r in dev], 'de', metrics.BOOTSTRAP)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tiny_model),
                             str(recorded["beam"])], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert recorded["sentences"] == 100
    reproduced = json.loads(result.stdout.strip().splitlines()[-1])
    assert reproduced["chrf"]["score"] > 0  # a tiny model's BLEU may be 0; chrF is not
    for metric in ("bleu", "bleu_lowercase", "chrf", "ter"):
        assert reproduced[metric] == recorded[metric]


def test_progress_bar_counts_the_run_s_epochs_and_ends_its_line_before_the_epoch_log(
        tmp_path, capsys):
    """With the progress bar on, each epoch's dev BLEU line starts a line of its own (it
    used to continue the bar's last line: '... loss: 3.9881epoch 2: dev BLEU 21.72'), and
    the bar counts epochs out of the run's (it read 'Epoch 2/2': fit runs one epoch at a
    time)."""
    train(small_config(), tmp_path / "m", verbose=1, log=print)
    lines = capsys.readouterr().out.splitlines()
    bleu_lines = [line for line in lines if "dev BLEU" in line]
    assert [line[:18] for line in bleu_lines] == ["epoch 1: dev BLEU ", "epoch 2: dev BLEU "]
    assert [line for line in lines if line.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"]
    assert any("loss:" in line for line in lines)  # the bar did print


def test_run_stopped_in_its_epoch_end_work_finishes_that_epoch_on_resume(tmp_path):
    folder = tmp_path / "m"
    train(small_config("training.epochs=1"), folder, verbose=0, log=lambda m: None)
    state_file = folder / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    # As if Ctrl-C had landed after the last batch but before the epoch-end evaluation.
    state.update(epoch=0, step_in_epoch=19, finished=False, history=[], best_bleu=-1.0)
    state_file.write_text(json.dumps(state))
    messages = []
    result = train(small_config("training.epochs=1"), folder, verbose=0, log=messages.append)
    assert any(m.startswith("resuming from step 19 of") for m in messages)
    assert result.state.global_step == 19 and result.state.epoch == 1
    assert [row["epoch"] for row in result.state.history] == [1]


def test_average_of_last_epochs_is_evaluated_and_kept_if_better(tmp_path):
    messages = []
    result = train(small_config("training.average_last=2"), tmp_path / "m", verbose=0,
                   log=messages.append)
    assert any(m.startswith("average of the last 2 epochs: dev BLEU") for m in messages)
    kept = sorted(p.name for p in (tmp_path / "m" / "checkpoint").glob("epoch-*.weights.h5"))
    assert kept == ["epoch-1.weights.h5", "epoch-2.weights.h5"]
    assert round(result.best_dev_bleu, 2) >= max(row["dev_bleu"] for row in result.state.history)


def test_overwrite_never_deletes_a_folder_that_holds_no_model(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(RunFolderError, match="holds no model"):
        train(small_config(), tmp_path, overwrite=True, verbose=0, log=lambda m: None)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_resuming_on_changed_data_is_refused(tmp_path, multi30k_slice):
    src, tgt = tmp_path / "train.en", tmp_path / "train.de"
    pairs = multi30k_slice["train"][:1200]
    src.write_text("\n".join(s for s, _ in pairs) + "\n")
    tgt.write_text("\n".join(t for _, t in pairs) + "\n")
    own = ["data.corpus=null", f"data.train_src={src}", f"data.train_tgt={tgt}",
           "training.epochs=1"]
    train(small_config(*own), tmp_path / "m", verbose=0, log=lambda m: None)
    tgt.write_text("\n".join(t.upper() for _, t in pairs) + "\n")
    with pytest.raises(RunFolderError, match="trained on other data"):
        train(small_config(*own, "training.epochs=2"), tmp_path / "m", verbose=0,
              log=lambda m: None)


def test_rerunning_a_finished_run_says_so_and_trains_no_more(tiny_model, tiny_config):
    before = json.loads((tiny_model / "checkpoint" / "state.json").read_text())["global_step"]
    messages = []
    result = train(tiny_config, tiny_model, verbose=0, log=messages.append)
    assert any(m.startswith(f"{tiny_model} is finished (reached 3 epochs") for m in messages)
    assert result.state.global_step == before


def default_sigint() -> None:
    """In the child: Ctrl-C's default action back. A shell starts background jobs (`&`)
    with SIGINT ignored, and Python then never raises KeyboardInterrupt: without this
    the test fails whenever the suite itself runs in the background."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_saves_a_checkpoint_at_the_current_step(tmp_path):
    folder = tmp_path / "m"
    process = cli_train(folder, preexec_fn=default_sigint)
    state_file = folder / "checkpoint" / "state.json"
    wait_for_checkpoint(process, state_file, step=4)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    state = json.loads(state_file.read_text())
    assert f"interrupted at step {state['global_step']}; run the same command" in output
    model = last_checkpoint(folder)
    assert int(model.optimizer.iterations.numpy()) == state["global_step"] >= 4
