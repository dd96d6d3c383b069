"""Distributed training (train.py --strategy, translator/train/distribute.py) on CPU:
MirroredStrategy over two logical CPU devices and MultiWorkerMirroredStrategy with two
worker processes on loopback ports train the tiny model 10 steps on a real Multi30k slice
and end where a one-device run with the same global batch and seed ends.

Tolerance: the weights after 10 steps within 1e-5 of the one-device run's (they differ in
the order the replicas' gradients are summed: 1.2e-7 measured), the epoch's training and
dev loss within 1e-4 (history.csv keeps four decimals). Dropout is off and the precision
float32, so the runs differ in nothing but how each step is split. clipnorm is 0.05, so
that clipping acts at every step: it must clip the summed gradient, not each replica's part.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from translator.cli import train_main
from translator.train import distribute

if os.environ.get("TRANSLATOR_NATIVE") == "0":
    pytest.skip("a strategy's replicas run TensorFlow's own ops in both suites: "
                "`make test` covers them", allow_module_level=True)

# argv: strategy, output folder. Prints the run's history as JSON on the last line.
RUN = """
import json, sys
import tensorflow as tf
strategy, output = sys.argv[1:]
if strategy == "mirrored":  # two logical CPU devices: MirroredStrategy's two replicas
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from translator import config as config_lib
from translator.train.run import train
config = config_lib.load(preset="tiny", overrides=[
    "training.epochs=1", "data.train_limit=320", "data.dev_limit=64", "model.dropout=0",
    "training.precision=float32", "training.clipnorm=0.05"])
result = train(config, output, verbose=0, log=lambda m: print(m, file=sys.stderr),
               strategy=strategy)
print(json.dumps(result.state.history))
"""
STEPS = 10  # 310 pairs (10 are over the tiny preset's 64 subwords) in batches of 32


def run(strategy: str, output: Path, env: dict | None = None, wait: bool = True):
    process = subprocess.Popen([sys.executable, "-c", RUN, strategy, str(output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env or dict(os.environ))
    return process.communicate(timeout=600) + (process.returncode,) if wait else process


def history(stdout: str) -> dict:
    (row,) = json.loads(stdout.strip().splitlines()[-1])
    return row


def weights(folder: Path) -> list[np.ndarray]:
    from translator import model_folder as mf

    return mf.load_weights(folder / mf.WEIGHTS_FILE).get_weights()


def assert_same_training(folder: Path, row: dict, reference: tuple[Path, dict]) -> None:
    ref_folder, ref_row = reference
    assert row["step"] == ref_row["step"] == STEPS
    for key in ("loss", "dev_loss"):
        assert row[key] == pytest.approx(ref_row[key], abs=1e-4), key
    for ours, theirs in zip(weights(folder), weights(ref_folder)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distribute") / "one-device"
    out, err, code = run("default", folder)
    assert code == 0, err[-3000:]
    return folder, history(out)


def test_mirrored_over_two_cpu_devices_ends_as_one_device(one_device, tmp_path):
    out, err, code = run("mirrored", tmp_path / "mirrored")
    assert code == 0, err[-3000:]
    assert "strategy: MirroredStrategy, 2 replicas; batches of 32 sentences split" in err
    assert_same_training(tmp_path / "mirrored", history(out), one_device)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_loopback_end_as_one_device_and_only_the_chief_writes(
        one_device, tmp_path):
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    output, temporaries = tmp_path / "multiworker", tmp_path / "tmp"
    temporaries.mkdir()
    processes = []
    for index in range(2):
        env = dict(os.environ, TMPDIR=str(temporaries), TF_CONFIG=json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}))
        processes.append(run("multiworker", output, env, wait=False))
    results = [p.communicate(timeout=600) + (p.returncode,) for p in processes]
    for index, (_, err, code) in enumerate(results):
        assert code == 0, f"worker {index}: {err[-3000:]}"
    chief, other = (history(out) for out, _, _ in results)
    assert "strategy: CollectiveAllReduceStrategy, 2 replicas" in results[0][1]
    assert_same_training(output, chief, one_device)
    assert other == {**chief, "minutes": other["minutes"]}  # the same steps, not a copy
    assert (output / "scores.json").is_file()
    assert list(temporaries.iterdir()) == [], "the worker's folder is removed"


def test_strategy_errors_are_clear(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.StrategyError, match="needs TF_CONFIG"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.StrategyError, match="not valid JSON"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {}, "task": {"type": "worker"}}))
    assert train_main(["--preset", "tiny", "--corpus", "multi30k", "--src", "en", "--tgt",
                       "de", "--output", str(tmp_path / "m"), "--strategy",
                       "multiworker"]) == 2
    assert "TF_CONFIG names no workers" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_model_built_under_a_strategy_runs_tensorflows_own_ops():
    """The kernels are CPU ops: under a strategy (replicas on any device) the plain path."""
    from translator.kernels import choose_operations
    from translator.model.operations import PLAIN

    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        assert choose_operations() is PLAIN
