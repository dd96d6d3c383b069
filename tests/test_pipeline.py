"""The training input: batch planning, padding and the teacher-forcing shift, on real data."""

from __future__ import annotations

import numpy as np
import pytest

from translator.data.pipeline import SubwordSampler, TrainingBatches, encode_pairs, make_batch
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


def test_subword_sampling_draws_new_segmentations_each_epoch_that_decode_to_the_text(
        tiny_model, multi30k_slice):
    """Subword regularisation: each epoch segments the same pairs differently (seeded by the
    epoch, so a resumed run draws the same), every segmentation decodes to the original
    text, and the batches of an epoch are planned on that epoch's lengths."""
    tokenizer = Tokenizer.load(tiny_model)
    pairs = multi30k_slice["train"][:300]
    encoded = encode_pairs(tokenizer, pairs)
    sampler = SubwordSampler(tokenizer, pairs, encoded, alpha=0.2, nbest=-1, seed=5)
    batches = TrainingBatches(encoded, 32, 1, seed=5, resample=sampler)
    first, second = batches.epoch_data(0), batches.epoch_data(1)
    ids = lambda data: [s.tolist() for s in data.source]  # noqa: E731
    assert ids(first) != ids(second) and ids(first) != ids(encoded)
    assert ids(SubwordSampler(tokenizer, pairs, encoded, 0.2, -1, seed=5)(0)) == ids(first)
    for data in (first, second):
        assert len(data) == len(encoded)
        assert tokenizer.decode(data.target) == [t for _, t in pairs]
        assert tokenizer.decode([s[:-1] for s in data.source], "src") == [s for s, _ in pairs]
    assert sum(len(s) for s in first.source) > sum(len(s) for s in encoded.source)
    plan = batches.epoch_plan(1)
    assert len(plan) == batches.steps_per_epoch
    lengths = np.array([len(t) for t in second.target])
    planned_on_usual_lengths = TrainingBatches(encoded, 32, 1, seed=5).epoch_plan(1)
    assert padding_share(second, plan, "target") < padding_share(
        second, planned_on_usual_lengths, "target")
    x, y = make_batch(second, plan[0])
    assert y.shape[1] == lengths[plan[0]].max() + 1
