"""Training input: encode once, batch by length, pad, shift targets, feed through tf.data.

Batches are planned in NumPy from a seed and the epoch number, so the batch at any
(epoch, step) is known in advance: a resumed run continues from the exact batch where
it stopped, which tf.data's own shuffle buffers cannot promise. tf.data then pads
nothing on the hot path (arrays are padded once per batch here) and prefetches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from translator.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@dataclass
class EncodedPairs:
    """Token ids of parallel sentences; source ends with EOS, target has neither BOS nor EOS."""

    source: list[np.ndarray]
    target: list[np.ndarray]
    dropped_too_long: int = 0
    kept: list[int] = field(default_factory=list)  # which of the encoded pairs these are

    def __len__(self) -> int:
        return len(self.source)

    @property
    def target_tokens(self) -> int:
        """Target tokens the loss sees per epoch (EOS included)."""
        return sum(len(t) + 1 for t in self.target)


def encode_pairs(
    tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], max_tokens: int | None = None
) -> EncodedPairs:
    """Encodes once; with max_tokens, pairs with a longer side are dropped and counted."""
    src = tokenizer.encode([s for s, _ in pairs], side="src")
    tgt = tokenizer.encode([t for _, t in pairs], side="tgt")
    keep = [
        i for i in range(len(src))
        if max_tokens is None or (len(src[i]) + 1 <= max_tokens and len(tgt[i]) + 1 <= max_tokens)
    ]
    return _arrays(src, tgt, keep, dropped=len(src) - len(keep))


def _arrays(src: list[list[int]], tgt: list[list[int]], keep: list[int], dropped: int
            ) -> EncodedPairs:
    return EncodedPairs(
        source=[np.asarray(src[i] + [EOS_ID], np.int32) for i in keep],
        target=[np.asarray(tgt[i], np.int32) for i in keep],
        dropped_too_long=dropped, kept=keep,
    )


class SubwordSampler:
    """Each epoch's training pairs in newly drawn segmentations (subword regularisation).

    `sampler(epoch)` encodes the pairs that `encoded` kept (its length filter used the
    usual, most likely segmentation) with Tokenizer.sample, seeded by (seed, epoch): a
    resumed run draws the same segmentations again. A pair whose drawn segmentation has
    a side longer than max_tokens keeps its usual one (sampled segmentations are longer:
    a smaller alpha, longer sequences, slower steps). Translation always encodes the
    source the usual way.
    """

    def __init__(self, tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]],
                 encoded: EncodedPairs, alpha: float, nbest: int, seed: int,
                 max_tokens: int | None = None) -> None:
        if len(encoded.kept) != len(encoded):
            raise ValueError("SubwordSampler needs the EncodedPairs that encode_pairs made")
        self.tokenizer, self.alpha, self.nbest, self.seed = tokenizer, alpha, nbest, seed
        self.usual, self.max_tokens = encoded, max_tokens
        self.sources = [pairs[i][0] for i in encoded.kept]
        self.targets = [pairs[i][1] for i in encoded.kept]

    def __call__(self, epoch: int) -> EncodedPairs:
        seed = int(np.random.default_rng([self.seed, epoch]).integers(2**31 - 1))
        src = self.tokenizer.sample(self.sources, "src", self.alpha, self.nbest, seed)
        tgt = self.tokenizer.sample(self.targets, "tgt", self.alpha, self.nbest, seed + 1)
        sampled = _arrays(src, tgt, list(range(len(src))), dropped=0)
        if self.max_tokens is not None:
            for i, (s, t) in enumerate(zip(sampled.source, sampled.target)):
                if len(s) > self.max_tokens or len(t) + 1 > self.max_tokens:
                    sampled.source[i] = self.usual.source[i]
                    sampled.target[i] = self.usual.target[i]
        return sampled


def encode_sources(tokenizer: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Source ids as the model expects them (EOS appended)."""
    return [np.asarray(ids + [EOS_ID], np.int32) for ids in tokenizer.encode(texts, side="src")]


def pad(sequences: Sequence[np.ndarray], prefix: int | None = None, suffix: int | None = None
        ) -> np.ndarray:
    """Right-pads id arrays with PAD_ID into int32 [len(sequences), longest (+1 per affix)]."""
    extra = (prefix is not None) + (suffix is not None)
    out = np.full((len(sequences), max(len(s) for s in sequences) + extra), PAD_ID, np.int32)
    for row, seq in enumerate(sequences):
        start = int(prefix is not None)
        if prefix is not None:
            out[row, 0] = prefix
        out[row, start:start + len(seq)] = seq
        if suffix is not None:
            out[row, start + len(seq)] = suffix
    return out


def plan_batches(
    source_lengths: np.ndarray, target_lengths: np.ndarray, batch_size: int, bucket_width: int,
    seed: int, epoch: int,
) -> list[np.ndarray]:
    """Index arrays of one epoch's batches, deterministic in (seed, epoch).

    Examples are shuffled, then sorted (stably, so ties stay shuffled) by target length
    and then source length, each rounded down to a multiple of bucket_width; consecutive
    runs of batch_size form the batches, which are shuffled. With bucket_width 1 a batch
    holds little padding: the output projection and the loss, the costliest part of a
    step, run almost only on real tokens. Every example appears exactly once.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(target_lengths))
    keys = (source_lengths[order] // bucket_width, target_lengths[order] // bucket_width)
    order = order[np.lexsort(keys)]  # the last key is the primary one
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def make_batch(data: EncodedPairs, indices: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Teacher forcing: ({source [b, S], target_in [b, T]}, target_out [b, T]); BOS y / y EOS."""
    targets = [data.target[i] for i in indices]
    return (
        {"source": pad([data.source[i] for i in indices]),
         "target_in": pad(targets, prefix=BOS_ID)},
        pad(targets, suffix=EOS_ID),
    )


class TrainingBatches:
    """The batches of every epoch, planned ahead so a run can resume at any step.

    With `resample` (a SubwordSampler), each epoch's pairs are resampled(epoch), and
    batched by their lengths in that segmentation.
    """

    def __init__(self, data: EncodedPairs, batch_size: int, bucket_width: int, seed: int,
                 resample: Callable[[int], EncodedPairs] | None = None) -> None:
        if len(data) == 0:
            raise ValueError("no training pairs left after cleaning and length filtering")
        self.data, self.batch_size, self.resample = data, batch_size, resample
        self.bucket_width, self.seed = bucket_width, seed
        self.steps_per_epoch = -(-len(data) // batch_size)
        self._sampled: tuple[int, EncodedPairs] | None = None
        # a finished epoch's dataset may still be prefetching into the next epoch while
        # the next one's generator starts: one resampling at a time, kept for both
        self._lock = threading.Lock()

    def epoch_data(self, epoch: int) -> EncodedPairs:
        if self.resample is None:
            return self.data
        with self._lock:
            if self._sampled is None or self._sampled[0] != epoch:
                sampled = self.resample(epoch)
                if len(sampled) != len(self.data):
                    raise ValueError(f"resampling gave {len(sampled)} pairs, not {len(self.data)}")
                self._sampled = (epoch, sampled)
            return self._sampled[1]

    def epoch_plan(self, epoch: int, data: EncodedPairs | None = None) -> list[np.ndarray]:
        """The epoch's batches (index arrays), planned on the lengths of its pairs."""
        data = self.epoch_data(epoch) if data is None else data
        source_lengths = np.array([len(s) for s in data.source])
        target_lengths = np.array([len(t) + 1 for t in data.target])  # EOS / BOS added
        return plan_batches(source_lengths, target_lengths, self.batch_size,
                            self.bucket_width, self.seed, epoch)

    def _generate(self, first_epoch: int, skip: int) -> Iterator:
        epoch = first_epoch
        while True:
            data = self.epoch_data(epoch)
            for indices in self.epoch_plan(epoch, data)[skip:]:
                yield make_batch(data, indices)
            epoch, skip = epoch + 1, 0

    def dataset(self, first_epoch: int = 0, skip: int = 0) -> tf.data.Dataset:
        """Endless batches from (first_epoch, step skip) onwards, prefetched."""
        return batches_dataset(lambda: self._generate(first_epoch, skip))


PREFETCH_BATCHES = 4  # a batch takes milliseconds to make and a training step ~100 ms


def batches_dataset(generate: Callable[[], Iterator]) -> tf.data.Dataset:
    """tf.data over a generator of make_batch() results, prefetched."""
    ids = tf.TensorSpec([None, None], tf.int32)
    spec = ({"source": ids, "target_in": ids}, ids)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)
    # under MultiWorkerMirroredStrategy each worker takes its part of every batch (there
    # are no files to shard by): the global batch is split, not dealt out whole
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotuning: training makes a new iterator every epoch, and with an autotuned
    # prefetch, dropping one can stall for 20-25 s with both cores idle, waiting in the
    # iterator's destructor for a tf.data thread (TensorFlow 2.21; in about one
    # epoch in four of the `base` preset, 0.4 minutes each)
    options.autotune.enabled = False
    return dataset.with_options(options).prefetch(PREFETCH_BATCHES)


def eval_batches(data: EncodedPairs, batch_size: int = 64) -> list:
    """Fixed, in-order batches (for dev loss)."""
    return [make_batch(data, np.arange(i, min(i + batch_size, len(data))))
            for i in range(0, len(data), batch_size)]
