"""Property tests (Hypothesis): for any text, the tokenizer round-trips it exactly;
`translate` answers any list of strings (even lone surrogates, which only a Python string
can hold) with one string per input, in order; and
`translate_file` keeps any file's line count.

Examples are drawn from all of Unicode (with a bias towards the characters that break
readers: line separators, control characters, the byte order mark, SentencePiece's space
symbol), so they cover what no hand-written list does. The model is the session's tiny
model (tests/conftest.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translator import files
from translator.data.tokenizer import ESCAPE

TRICKY = "\n\r\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\ufeff\u2581\t \x7f\u200b\u202e" + ESCAPE
# Any Unicode text (no lone surrogates: a file cannot hold them), tricky characters often
# (drawn as lists of characters: `st.text` would seldom pick them).
texts = st.lists(st.one_of(st.sampled_from(TRICKY), st.characters(codec="utf-8")),
                 max_size=60).map("".join)
# Lines as a file holds them: no "\n" inside.
lines = texts.map(lambda text: text.replace("\n", ""))
SLOW = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=400, deadline=None)
@given(text=texts)
def test_tokenizer_round_trips_any_text(tiny_translator, text):
    tokenizer = tiny_translator.tokenizer
    for side in ("src", "tgt"):
        assert tokenizer.decode(tokenizer.encode([text], side), side) == [text]


@given(text=st.text(max_size=20))
def test_lone_surrogates_become_the_replacement_character(tiny_translator, text):
    tokenizer = tiny_translator.tokenizer
    odd = f"\ud800{text}\udfff"
    assert tokenizer.decode(tokenizer.encode([odd], "src"), "src") == [f"\ufffd{text}\ufffd"]


@SLOW
@given(batch=st.lists(st.one_of(texts, st.text(st.sampled_from("\ud800\udfffa "), max_size=5)),
                      max_size=8))
def test_translate_answers_any_strings_one_per_input_in_order(tiny_translator, batch):
    out = tiny_translator.translate(batch, beam=1, batch_size=3)
    assert isinstance(out, list) and len(out) == len(batch)
    assert all(isinstance(t, str) for t in out)
    assert tiny_translator.translate(batch[::-1], beam=1, batch_size=3) == out[::-1]
    for text, translation in zip(batch, out):
        if not text.strip():
            assert translation == ""


@SLOW
@given(content=st.lists(lines, max_size=12), ends=st.sampled_from(["\n", "\r\n"]),
       final=st.booleans(), bom=st.booleans())
def test_translate_file_keeps_any_file_s_line_count(tiny_translator, content, ends, final,
                                                    bom):
    data = ("\ufeff" if bom else "") + ends.join(content) + (ends if final and content else "")
    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "in.txt", Path(folder) / "out.txt"
        src.write_bytes(data.encode("utf-8"))
        count = files.count_lines(src)
        assert tiny_translator.translate_file(src, dst, progress=False, beam=1) == count
        assert dst.read_bytes().count(b"\n") == count
        assert len(dst.read_text(encoding="utf-8").splitlines()) == count


@SLOW
@given(data=st.binary(max_size=300))
def test_translate_file_keeps_the_line_count_of_any_bytes_with_errors_replace(
        tiny_translator, data):
    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "in.txt", Path(folder) / "out.txt"
        src.write_bytes(data)
        count = files.count_lines(src)
        written = tiny_translator.translate_file(src, dst, errors="replace", progress=False,
                                                 beam=1)
        assert written == count == dst.read_bytes().count(b"\n")
