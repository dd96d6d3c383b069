"""Tests for translator.data.tokenizer: small SentencePiece models trained on real corpus slices.

Training a 1,000-piece model on a few thousand lines takes about a second, so each model
is trained once per module (and twice where determinism is the point).
"""

from __future__ import annotations

import pytest

from translator.data.corpus import load_corpus
from translator.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    JOINT_FILE,
    PAD_ID,
    SRC_FILE,
    TGT_FILE,
    UNK_ID,
    Tokenizer,
    TokenizerError,
)

VOCAB = 1000
SPECIALS = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}

# Test sentences; UNSEEN_* are characters that must not occur in the training text.
UNSEEN_LATIN = ["🙂", "Ω", "ñ", "¿", "\u00a0"]
UNSEEN_CJK = ["龘", "靐", "齉", "🙂", "～", "𠮷"]
ENGLISH = [
    "A man in a blue shirt is standing on a ladder.",
    "¿Señor Ω? 🙂 Two  spaces,  a tab\there, a\u00a0no-break space and a trailing space ",
    " A leading space, digits 2016 and 3.14159.",
]
GERMAN = [
    "Ein Mann in einem blauen Hemd steht auf einer Leiter.",
    "Größere Übungen für Mädchen — „schön“, oder? ñ Ω 🙂",
]
CHINESE = [
    "我们明天去公园吧。",
    "他说：“你好，世界！”",
    "龘靐齉～𠮷🙂，全角标点，",  # rare CJK, outside the BMP, full-width punctuation
    "Tom说 English 和 中文 mixed，OK？",
]


@pytest.fixture(scope="module")
def en_de_texts(multi30k_slice) -> tuple[list[str], list[str]]:
    train = multi30k_slice["train"]
    return [s for s, _ in train], [t for _, t in train]


@pytest.fixture(scope="module")
def zh_texts(mirror, tmp_path_factory) -> tuple[list[str], list[str]]:
    """600 English-Chinese Tatoeba training pairs (1,200 lines)."""
    cache = tmp_path_factory.mktemp("cache")
    pairs = load_corpus("tatoeba-cmn-eng", "train", "en", "zh", mirror, cache)[:600]
    return [e for e, _ in pairs], [z for _, z in pairs]


@pytest.fixture(scope="module")
def en_de(en_de_texts) -> Tokenizer:
    return Tokenizer.train(*en_de_texts, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def en_zh(zh_texts) -> Tokenizer:
    return Tokenizer.train(*zh_texts, vocab_size=VOCAB)


def _training_chars(texts: tuple[list[str], list[str]]) -> set[str]:
    return {ch for side in texts for line in side for ch in line}


# --- special ids and vocabulary -------------------------------------------------------------


@pytest.mark.parametrize("name", ["en_de", "en_zh"])
def test_special_ids_are_pad0_unk1_bos2_eos3(name, request):
    tokenizer = request.getfixturevalue(name)
    processor = tokenizer.src
    for i, piece in SPECIALS.items():
        assert processor.id_to_piece(i) == piece
        assert processor.piece_to_id(piece) == i
    assert (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id()) == (
        PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)


def test_joint_tokenizer_has_the_requested_vocab_size(en_de, en_zh):
    assert en_de.joint and en_de.src is en_de.tgt
    assert en_de.src_vocab_size == en_de.tgt_vocab_size == VOCAB
    assert en_zh.src_vocab_size == VOCAB


def test_vocabulary_holds_all_256_byte_pieces(en_de):
    pieces = {en_de.src.id_to_piece(i) for i in range(en_de.src_vocab_size)}
    assert {f"<0x{b:02X}>" for b in range(256)} <= pieces


def test_too_small_vocabulary_for_chinese_raises_tokenizer_error(zh_texts):
    # 600 pairs need about 1,000 pieces of characters and bytes: 400 cannot hold them.
    with pytest.raises(TokenizerError, match="(?i)vocab"):
        Tokenizer.train(*zh_texts, vocab_size=400)


def test_training_on_empty_text_raises():
    with pytest.raises(TokenizerError, match="empty"):
        Tokenizer.train(["", "  "], ["\n"], vocab_size=VOCAB)


def test_unknown_model_type_raises():
    with pytest.raises(TokenizerError, match="'wordpiece'"):
        Tokenizer.train(["a b"], ["c d"], vocab_size=VOCAB, model_type="wordpiece")


# --- encode and decode ----------------------------------------------------------------------


def test_test_sentences_contain_characters_absent_from_training(en_de_texts, zh_texts):
    # Otherwise the round-trip tests below would not exercise byte fallback.
    assert not set(UNSEEN_LATIN) & _training_chars(en_de_texts)
    assert not set(UNSEEN_CJK) & _training_chars(zh_texts)


@pytest.mark.parametrize("side", ["src", "tgt"])
def test_english_and_german_round_trip_exactly(en_de, side):
    texts = ENGLISH + GERMAN
    assert en_de.decode(en_de.encode(texts, side=side), side=side) == texts


def test_chinese_round_trips_exactly(en_zh):
    assert en_zh.decode(en_zh.encode(CHINESE, side="tgt")) == CHINESE
    assert en_zh.decode(en_zh.encode(ENGLISH, side="src"), side="src") == ENGLISH


def test_real_test_sentences_round_trip_exactly(en_de, multi30k_slice):
    src = [s for s, _ in multi30k_slice["test"]]
    tgt = [t for _, t in multi30k_slice["test"]]
    assert en_de.decode(en_de.encode(src), side="src") == src
    assert en_de.decode(en_de.encode(tgt, side="tgt")) == tgt


@pytest.mark.parametrize("name, unseen", [("en_de", UNSEEN_LATIN), ("en_zh", UNSEEN_CJK)])
def test_unseen_characters_become_byte_pieces_not_unk(name, unseen, request):
    tokenizer = request.getfixturevalue(name)
    for char in unseen:
        ids = tokenizer.encode([f"x{char}y"])[0]
        assert UNK_ID not in ids, char
        pieces = tokenizer.pieces(ids)
        utf8 = [f"<0x{b:02X}>" for b in char.encode()]
        assert "".join(pieces).find("".join(utf8)) >= 0, (char, pieces)
    every = ENGLISH + GERMAN + CHINESE
    assert all(UNK_ID not in ids for ids in tokenizer.encode(every))


def test_encode_adds_no_bos_or_eos_and_decode_ignores_specials(en_de):
    text = "A dog runs."
    ids = en_de.encode([text])[0]
    assert not {PAD_ID, BOS_ID, EOS_ID} & set(ids)
    assert en_de.decode([[BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]]) == [text]
    assert en_de.decode([[]]) == [""]


def test_side_must_be_src_or_tgt(en_de):
    with pytest.raises(ValueError, match="'both'"):
        en_de.encode(["a"], side="both")


# --- determinism, save and load -------------------------------------------------------------


def test_same_training_input_gives_byte_identical_models(en_de, en_de_texts, tmp_path):
    again = Tokenizer.train(*en_de_texts, vocab_size=VOCAB)
    assert again.fingerprint() == en_de.fingerprint()
    (first,) = en_de.save(tmp_path / "a")
    (second,) = again.save(tmp_path / "b")
    assert first.name == second.name == JOINT_FILE
    assert first.read_bytes() == second.read_bytes()


def test_different_training_input_gives_a_different_fingerprint(en_de, en_de_texts):
    src, tgt = en_de_texts
    other = Tokenizer.train(src[:-100], tgt[:-100], vocab_size=VOCAB)
    assert other.fingerprint() != en_de.fingerprint()


def test_joint_tokenizer_saves_one_file_and_loads_back(en_de, tmp_path):
    paths = en_de.save(tmp_path)
    assert [p.name for p in paths] == [JOINT_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == [JOINT_FILE]  # no temporaries left
    loaded = Tokenizer.load(tmp_path)
    assert loaded.joint
    assert loaded.fingerprint() == en_de.fingerprint()
    assert loaded.encode(ENGLISH) == en_de.encode(ENGLISH)


def test_separate_tokenizers_save_two_files_and_load_back(en_de_texts, zh_texts, tmp_path):
    src, _ = en_de_texts
    _, zh = zh_texts
    tokenizer = Tokenizer.train(src[:1000], zh, vocab_size=VOCAB, joint=False)
    assert not tokenizer.joint and tokenizer.src is not tokenizer.tgt
    assert tokenizer.src_vocab_size == tokenizer.tgt_vocab_size == VOCAB
    paths = tokenizer.save(tmp_path)
    assert [p.name for p in paths] == [SRC_FILE, TGT_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SRC_FILE, TGT_FILE])

    loaded = Tokenizer.load(tmp_path)
    assert not loaded.joint
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert loaded.encode(ENGLISH, side="src") == tokenizer.encode(ENGLISH, side="src")
    assert loaded.encode(CHINESE, side="tgt") == tokenizer.encode(CHINESE, side="tgt")
    assert loaded.encode(CHINESE, side="src") != loaded.encode(CHINESE, side="tgt")
    assert loaded.decode(loaded.encode(CHINESE, side="tgt")) == CHINESE
    assert loaded.tgt.id_to_piece(PAD_ID) == "<pad>" and loaded.tgt.piece_to_id("</s>") == EOS_ID


def test_load_from_folder_without_models_raises_naming_the_files(tmp_path):
    with pytest.raises(TokenizerError, match=f"{tmp_path}.*{JOINT_FILE}.*{SRC_FILE}"):
        Tokenizer.load(tmp_path)


def test_load_with_only_one_separate_model_raises_naming_the_missing_file(en_de, tmp_path):
    (tmp_path / SRC_FILE).write_bytes((en_de.save(tmp_path / "joint")[0]).read_bytes())
    with pytest.raises(TokenizerError, match=f"{tmp_path / TGT_FILE}: .*missing"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_load_corrupt_model_raises_naming_the_file(en_de, tmp_path, damage):
    good = en_de.save(tmp_path / "good")[0].read_bytes()
    data = b"this is not a sentencepiece model" if damage == "garbage" else good[: len(good) // 3]
    bad = tmp_path / JOINT_FILE
    bad.write_bytes(data)
    with pytest.raises(TokenizerError, match=f"{bad}: not a valid SentencePiece model"):
        Tokenizer.load(tmp_path)
