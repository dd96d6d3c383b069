"""SentencePiece tokenizers with fixed special ids and byte fallback.

One joint model serves source and target by default; `joint=False` trains one
model per side. Ids are fixed: pad=0, unk=1, bos=2, eos=3. Byte fallback is on
and normalisation is the identity, so any text (Chinese, emoji, accents never
seen in training, control characters) round-trips exactly through encode and decode.
SentencePiece writes a space as "▁" (U+2581), so a "▁" in the text itself is escaped
on the way in and restored on the way out (`escape`, `unescape`).
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
JOINT_FILE, SRC_FILE, TGT_FILE = "spm.model", "spm.src.model", "spm.tgt.model"


_SAMPLING = threading.Lock()

# SentencePiece's space symbol, and the character that escapes it (and itself) in text:
# a plane-15 private-use code point. ESCAPE + "1" stands for a real U+2581 in the text,
# ESCAPE + ESCAPE for a real ESCAPE.
SPACE_SYMBOL, ESCAPE = "\u2581", "\U000f0000"
_SURROGATE = re.compile("[\ud800-\udfff]")


def escape(text: str) -> str:
    """The text SentencePiece is given: U+2581 and ESCAPE escaped, and the lone
    surrogates a UTF-8 file cannot hold (only a Python string can) made U+FFFD."""
    if SPACE_SYMBOL in text or ESCAPE in text:
        text = text.replace(ESCAPE, ESCAPE + ESCAPE).replace(SPACE_SYMBOL, ESCAPE + "1")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
    return text


def unescape(text: str) -> str:
    """Inverse of `escape`. A lone ESCAPE (which escape never writes; a model's output
    may) is dropped."""
    if ESCAPE not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == ESCAPE and i + 1 < len(text) and text[i + 1] in (ESCAPE, "1"):
            out.append(ESCAPE if text[i + 1] == ESCAPE else SPACE_SYMBOL)
            i += 2
        else:
            out.append("" if text[i] == ESCAPE else text[i])
            i += 1
    return "".join(out)


class TokenizerError(ValueError):
    """A tokenizer is missing, corrupt, or does not match what is asked of it."""


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
) -> bytes:
    """Trains one SentencePiece model on `texts` and returns the serialised model.

    Deterministic for the same texts and settings: every sentence is used (no
    sampling, no shuffling), so SentencePiece draws no random numbers and needs
    no seed, and training runs on one thread.
    """
    if model_type not in ("unigram", "bpe"):
        raise TokenizerError(f"model_type must be 'unigram' or 'bpe', not {model_type!r}")
    sentences = [escape(t) for t in texts if t.strip()]
    if not sentences:
        raise TokenizerError("cannot train a tokenizer on empty text")
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buffer,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            seed_sentencepiece_size=1_000_000,
            num_threads=1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    except RuntimeError as err:  # e.g. "Vocabulary size is smaller than required_chars"
        raise TokenizerError(f"SentencePiece training failed: {err}") from None
    return buffer.getvalue()


class Tokenizer:
    """Source and target SentencePiece processors (the same object when joint)."""

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None) -> None:
        self._src_bytes = src_model
        self._tgt_bytes = tgt_model
        self.src = _processor(src_model)
        self.tgt = self.src if tgt_model is None else _processor(tgt_model)

    @property
    def joint(self) -> bool:
        return self._tgt_bytes is None

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    @classmethod
    def train(
        cls,
        src_texts: Sequence[str],
        tgt_texts: Sequence[str],
        vocab_size: int = 8000,
        model_type: str = "unigram",
        joint: bool = True,
    ) -> Tokenizer:
        if joint:
            return cls(train_sentencepiece([*src_texts, *tgt_texts], vocab_size, model_type))
        return cls(
            train_sentencepiece(src_texts, vocab_size, model_type),
            train_sentencepiece(tgt_texts, vocab_size, model_type),
        )

    def save(self, folder: Path | str) -> list[Path]:
        """Writes the .model file(s) into folder (atomically) and returns their paths."""
        from translator.io_utils import atomic_write_bytes

        folder = Path(folder)
        if self.joint:
            return [atomic_write_bytes(folder / JOINT_FILE, self._src_bytes)]
        return [
            atomic_write_bytes(folder / SRC_FILE, self._src_bytes),
            atomic_write_bytes(folder / TGT_FILE, self._tgt_bytes),
        ]

    @classmethod
    def load(cls, folder: Path | str) -> Tokenizer:
        folder = Path(folder)
        if (folder / JOINT_FILE).exists():
            return cls(_read_model(folder / JOINT_FILE))
        if (folder / SRC_FILE).exists() or (folder / TGT_FILE).exists():
            return cls(_read_model(folder / SRC_FILE), _read_model(folder / TGT_FILE))
        raise TokenizerError(f"{folder}: no tokenizer ({JOINT_FILE}, or {SRC_FILE} + {TGT_FILE})")

    def fingerprint(self) -> str:
        """sha256 over the model bytes: two tokenizers with equal fingerprints encode alike."""
        digest = hashlib.sha256(self._src_bytes)
        digest.update(self._tgt_bytes or b"joint")
        return digest.hexdigest()

    def encode(self, texts: Sequence[str], side: str = "src") -> list[list[int]]:
        """Batch encode to ids, without BOS/EOS."""
        return self._side(side).encode([escape(t) for t in texts], out_type=int)

    def sample(self, texts: Sequence[str], side: str, alpha: float, nbest: int, seed: int
               ) -> list[list[int]]:
        """Batch encode, each text in a segmentation drawn at random (subword
        regularisation, Kudo 2018): unigram models draw from the `nbest` best
        segmentations (-1: all of them) with probability proportional to P(x)^alpha, so a
        smaller alpha draws more varied, longer segmentations; BPE models drop merges with
        probability alpha (BPE-dropout). The same seed draws the same segmentations:
        SentencePiece's generator is seeded and encoding runs on one thread."""
        with _SAMPLING:  # the generator's seed is one for the whole process
            spm.set_random_generator_seed(seed)
            return self._side(side).encode([escape(t) for t in texts], out_type=int,
                                           enable_sampling=True,
                                           alpha=alpha, nbest_size=nbest, num_threads=1)

    def decode(self, ids: Sequence[Sequence[int]], side: str = "tgt") -> list[str]:
        """Batch decode; pad, bos and eos ids are ignored."""
        specials = (PAD_ID, BOS_ID, EOS_ID)
        texts = self._side(side).decode([[int(i) for i in seq if i not in specials]
                                         for seq in ids])
        return [unescape(t) for t in texts]

    def pieces(self, ids: Sequence[int], side: str = "tgt") -> list[str]:
        """The subword strings of ids (for attention plots)."""
        return [self._side(side).id_to_piece(int(i)) for i in ids]

    def _side(self, side: str) -> spm.SentencePieceProcessor:
        if side not in ("src", "tgt"):
            raise ValueError(f"side must be 'src' or 'tgt', not {side!r}")
        return self.src if side == "src" else self.tgt


def _processor(model: bytes) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    return processor


def _read_model(path: Path) -> bytes:
    if not path.exists():
        raise TokenizerError(f"{path}: tokenizer model file is missing")
    data = path.read_bytes()
    try:
        _processor(data)
    except Exception as err:  # sentencepiece raises RuntimeError/OSError variants
        raise TokenizerError(f"{path}: not a valid SentencePiece model ({err})") from None
    return data
