"""Export a model folder as a TensorFlow SavedModel for TensorFlow Serving.

    python -m translator.export --model models/base --out exported/base/1

The SavedModel's `serving_default` signature takes `text`, a batch of strings, and returns
`translation` (strings) and `score` (float32: the search's score, as `Translator` gives
it), one per input. Everything runs inside the graph on TensorFlow's own ops: the
SentencePiece model (tensorflow-text's op, given the folder's own `.model` bytes), the
encoder, and the same beam or greedy search `Translator` runs (translator.search, with the
plain operations of translator.model.operations: TensorFlow Serving cannot load this
project's compiled kernels). Loading it needs TensorFlow and tensorflow-text only.

It translates as `Translator.translate` does on the plain path (TRANSLATOR_NATIVE=0), byte
for byte: input lines are stripped, blank ones give "" with score 0, invalid UTF-8 is
replaced by U+FFFD, SentencePiece's space symbol is escaped. One difference: `Translator`
splits an input longer than 200 subwords at sentence ends and translates the pieces; the
SavedModel translates every input whole. An ensemble's folder exports the ensemble.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from translator.data.tokenizer import BOS_ID, EOS_ID, ESCAPE, PAD_ID, SPACE_SYMBOL

SIGNATURE, INPUT, OUTPUTS = "serving_default", "text", ("translation", "score")

# What Python's str.strip() removes (str.isspace): ASCII whitespace, the separators
# U+001C-U+001F and U+0085, and Unicode's space and line/paragraph separators (\p{Z}).
_SPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f\x{85}\p{Z}]"
_STRIP = rf"^{_SPACE}+|{_SPACE}+$"


def _escape(text: tf.Tensor) -> tf.Tensor:
    """translator.data.tokenizer.escape in the graph: ESCAPE doubled, U+2581 -> ESCAPE 1."""
    text = tf.strings.regex_replace(text, ESCAPE, ESCAPE + ESCAPE)
    return tf.strings.regex_replace(text, SPACE_SYMBOL, ESCAPE + "1")


def _unescape(text: tf.Tensor) -> tf.Tensor:
    """translator.data.tokenizer.unescape in the graph. Splitting at each ESCAPE ESCAPE
    (leftmost first) pairs the escapes as unescape's left-to-right scan does; in between,
    ESCAPE 1 is U+2581 and a lone ESCAPE is dropped."""
    parts = tf.strings.split(text, sep=ESCAPE + ESCAPE)
    parts = tf.ragged.map_flat_values(tf.strings.regex_replace, parts, ESCAPE + "1",
                                      SPACE_SYMBOL)
    parts = tf.ragged.map_flat_values(tf.strings.regex_replace, parts, ESCAPE, "")
    # joined by ESCAPE: appended to every part but a row's last, then concatenated
    # (reduce_join's separator drops a row's leading empty parts: TensorFlow 2.21)
    last = tf.ragged.range(parts.row_lengths()).flat_values == tf.repeat(
        parts.row_lengths() - 1, parts.row_lengths())
    flat = parts.flat_values + tf.where(last, "", ESCAPE)
    return tf.strings.unsorted_segment_join(flat, parts.value_rowids(), parts.nrows())


class _Serving(tf.Module):
    """The serving function over a loaded model (plain operations) and its tokenizers."""

    def __init__(self, translator, beam: int, length_penalty: float) -> None:
        super().__init__()
        import tensorflow_text as text

        tokenizer, decoding = translator.tokenizer, translator.config.decoding
        self.translator, self.beam, self.alpha = translator, beam, length_penalty
        self.ratio, self.offset = decoding.max_len_ratio, decoding.max_len_offset
        self.src = text.SentencepieceTokenizer(model=tokenizer.src.serialized_model_proto(),
                                               out_type=tf.int32)
        self.tgt = (self.src if tokenizer.joint else text.SentencepieceTokenizer(
            model=tokenizer.tgt.serialized_model_proto(), out_type=tf.int32))

    def __call__(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        from translator.search import max_output_lengths

        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                            replacement_char=0xFFFD)
        text = tf.strings.regex_replace(text, _STRIP, "")
        lines = tf.cast(tf.reshape(tf.where(tf.strings.length(text) > 0), [-1]), tf.int32)

        def translate() -> tuple[tf.Tensor, tf.Tensor]:
            ids = self.src.tokenize(_escape(tf.gather(text, lines)))
            eos = tf.fill([ids.nrows(), 1], tf.constant(EOS_ID, tf.int32))
            ids = tf.concat([ids, tf.RaggedTensor.from_tensor(eos)], axis=1)
            max_lengths = max_output_lengths(tf.cast(ids.row_lengths(), tf.int32),
                                             self.ratio, self.offset)
            result = self.translator._search(ids.to_tensor(PAD_ID), max_lengths, self.beam, 1,
                                             self.alpha, False)
            out = tf.RaggedTensor.from_tensor(result.tokens[:, 0], lengths=result.lengths[:, 0])
            out = tf.ragged.boolean_mask(out, (out != PAD_ID) & (out != BOS_ID)
                                         & (out != EOS_ID))
            return _unescape(self.tgt.detokenize(out)), result.scores[:, 0]

        def nothing() -> tuple[tf.Tensor, tf.Tensor]:
            return tf.zeros([0], tf.string), tf.zeros([0], tf.float32)

        translated, scores = tf.cond(tf.size(lines) > 0, translate, nothing)
        where, rows = lines[:, None], tf.shape(text)
        return {
            "translation": tf.tensor_scatter_nd_update(tf.fill(rows, ""), where, translated),
            "score": tf.scatter_nd(where, scores, rows),
        }


def export(model: Path | str, out: Path | str, beam: int | None = None,
           length_penalty: float | None = None) -> Path:
    """Writes the SavedModel of the model folder `model` to the folder `out` (atomically:
    an existing one is replaced only when the new one is complete); returns `out`.
    beam and length_penalty default to the model's decoding config."""
    import keras

    from translator.io_utils import atomic_directory
    from translator.model.operations import PLAIN
    from translator.translator import Translator

    translator = Translator.load(model)
    translator.model.use_operations(PLAIN)
    # checked (and defaulted) as translate's options are: a ConfigError names the key
    settings, _ = translator._settings({"beam": beam, "length_penalty": length_penalty})
    serving = _Serving(translator, settings.beam, settings.length_penalty)
    archive = keras.export.ExportArchive()
    for model in getattr(translator.model, "members", [translator.model]):  # an Ensemble's
        archive.track(model)
    archive.track(serving)
    archive.add_endpoint(SIGNATURE, serving.__call__,
                         input_signature=[tf.TensorSpec([None], tf.string, name=INPUT)])
    out = Path(out)
    with atomic_directory(out) as tmp:
        archive.write_out(str(tmp), verbose=False)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m translator.export",
        description="Export a model folder as a TensorFlow SavedModel (SentencePiece and "
                    "search inside the graph) for TensorFlow Serving.")
    p.add_argument("--model", required=True, help="the model folder")
    p.add_argument("--out", required=True,
                   help="the SavedModel folder to write; TensorFlow Serving reads "
                        "BASE/VERSION, e.g. exported/base/1")
    p.add_argument("--beam", type=int, help="beam size (1 = greedy); default: the model's")
    p.add_argument("--length-penalty", type=float, help="default: the model's")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        import tensorflow_text  # noqa: F401
    except ImportError:
        from translator.cli import _fail

        return _fail("the export needs tensorflow-text: pip install 'lstm-translator[export]'")
    try:
        out = export(args.model, args.out, args.beam, args.length_penalty)
    except (ValueError, OSError) as err:
        from translator.cli import _fail

        return _fail(str(err))
    print(f"SavedModel written to {out}/ (signature {SIGNATURE!r}: {INPUT} -> "
          f"{', '.join(OUTPUTS)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
