"""Training on several devices or machines with tf.distribute (train.py --strategy).

- default: one device, TensorFlow's default strategy; the compiled kernels where they load.
- mirrored: tf.distribute.MirroredStrategy over this machine's GPUs, or its logical CPU
  devices when it has no GPU: one model replica per device, gradients summed each step.
- multiworker: tf.distribute.MultiWorkerMirroredStrategy across machines, configured by
  the TF_CONFIG environment variable as TensorFlow documents it; every worker runs the
  same train.py command.

What runs where: under mirrored and multiworker every op is TensorFlow's own (the plain
path of translator.model.operations), so each replica's ops go to its device; the
compiled kernels are CPU ops and run only with the default strategy on a machine without
a GPU (translator.kernels.choose_operations decides). The dev evaluation and the final
scores search on the first device of each worker.

Each step's global batch (training.batch_size sentences) is split between the replicas,
and the loss is scaled so that the summed gradient is the one-device gradient of the
whole batch: each replica divides its token losses by the batch's total number of target
tokens (translator.model.loss.global_tokens). Only the chief (worker 0, or the task named
chief) writes the model folder; the other workers write into a temporary folder they
delete at the end.
Every worker takes the same decisions at the same steps: the chief alone computes dev BLEU
and every worker reads its value (`from_chief`): the learning rate and early stopping
follow it; `agree` stops all at once where one worker's clock has spent the time budget.
A worker that dies ends the others' collectives with an error (TensorFlow's coordination
service notices its missing heartbeats); stop a run on every worker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multiworker")


class StrategyError(ValueError):
    """A strategy that cannot run here (e.g. multiworker without TF_CONFIG)."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy named by train.py --strategy."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":
        cluster = _tf_config()
        workers = cluster.get("cluster", {})
        if not isinstance(workers, dict) or not (workers.get("worker") or workers.get("chief")):
            raise StrategyError("TF_CONFIG names no workers: it needs a cluster with "
                                "'worker' addresses and this process's 'task'")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def _tf_config() -> dict[str, Any]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError("--strategy multiworker needs TF_CONFIG: the cluster's worker "
                            "addresses and this process's task, as TensorFlow documents it")
    try:
        config = json.loads(raw)
    except ValueError as err:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), dict):
        raise StrategyError("TF_CONFIG needs a 'task' with this process's type and index")
    return config


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True in the process that writes the model folder: the only one, except under
    multiworker, where it is the task of type chief, else worker 0."""
    return bool(strategy.extended.should_checkpoint)


def workers(strategy: tf.distribute.Strategy) -> int:
    """Processes taking part in training: 1 unless multiworker."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


_SUMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sum(strategy: tf.distribute.Strategy, value: float, first_only: bool = False) -> float:
    """value summed over every replica of every worker (all must call this together);
    first_only: only the first replica's value counts (it sits on the chief)."""
    compiled = _SUMS.setdefault(strategy, {})
    if first_only not in compiled:
        def own(value):
            if not first_only:
                return tf.identity(value)
            first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
            return tf.where(first, value, tf.zeros_like(value))

        @tf.function
        def total(value):
            per_replica = strategy.run(own, args=(value,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        compiled[first_only] = total
    return float(compiled[first_only](tf.constant(value, tf.float64)).numpy())


def agree(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """True if `flag` is True in any worker (each must call this at the same point); the
    flag itself where there is one worker."""
    if workers(strategy) == 1:
        return flag
    return _sum(strategy, 1.0 if flag else 0.0) > 0


def same_everywhere(strategy: tf.distribute.Strategy, value: int) -> bool:
    """True when every worker holds the same integer (e.g. the step it resumes from); a
    worker whose value is not the mean of all sees the difference, and agree() tells all."""
    if workers(strategy) == 1:
        return True
    total = _sum(strategy, float(value))
    return not agree(strategy, total != strategy.num_replicas_in_sync * float(value))


def from_chief(strategy: tf.distribute.Strategy, value: float) -> float:
    """The chief's value, in every worker (each must call this at the same point; only
    the chief's value counts): e.g. the dev BLEU, which only the chief computes, so that
    every worker takes the chief's learning-rate and stopping decisions."""
    return value if workers(strategy) == 1 else _sum(strategy, value, first_only=True)


@contextmanager
def worker_folder(output: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary model folder for a worker that is not the chief: empty, or where it
    sees `output` (a shared file system) and the run is not started over, a copy of the
    run in it to resume from. Deleted at the end."""
    root = Path(tempfile.mkdtemp(prefix="translator-worker-"))
    folder = root / output.name
    try:
        if output.is_dir() and not overwrite:
            shutil.copytree(output, folder, ignore=shutil.ignore_patterns("logs", "evaluations"))
        yield folder
    finally:
        shutil.rmtree(root, ignore_errors=True)
