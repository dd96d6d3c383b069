"""The training input: batch planning, padding and the teacher-forcing shift, on real data."""

from __future__ import annotations

import numpy as np
import pytest

from translator.data.pipeline import TrainingBatches, encode_pairs, make_batch
from translator.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@pytest.fixture(scope="module")
def encoded(tiny_model, multi30k_slice):
    return encode_pairs(Tokenizer.load(tiny_model), multi30k_slice["train"])


def test_an_epoch_holds_every_pair_once_and_depends_only_on_seed_and_epoch(encoded):
    batches = TrainingBatches(encoded, batch_size=64, bucket_width=1, seed=7)
    plan = batches.epoch_plan(0)
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(encoded)))
    assert len(plan) == batches.steps_per_epoch
    again = TrainingBatches(encoded, batch_size=64, bucket_width=1, seed=7).epoch_plan(0)
    assert all((a == b).all() for a, b in zip(plan, again))
    other_epoch, other_seed = batches.epoch_plan(1), \
        TrainingBatches(encoded, 64, 1, seed=8).epoch_plan(0)
    for other in (other_epoch, other_seed):  # same pairs, different batches
        assert {tuple(sorted(b)) for b in other} != {tuple(sorted(b)) for b in plan}


def padding_share(encoded, plan, side: str) -> float:
    lengths = np.array([len(s) for s in getattr(encoded, side)])
    padded = sum(lengths[b].max() * len(b) for b in plan)
    return 1 - sum(lengths[b].sum() for b in plan) / padded


def test_batches_group_lengths_so_little_is_padding(encoded):
    """Sorted by target then source length: on 2,000 real pairs (3% measured), under 5% of
    the target positions (where the output layer and the loss run) are padding; a random
    batching of the same pairs pads far more."""
    plan = TrainingBatches(encoded, 64, bucket_width=1, seed=3).epoch_plan(0)
    rng = np.random.default_rng(0)
    random_plan = np.array_split(rng.permutation(len(encoded)), len(plan))
    assert padding_share(encoded, plan, "target") < 0.05
    assert padding_share(encoded, plan, "source") < padding_share(encoded, random_plan, "source")
    assert padding_share(encoded, random_plan, "target") > 0.3
    coarse = TrainingBatches(encoded, 64, bucket_width=4, seed=3).epoch_plan(0)
    assert padding_share(encoded, plan, "target") < padding_share(encoded, coarse, "target")


def test_teacher_forcing_shift(encoded):
    x, y = make_batch(encoded, np.array([0, 1]))
    for row in range(2):
        target = encoded.target[row]
        n = len(target)
        assert x["target_in"][row, 0] == BOS_ID
        np.testing.assert_array_equal(x["target_in"][row, 1:n + 1], target)
        np.testing.assert_array_equal(y[row, :n], target)
        assert y[row, n] == EOS_ID
        assert (y[row, n + 1:] == PAD_ID).all() and (x["target_in"][row, n + 1:] == PAD_ID).all()
        source = encoded.source[row]
        np.testing.assert_array_equal(x["source"][row, :len(source)], source)
        assert source[-1] == EOS_ID
