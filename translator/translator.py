"""The Python API: load a model folder once, translate strings, lists, streams and files.

The command line and batch file translation are thin shells over this class, so all
three produce the same output for the same options.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from translator import search
from translator import config as config_lib
from translator.config import Config, DecodingConfig
from translator.model import SHARED_KEYS, STATIC_KEYS, Seq2Seq
from translator.data.pipeline import encode_sources, pad
from translator.data.tokenizer import Tokenizer

# Inputs longer than this many subwords are split at sentence boundaries (then, if a
# sentence alone is still longer, at the last space before the limit) and the pieces'
# translations joined: nothing is cut. Training drops pairs over data.max_tokens.
MAX_INPUT_TOKENS = 200
STREAM_CHUNK_BATCHES = 8  # a stream is read this many batches at a time (constant memory)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")


@dataclass
class Hypothesis:
    """One translation with its score (length-normalised log-probability for beam search)."""

    text: str
    score: float
    tokens: list[str] = field(default_factory=list)
    attention: np.ndarray | None = None  # [target tokens, source tokens (EOS included)]
    source_tokens: list[str] = field(default_factory=list)


class Translator:
    """Translate with a trained model; `Translator.load(folder)` reads a model folder once."""

    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer, config: Config) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self._compiled: dict[tuple, tf.types.experimental.GenericFunction] = {}

    @classmethod
    def load(cls, folder: Path | str) -> Translator:
        from translator.model_folder import load_model_folder

        return cls(*load_model_folder(folder))

    # ---- public API -----------------------------------------------------------------

    def translate(self, text: str | Sequence[str], **options) -> str | list | Hypothesis:
        """Translates one string or a list of strings.

        Options (defaults from the model's decoding config): beam (1 = greedy), nbest,
        length_penalty, max_len_ratio, max_len_offset, batch_size, return_scores,
        return_attention. Plain strings come back unless scores, attention or nbest > 1
        are asked for; then Hypothesis objects (a list of them per input with nbest > 1).
        """
        if isinstance(text, str):
            return self.translate([text], **options)[0]
        return list(self.translate_stream(text, **options))

    def stream_chunk(self, options: dict) -> int:
        """Lines translated together by translate_stream: sorted by length into batches."""
        return self._settings(options)[0].batch_size * STREAM_CHUNK_BATCHES

    def translate_stream(self, lines: Iterable[str], **options) -> Iterator:
        """Translates an iterator of lines lazily, one chunk of batches at a time, in order.

        Options are checked at once (not at the first result)."""
        settings, want_objects = self._settings(options)
        return self._stream(lines, settings, want_objects, options)

    def _stream(self, lines: Iterable[str], settings: DecodingConfig, want_objects: bool,
                options: dict) -> Iterator:
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= settings.batch_size * STREAM_CHUNK_BATCHES:
                yield from self._translate_chunk(chunk, settings, want_objects, options)
                chunk = []
        if chunk:
            yield from self._translate_chunk(chunk, settings, want_objects, options)

    def translate_file(self, src: Path | str, dst: Path | str, errors: str = "strict",
                       progress: bool = True, shard: tuple[int, int] | None = None,
                       **options) -> int:
        """Translates a file line by line into dst (atomically); returns the line count.
        shard=(i, n): only the i-th (from 1) of n contiguous shards (translator.files)."""
        from translator.files import translate_file

        return translate_file(self, src, dst, errors=errors, progress=progress, shard=shard,
                              **options)

    # ---- internals ------------------------------------------------------------------

    def _settings(self, options: dict) -> tuple[DecodingConfig, bool]:
        known = {"beam", "nbest", "length_penalty", "max_len_ratio", "max_len_offset",
                 "batch_size", "return_scores", "return_attention"}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown translate option(s): {', '.join(sorted(unknown))}")
        values = {k: options[k] for k in known - {"return_scores", "return_attention"}
                  if options.get(k) is not None}
        settings = replace(self.config.decoding, **values)
        config_lib.validate(replace(self.config, decoding=settings))  # ConfigError names it
        want_objects = bool(options.get("return_scores") or options.get("return_attention")
                            or settings.nbest > 1)
        return settings, want_objects

    def _translate_chunk(self, lines: list[str], settings: DecodingConfig, want_objects: bool,
                         options: dict) -> list:
        pieces, owners = [], []  # source ids [tokens + EOS] of each piece, and its line
        stripped = [line.strip() for line in lines]
        for index, (line, ids) in enumerate(zip(stripped, encode_sources(self.tokenizer,
                                                                         stripped))):
            if not line:
                continue  # a blank line: no piece, an empty translation
            split = [ids] if len(ids) <= MAX_INPUT_TOKENS else encode_sources(
                self.tokenizer, self._split(line))
            pieces.extend(split)
            owners.extend([index] * len(split))
        results = self._translate_pieces(pieces, settings, bool(options.get("return_attention")))
        per_line: list[list[list[Hypothesis]]] = [[] for _ in lines]
        for owner, nbest in zip(owners, results):
            per_line[owner].append(nbest)
        out = []
        for parts in per_line:
            joined = self._join(parts, settings.nbest)
            if not want_objects:
                out.append(joined[0].text)
            else:
                out.append(joined if settings.nbest > 1 else joined[0])
        return out

    def _split(self, line: str) -> list[str]:
        """A long line split so that no piece exceeds MAX_INPUT_TOKENS subwords."""
        pieces = []
        for sentence in filter(None, _SENTENCE_END.split(line)):
            pieces.extend(self._split_at_spaces(sentence))
        return pieces

    def _split_at_spaces(self, text: str) -> list[str]:
        """Pieces under MAX_INPUT_TOKENS, cut between words; a 'word' that is itself too
        long (unsegmented scripts such as Chinese have no spaces) is cut every 100 chars."""
        words = []
        for word in text.split(" "):
            if len(self.tokenizer.encode([word])[0]) < MAX_INPUT_TOKENS:
                words.append(word)
            else:
                words.extend(word[i:i + 100] for i in range(0, len(word), 100))
        pieces, current = [], ""
        for word in words:
            candidate = f"{current} {word}" if current else word
            if current and len(self.tokenizer.encode([candidate])[0]) >= MAX_INPUT_TOKENS:
                pieces.append(current)
                candidate = word
            current = candidate
        return pieces + [current] if current else pieces

    def _join(self, parts: list[list[Hypothesis]], nbest: int) -> list[Hypothesis]:
        """Joins a split line's pieces back: the k-th joined hypothesis joins each piece's
        k-th best; attention becomes block-diagonal. Blank lines give ''."""
        if not parts:
            return [Hypothesis("", 0.0) for _ in range(nbest)]
        if len(parts) == 1:
            return parts[0]
        joiner = "" if _is_cjk(parts[0][0].text) else " "
        joined = []
        for k in range(len(parts[0])):
            pieces = [p[min(k, len(p) - 1)] for p in parts]
            joined.append(Hypothesis(
                joiner.join(h.text for h in pieces), float(sum(h.score for h in pieces)),
                [t for h in pieces for t in h.tokens], _block_diagonal(pieces),
                [t for h in pieces for t in h.source_tokens]))
        return joined

    def _translate_pieces(self, sources: list[np.ndarray], settings: DecodingConfig,
                          attention: bool) -> list[list[Hypothesis]]:
        """Source ids (each [tokens + EOS]) sorted by length, batched, searched, restored
        to input order: an n-best list per source."""
        if not sources:
            return []
        order = np.argsort([len(s) for s in sources], kind="stable")
        results: list[list[Hypothesis]] = [[] for _ in sources]
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            hyps = self._search_batch([sources[i] for i in batch], settings, attention)
            for i, nbest in zip(batch, hyps):
                results[i] = nbest
        return results

    def _search_batch(self, sources: list[np.ndarray], settings: DecodingConfig,
                      attention: bool) -> list[list[Hypothesis]]:
        lengths = np.array([len(s) for s in sources], np.int32)
        max_lengths = search.max_output_lengths(lengths, settings.max_len_ratio,
                                                settings.max_len_offset)
        fn = self._search_function(settings.beam, settings.nbest, settings.length_penalty,
                                   attention)
        result = fn(tf.constant(pad(sources)), max_lengths)
        tokens, lens, scores = result.tokens.numpy(), result.lengths.numpy(), result.scores.numpy()
        att = result.attention.numpy() if attention else None
        out = []
        for b, source in enumerate(sources):
            nbest = []
            for k in range(tokens.shape[1]):
                ids = tokens[b, k, :lens[b, k]].tolist()
                hyp = Hypothesis(self.tokenizer.decode([ids])[0], float(scores[b, k]),
                                 self.tokenizer.pieces(ids))
                if att is not None:
                    hyp.attention = att[b, k, :lens[b, k], :len(source)]
                    hyp.source_tokens = self.tokenizer.pieces(source.tolist(), side="src")
                nbest.append(hyp)
            out.append(nbest)
        return out

    def _search_function(self, beam: int, nbest: int, alpha: float, attention: bool):
        """A compiled search per option set; traced once per set, for any batch shape."""
        key = (beam, nbest, float(alpha), attention)
        if key not in self._compiled:
            spec = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]
            self._compiled[key] = tf.function(
                lambda src, max_len: self._search(src, max_len, beam, nbest, alpha, attention),
                input_signature=spec, reduce_retracing=True)
        return self._compiled[key]

    def _search(self, source, max_lengths, beam: int, nbest: int, alpha: float, attention: bool):
        """Encodes once, then runs the search loop; the memory stays one row per sentence
        (the attention reads it for all of a sentence's hypotheses at once) and is never
        cut: the attention reads the rows of the sentences still searched."""
        _, _, state = self.model.encode(source, training=False, for_search=True)
        sentences = {k: state[k] for k in STATIC_KEYS}
        dynamic = {k: v for k, v in state.items() if k not in STATIC_KEYS + SHARED_KEYS}
        shared = {k: state[k] for k in SHARED_KEYS}

        def step(tokens, carry, sentences, rows=None):
            state = {**carry, **sentences, **shared}
            if rows is not None:
                state["sentence_rows"] = rows
            logits, new_state, weights = self.model.decode_step(tokens, state, for_search=True)
            carry = {k: new_state[k] for k in dynamic}
            return (logits, carry, weights) if attention else (logits, carry)

        options = dict(return_attention=attention, sentence_state=sentences, sentence_rows=True)
        if beam == 1:
            return search.greedy_search(step, dynamic, max_lengths, **options)
        return search.beam_search(step, dynamic, max_lengths, beam_size=beam, nbest=nbest,
                                  length_penalty=alpha, **options)


def _block_diagonal(pieces: list[Hypothesis]) -> np.ndarray | None:
    """Attention of joined pieces: each piece's [target, source] block on the diagonal."""
    if any(h.attention is None for h in pieces):
        return None
    rows = sum(h.attention.shape[0] for h in pieces)
    out = np.zeros((rows, sum(h.attention.shape[1] for h in pieces)), np.float32)
    r = c = 0
    for h in pieces:
        out[r:r + h.attention.shape[0], c:c + h.attention.shape[1]] = h.attention
        r, c = r + h.attention.shape[0], c + h.attention.shape[1]
    return out


def _is_cjk(text: str) -> bool:
    return any("\u3000" <= ch <= "\u9fff" for ch in text)
