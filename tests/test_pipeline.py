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


def test_the_dataset_feeds_the_planned_batches_in_order_and_goes_on_to_the_next_epoch(encoded):
    """tf.data adds prefetching only, with autotuning off: training makes an iterator per
    epoch, and with an autotuned prefetch, dropping one can stall for 20-25 s with both
    cores idle (translator.data.pipeline.batches_dataset)."""
    batches = TrainingBatches(encoded, batch_size=64, bucket_width=1, seed=5)
    dataset = batches.dataset(0, 0)
    assert dataset.options().autotune.enabled is False
    plans = batches.epoch_plan(0) + batches.epoch_plan(1)[:2]
    fed = list(dataset.take(len(plans)).as_numpy_iterator())
    for indices, (x, y) in zip(plans, fed, strict=True):
        expected_x, expected_y = make_batch(encoded, indices)
        np.testing.assert_array_equal(x["source"], expected_x["source"])
        np.testing.assert_array_equal(x["target_in"], expected_x["target_in"])
        np.testing.assert_array_equal(y, expected_y)


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


def test_a_resumed_run_sees_the_same_sampled_batches_and_long_samples_fall_back(
        tiny_model, multi30k_slice):
    """Resuming at (epoch 1, step 3) gives the batches an uninterrupted run gives there,
    from a fresh TrainingBatches (as after a restart). With max_tokens, a pair whose
    drawn segmentation is too long keeps its usual one."""
    tokenizer = Tokenizer.load(tiny_model)
    pairs = multi30k_slice["train"][:200]
    encoded = encode_pairs(tokenizer, pairs)

    def batches():
        sampler = SubwordSampler(tokenizer, pairs, encoded, alpha=0.1, nbest=-1, seed=3)
        return TrainingBatches(encoded, 32, 1, seed=3, resample=sampler)

    steps = batches().steps_per_epoch
    whole = list(batches().dataset(0, 0).take(2 * steps).as_numpy_iterator())
    resumed = list(batches().dataset(1, 3).take(steps - 3).as_numpy_iterator())
    for (x, y), (rx, ry) in zip(whole[steps + 3:], resumed):
        np.testing.assert_array_equal(x["source"], rx["source"])
        np.testing.assert_array_equal(ry, y)
    limit = int(np.percentile([len(s) for s in encoded.source], 90))
    capped = SubwordSampler(tokenizer, pairs, encoded, 0.1, -1, seed=3, max_tokens=limit)(0)
    free = SubwordSampler(tokenizer, pairs, encoded, 0.1, -1, seed=3)(0)
    fell_back = [i for i in range(len(free)) if len(free.source[i]) > limit
                 or len(free.target[i]) + 1 > limit]
    assert fell_back
    for i in range(len(free)):
        expected = encoded if i in fell_back else free
        np.testing.assert_array_equal(capped.source[i], expected.source[i])
        np.testing.assert_array_equal(capped.target[i], expected.target[i])
