"""Tests for translation: the Translator API, file translation and the translate.py front ends.

Everything runs on the session's tiny model (tests/conftest.py), trained once on a real
2,000-pair Multi30k slice. It translates badly and often gives the same output for
different sentences, so tests that must tell outputs apart use sentences of distinct
subword lengths and check first that the outputs do differ. They check behaviour (counts,
order, formats, agreement of the entry points, errors), never quality.

Command-line tests that are about the process boundary (arguments, stdin, --input,
`python -m translator`, the console script) run real subprocesses; the option formats
and error paths call `translator.cli.translate_main(argv)` in this process, which is the
same code minus the start-up of TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from translator import files
from translator.cli import translate_main
from translator.data.corpus import CorpusError
from translator.metrics import bleu, chrf
from translator.model_folder import ModelFolderError
from translator.data.pipeline import encode_sources, pad
from translator.data.tokenizer import BOS_ID, EOS_ID
from translator.translator import MAX_INPUT_TOKENS, Hypothesis, Translator

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INVALID_UTF8 = b"A man \xff\xfe is here.\n"  # 0xff never occurs in UTF-8


# ---- helpers --------------------------------------------------------------------------


def run_processes(*runs: tuple[list, bytes | None]) -> list[bytes]:
    """Runs (command, stdin) pairs side by side in the repository root; returns each stdout.

    Concurrent because most of a run is TensorFlow starting up; each must exit 0.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [subprocess.Popen([str(c) for c in command], cwd=ROOT, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
                 for command, _ in runs]
    outputs = []
    for process, (_, stdin) in zip(processes, runs):
        out, err = process.communicate(stdin or b"", timeout=300)
        assert process.returncode == 0, err.decode("utf-8", "replace")
        outputs.append(out)
    return outputs


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """translate.py's main in this process: (exit code, stdout, stderr)."""
    code = translate_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the 8-byte signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def expected_lines(translations: list[str]) -> bytes:
    return "".join(f"{t}\n" for t in translations).encode("utf-8")


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def model_copy(tiny_model: Path, destination: Path) -> Path:
    """The files a Translator needs, copied so that a test may damage them."""
    destination.mkdir()
    for name in ("config.yaml", "spm.model", "model.keras"):
        shutil.copy2(tiny_model / name, destination / name)
    return destination


# ---- fixtures -------------------------------------------------------------------------


def _in_float32(folder) -> Translator:
    """The folder's model computing in float32 (the tiny model trains in bfloat16 where the
    CPU has it): same weights, no bfloat16 rounding between the ops."""
    from translator.model import Seq2Seq
    from translator.model_folder import load_model_folder

    model, tokenizer, config = load_model_folder(folder)
    float32 = Seq2Seq.from_config({**model.get_config(), "dtype": "float32"})
    float32.build()
    float32.set_weights(model.get_weights())
    return Translator(float32, tokenizer, config)


@pytest.fixture(scope="module")
def tiny_float32(tiny_model) -> Translator:
    return _in_float32(tiny_model)


@pytest.fixture(scope="module")
def english(multi30k_slice) -> list[str]:
    """The English side of the 100 Multi30k test pairs."""
    return [en for en, _ in multi30k_slice["test"]]


@pytest.fixture(scope="module")
def distinct(tiny_translator, english) -> list[str]:
    """24 test sentences with pairwise different subword lengths, in corpus order.

    Output lengths follow source lengths, so even a weak model gives these sentences
    mostly different translations: a mix-up of order would show.
    """
    chosen, lengths = [], set()
    for sentence, ids in zip(english, tiny_translator.tokenizer.encode(english)):
        if len(ids) not in lengths:
            chosen.append(sentence)
            lengths.add(len(ids))
    assert len(chosen) >= 24
    return chosen[:24]


@pytest.fixture(scope="module")
def long_line(english) -> str:
    """60 test sentences joined into one line: far more than MAX_INPUT_TOKENS subwords."""
    return " ".join(english[:60])


# ---- the API: types and options -------------------------------------------------------


def test_string_gives_string_and_list_gives_list_of_strings(tiny_translator, distinct):
    one = tiny_translator.translate(distinct[0])
    many = tiny_translator.translate(distinct[:3])
    assert isinstance(one, str)
    assert isinstance(many, list) and len(many) == 3
    assert all(isinstance(t, str) for t in many)
    assert many[0] == one
    assert tiny_translator.translate([]) == []


def test_beam_of_one_is_greedy_argmax_decoding(tiny_float32, distinct):
    """beam=1 equals a hand-written argmax loop over the model's encode/decode_step. In
    float32: in bfloat16 the eager loop and the compiled search round differently (the
    graph fuses a matmul with its bias, eager adds it after rounding), and near-ties then
    go either way (bench/decode_speed.py counts such differences)."""
    model, tokenizer = tiny_float32.model, tiny_float32.tokenizer
    decoding = tiny_float32.config.decoding
    for sentence in distinct[:3]:
        source = encode_sources(tokenizer, [sentence])
        max_len = max(1, math.ceil(decoding.max_len_ratio * len(source[0])
                                   + decoding.max_len_offset))
        _, _, state = model.encode(tf.constant(pad(source)), training=False)
        token, ids = BOS_ID, []
        for _ in range(max_len):
            logits, state, _ = model.decode_step(tf.constant([token], tf.int32), state)
            token = int(np.argmax(logits.numpy()[0]))
            if token == EOS_ID:
                break
            ids.append(token)
        hyp = tiny_float32.translate(sentence, beam=1, return_scores=True)
        assert hyp.tokens == tokenizer.pieces(ids)
        assert hyp.text == tokenizer.decode([ids])[0]


def test_nbest_gives_hypotheses_per_input_sorted_best_first(tiny_translator, distinct):
    sentences = distinct[:3]
    results = tiny_translator.translate(sentences, beam=4, nbest=3)
    best = tiny_translator.translate(sentences, beam=4)
    assert len(results) == len(sentences)
    for hyps, top in zip(results, best):
        assert len(hyps) == 3
        assert all(isinstance(h, Hypothesis) for h in hyps)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 3  # three different hypotheses
        assert hyps[0].text == top


@pytest.mark.parametrize("beam", [1, 3])
def test_return_scores_gives_text_score_and_tokens(tiny_translator, distinct, beam):
    hyps = tiny_translator.translate(distinct[:4], beam=beam, return_scores=True)
    plain = tiny_translator.translate(distinct[:4], beam=beam)
    for hyp, text in zip(hyps, plain):
        assert isinstance(hyp, Hypothesis)
        assert hyp.text == text
        assert isinstance(hyp.score, float) and math.isfinite(hyp.score)
        assert all(isinstance(t, str) for t in hyp.tokens)
        assert tiny_translator.tokenizer.tgt.decode_pieces(hyp.tokens) == hyp.text
        assert hyp.attention is None


@pytest.mark.parametrize("beam", [1, 3])
def test_return_attention_is_target_by_source_with_rows_summing_to_one(
        tiny_translator, distinct, beam):
    sentence = distinct[5]
    hyp = tiny_translator.translate(sentence, beam=beam, return_attention=True)
    source_ids = tiny_translator.tokenizer.encode([sentence])[0]
    assert len(hyp.source_tokens) == len(source_ids) + 1  # EOS included
    assert hyp.source_tokens[-1] == "</s>"
    assert isinstance(hyp.attention, np.ndarray)
    assert hyp.attention.shape == (len(hyp.tokens), len(hyp.source_tokens))
    assert np.all(hyp.attention >= 0.0)
    np.testing.assert_allclose(hyp.attention.sum(axis=1), 1.0, atol=1e-2)  # bfloat16 on CPU
    if beam == 1:
        assert len(hyp.tokens) > 0  # greedy output is never empty here: the check has rows
    assert hyp.text == tiny_translator.translate(sentence, beam=beam)


def test_unknown_option_raises_type_error(tiny_translator):
    with pytest.raises(TypeError, match="bogus"):
        tiny_translator.translate("A man.", bogus=1)
    with pytest.raises(TypeError, match="beam_size"):
        tiny_translator.translate(["A man."], beam_size=2)


@pytest.mark.parametrize("options", [{"beam": 2, "nbest": 3}, {"beam": 1, "nbest": 2},
                                     {"beam": 0}, {"batch_size": 0}])
def test_impossible_beam_nbest_or_batch_size_raise_value_error(tiny_translator, options):
    with pytest.raises(ValueError):
        tiny_translator.translate("A man.", **options)


# ---- the API: counts, order, streams, long lines -----------------------------------


def test_blank_and_whitespace_inputs_give_empty_strings_in_place(tiny_translator, distinct):
    inputs = ["", distinct[0], "   ", "\t", distinct[1], " \t "]
    blanks = [0, 2, 3, 5]
    out = tiny_translator.translate(inputs, beam=1)
    assert len(out) == len(inputs)
    assert [out[i] for i in blanks] == ["", "", "", ""]
    assert [out[1], out[4]] == tiny_translator.translate([distinct[0], distinct[1]], beam=1)
    assert tiny_translator.translate("  ") == ""

    scored = tiny_translator.translate(inputs, beam=1, return_scores=True)
    assert [scored[i].text for i in blanks] == ["", "", "", ""]
    nbest = tiny_translator.translate(inputs, beam=3, nbest=2)
    assert len(nbest) == len(inputs)
    assert all(len(hyps) == 2 for hyps in nbest)
    assert all(h.text == "" for i in blanks for h in nbest[i])


def test_shuffled_input_in_small_batches_keeps_each_translation(tiny_translator, distinct):
    alone = [tiny_translator.translate(s, beam=1, return_scores=True) for s in distinct]
    assert len({h.text for h in alone}) > len(alone) // 2  # outputs differ: order is visible
    order = list(range(len(distinct)))
    random.Random(7).shuffle(order)
    together = tiny_translator.translate([distinct[i] for i in order], beam=1, batch_size=4,
                                         return_scores=True)
    assert [h.text for h in together] == [alone[i].text for i in order]
    expected_scores = [alone[i].score for i in order]
    assert [h.score for h in together] == pytest.approx(expected_scores, rel=1e-3, abs=1e-3)
    reverse = tiny_translator.translate(distinct[::-1], beam=1, batch_size=3)
    assert reverse == [h.text for h in alone][::-1]


def test_translate_stream_is_lazy_and_keeps_order(tiny_translator, distinct):
    lines = (distinct * 2)[:40]
    consumed = []

    def source():
        for line in lines:
            consumed.append(line)
            yield line

    options = {"beam": 1, "batch_size": 2}
    chunk = tiny_translator.stream_chunk(options)
    assert chunk < len(lines)
    stream = tiny_translator.translate_stream(source(), **options)
    assert consumed == []  # nothing is read before the first result is asked for
    first = next(stream)
    assert len(consumed) == chunk
    results = [first, *stream]
    assert len(consumed) == len(lines)
    assert results == tiny_translator.translate(lines, **options)


def test_long_line_is_split_into_pieces_and_translated_in_full(tiny_translator, long_line,
                                                               distinct, tmp_path):
    tokens = len(tiny_translator.tokenizer.encode([long_line])[0])
    assert tokens > MAX_INPUT_TOKENS
    pieces = tiny_translator._split(long_line)
    assert len(pieces) > 1
    assert " ".join(pieces).split() == long_line.split()  # nothing dropped by the split
    assert all(len(ids) < MAX_INPUT_TOKENS for ids in tiny_translator.tokenizer.encode(pieces))

    translation = tiny_translator.translate(long_line, beam=1)
    assert "\n" not in translation
    assert translation == " ".join(tiny_translator.translate(pieces, beam=1))
    assert len(translation) > 10 * len(tiny_translator.translate(distinct[0], beam=1))

    src = write_bytes(tmp_path / "in.txt",
                      f"{distinct[0]}\n{long_line}\n{distinct[1]}\n".encode("utf-8"))
    dst = tmp_path / "out.txt"
    assert tiny_translator.translate_file(src, dst, progress=False, beam=1) == 3
    assert dst.read_text(encoding="utf-8").split("\n")[1] == translation


def test_long_line_gives_nbest_hypotheses(tiny_translator, long_line):
    hyps = tiny_translator.translate([long_line, "A man."], beam=3, nbest=3)
    assert [len(h) for h in hyps] == [3, 3]


def test_long_line_keeps_attention(tiny_translator, long_line):
    hyp = tiny_translator.translate(long_line, beam=1, return_attention=True)
    assert hyp.attention is not None
    assert hyp.attention.shape == (len(hyp.tokens), len(hyp.source_tokens))


# ---- file translation -----------------------------------------------------------------


def test_translate_file_writes_one_line_per_input_line(tiny_translator, distinct, tmp_path):
    lines = [distinct[0], "", distinct[1], "   ", "", distinct[2], distinct[3]]
    data = "\n".join(lines[:3]) + "\r\n" + "\n".join(lines[3:])  # a CRLF; no final newline
    src = write_bytes(tmp_path / "in.txt", data.encode("utf-8"))
    dst = tmp_path / "out.txt"

    count = tiny_translator.translate_file(src, dst, progress=False, beam=1, batch_size=2)
    assert count == len(lines) == files.count_lines(src)
    written = dst.read_bytes()
    assert written.count(b"\n") == len(lines) and written.endswith(b"\n")
    assert written == expected_lines(tiny_translator.translate(lines, beam=1))


def test_invalid_utf8_stops_with_line_number_and_writes_no_output(
        tiny_translator, distinct, tmp_path):
    data = (f"{distinct[0]}\n{distinct[1]}\n".encode("utf-8") + INVALID_UTF8
            + f"{distinct[2]}\n".encode("utf-8"))
    src = write_bytes(tmp_path / "in.txt", data)
    dst = tmp_path / "out.txt"
    with pytest.raises(CorpusError, match="line 3"):
        tiny_translator.translate_file(src, dst, progress=False, beam=1)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # no temporary left

    assert tiny_translator.translate_file(src, dst, errors="replace", progress=False,
                                          beam=1) == 4
    assert dst.read_bytes().count(b"\n") == 4


@pytest.mark.parametrize("failure", ["invalid-utf8", "keyboard-interrupt"])
def test_interrupted_translation_leaves_existing_output_unchanged(tiny_translator, distinct,
                                                                  tmp_path, failure):
    lines = distinct[:8]
    data = "\n".join(lines).encode("utf-8") + b"\n"
    if failure == "invalid-utf8":
        data += INVALID_UTF8
    src = write_bytes(tmp_path / "in.txt", data)
    dst = write_bytes(tmp_path / "out.txt", b"an earlier, complete translation\n")

    def interrupting(index: int, result) -> str:
        if failure == "keyboard-interrupt" and index == 5:
            raise KeyboardInterrupt
        return files.plain(index, result)

    error = CorpusError if failure == "invalid-utf8" else KeyboardInterrupt
    with pytest.raises(error):
        files.translate_file(tiny_translator, src, dst, progress=False, formatter=interrupting,
                             beam=1, batch_size=2)
    assert dst.read_bytes() == b"an earlier, complete translation\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]


# ---- model folder errors -------------------------------------------------------------


def _damage(tiny_model: Path, tmp_path: Path, damage: str) -> tuple[Path, str]:
    """A broken model folder and the file name its error must mention."""
    if damage == "missing-folder":
        return tmp_path / "no-such-model", "no-such-model"
    folder = model_copy(tiny_model, tmp_path / "model")
    weights = folder / "model.keras"
    if damage == "missing-weights":
        weights.unlink()
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage-weights":
        weights.write_bytes(b"this is not a keras archive\n" * 100)
    elif damage == "missing-tokenizer":
        (folder / "spm.model").unlink()
        return folder, "spm.model"
    return folder, "model.keras"


DAMAGES = ["missing-folder", "missing-weights", "truncated-weights", "garbage-weights",
           "missing-tokenizer"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_broken_model_folder_raises_model_folder_error_naming_the_file(tiny_model, tmp_path,
                                                                       damage):
    folder, name = _damage(tiny_model, tmp_path, damage)
    with pytest.raises(ModelFolderError, match=name):
        Translator.load(folder)


@pytest.mark.parametrize("damage", DAMAGES[:4])
def test_cli_broken_model_folder_exits_2_with_a_message(tiny_model, tmp_path, capsys, damage):
    folder, name = _damage(tiny_model, tmp_path, damage)
    code, out, err = run_cli(capsys, "--model", folder, "A man.")
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and name in err
    assert "Traceback" not in err


# ---- the entry points agree ------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_sentences(distinct) -> list[str]:
    """Eight inputs: sentences of different lengths, a blank one and non-ASCII text."""
    return [*distinct[:3], "", "The café's crème brûlée is naïve.", *distinct[3:6]]


@pytest.mark.parametrize("options", [[], ["--beam", "1"]], ids=["default-beam", "beam-1"])
def test_arguments_file_stdin_and_api_agree_byte_for_byte(tiny_model, tiny_translator,
                                                          cli_sentences, tmp_path, options):
    beam = int(options[1]) if options else None
    expected = expected_lines(tiny_translator.translate(cli_sentences, beam=beam))
    script = [sys.executable, "translate.py", "--model", tiny_model, *options]

    text = "\n".join(cli_sentences).encode("utf-8")  # no final newline
    src, dst = write_bytes(tmp_path / "in.txt", text), tmp_path / "out.txt"
    by_arguments, _, by_stdin = run_processes(
        ([*script, *cli_sentences], None),
        ([*script, "--quiet", "--input", src, "--output", dst], None),
        (script, text),
    )
    by_file = dst.read_bytes()

    assert by_arguments == expected
    assert by_file == expected
    assert by_stdin == expected


def test_module_and_console_script_agree_with_the_api(tiny_model, tiny_translator,
                                                      cli_sentences):
    console_script = Path(sys.executable).with_name("translator-translate")
    assert console_script.exists(), "pip install -e . installs the translator-translate script"
    options = ["--model", tiny_model, "--beam", "1", *cli_sentences]
    by_module, by_script = run_processes(
        ([sys.executable, "-m", "translator", "translate", *options], None),
        ([console_script, *options], None),
    )
    expected = expected_lines(tiny_translator.translate(cli_sentences, beam=1))
    assert by_module == expected
    assert by_script == expected


# ---- translate.py output formats -------------------------------------------------------


def test_cli_nbest_prints_k_tsv_lines_per_input_best_first(tiny_model, tiny_translator,
                                                           distinct, capsys):
    sentences = [distinct[0], "", distinct[1], distinct[2]]
    code, out, _ = run_cli(capsys, "--model", tiny_model, "--beam", "3", "--nbest", "3",
                           *sentences)
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == 3 * len(sentences)
    assert all(len(row) == 3 for row in rows)
    assert [int(row[0]) for row in rows] == [i for i in range(len(sentences)) for _ in range(3)]
    api = tiny_translator.translate(sentences, beam=3, nbest=3)
    for index, hyps in enumerate(api):
        mine = rows[3 * index: 3 * index + 3]
        scores = [float(row[1]) for row in mine]
        assert scores == sorted(scores, reverse=True)
        assert [row[2] for row in mine] == [h.text for h in hyps]
        assert [row[1] for row in mine] == [f"{h.score:.4f}" for h in hyps]


def test_cli_json_prints_one_object_per_input(tiny_model, tiny_translator, distinct, capsys):
    sentences = [distinct[0], "", distinct[1]]
    code, out, _ = run_cli(capsys, "--model", tiny_model, "--beam", "1", "--json", *sentences)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    api = tiny_translator.translate(sentences, beam=1, return_scores=True)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["translation"] for r in records] == [h.text for h in api]
    assert [r["score"] for r in records] == pytest.approx([h.score for h in api])


def test_cli_scores_prints_score_tab_text(tiny_model, tiny_translator, distinct, capsys):
    sentences = distinct[:3]
    code, out, _ = run_cli(capsys, "--model", tiny_model, "--beam", "1", "--scores",
                           *sentences)
    assert code == 0
    api = tiny_translator.translate(sentences, beam=1, return_scores=True)
    assert out.splitlines() == [f"{h.score:.4f}\t{h.text}" for h in api]


def test_cli_plot_attention_writes_png_sized_by_the_tokens(tiny_model, tiny_translator,
                                                           distinct, tmp_path, capsys):
    png = tmp_path / "attention.png"
    code, out, err = run_cli(capsys, "--model", tiny_model, "--beam", "1", "--plot-attention",
                             png, distinct[4], distinct[0])
    assert code == 0 and str(png) in err
    hyp = tiny_translator.translate(distinct[4], beam=1, return_attention=True)
    assert len(hyp.tokens) > 0
    # translator/plot.py: figsize (max(4, 0.45 * source + 1.5), max(3, 0.4 * target + 1.5))
    width = max(4.0, 0.45 * len(hyp.source_tokens) + 1.5) * 100
    height = max(3.0, 0.4 * len(hyp.tokens) + 1.5) * 100
    actual = png_size(png)
    assert abs(actual[0] - width) <= 1 and abs(actual[1] - height) <= 1, (actual, width, height)


def test_cli_plot_attention_of_the_first_stdin_line(tiny_model, distinct, tmp_path, capsys,
                                                    monkeypatch):
    read_end, write_end = os.pipe()
    os.write(write_end, f"{distinct[4]}\n{distinct[0]}\n".encode("utf-8"))
    os.close(write_end)
    with os.fdopen(read_end, "r") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        png = tmp_path / "attention.png"
        code, out, _ = run_cli(capsys, "--model", tiny_model, "--beam", "1",
                               "--plot-attention", png)
    assert code == 0 and len(out.splitlines()) == 2
    assert png.read_bytes()[:8] == PNG_SIGNATURE


@pytest.fixture(scope="module")
def scored_files(multi30k_slice):
    """20 test sentences and their German references."""
    pairs = multi30k_slice["test"][:20]
    return [en for en, _ in pairs], [de for _, de in pairs]


def _half_matching_references(tiny_translator, sources, references) -> list[str]:
    """Every other reference replaced by the model's own output, so BLEU is not trivial."""
    outputs = tiny_translator.translate(sources, beam=1)
    return [out if i % 2 == 0 else ref for i, (out, ref) in enumerate(zip(outputs, references))]


def test_cli_reference_prints_bleu_and_chrf_with_signatures(tiny_model, tiny_translator,
                                                            scored_files, tmp_path, capsys):
    sources, references = scored_files
    references = _half_matching_references(tiny_translator, sources, references)
    src = write_bytes(tmp_path / "in.txt", "\n".join(sources).encode("utf-8") + b"\n")
    ref = write_bytes(tmp_path / "ref.txt", "\n".join(references).encode("utf-8") + b"\n")
    dst = tmp_path / "out.txt"
    code, _, err = run_cli(capsys, "--model", tiny_model, "--beam", "1", "--quiet",
                           "--input", src, "--output", dst, "--reference", ref)
    assert code == 0, err
    outputs = dst.read_text(encoding="utf-8").splitlines()
    assert outputs == tiny_translator.translate(sources, beam=1)
    expected_bleu, expected_chrf = bleu(outputs, references, "de"), chrf(outputs, references)
    lines = err.splitlines()
    assert str(expected_bleu) in lines
    assert str(expected_chrf) in lines
    assert "nrefs:1" in expected_bleu.signature and "version:" in expected_bleu.signature
    assert "version:" in expected_chrf.signature


def test_cli_reference_with_scores_on_a_file(tiny_model, tiny_translator, scored_files,
                                             tmp_path, capsys):
    sources, references = scored_files
    src = write_bytes(tmp_path / "in.txt", "\n".join(sources).encode("utf-8") + b"\n")
    ref = write_bytes(tmp_path / "ref.txt", "\n".join(references).encode("utf-8") + b"\n")
    code, _, err = run_cli(capsys, "--model", tiny_model, "--beam", "1", "--quiet", "--scores",
                           "--input", src, "--output", tmp_path / "out.txt", "--reference", ref)
    assert code == 0, err
    outputs = tiny_translator.translate(sources, beam=1)
    assert str(bleu(outputs, references, "de")) in err.splitlines()


# ---- translate.py input errors ---------------------------------------------------------


@pytest.mark.parametrize("options", [[], ["--nbest", "2", "--beam", "2"], ["--json"],
                                     ["--scores"]])
def test_cli_shards_concatenated_in_order_equal_the_whole_output(
        tiny_model, distinct, tmp_path, capsys, options):
    """--shard I/N: the N outputs concatenated in order are byte-identical to the whole
    file's output, in every format (the n-best and JSON line numbers are the file's)."""
    lines = distinct[:11] + [""] + distinct[11:20]  # 21 lines, one blank
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    whole = tmp_path / "whole.txt"
    assert translate_main(["--model", str(tiny_model), "--quiet", "--input", str(src),
                           "--output", str(whole), *options]) == 0
    parts = []
    for index in (1, 2, 3, 4):
        out = tmp_path / f"part-{index}.txt"
        assert translate_main(["--model", str(tiny_model), "--quiet", "--input", str(src),
                               "--output", str(out), "--shard", f"{index}/4", *options]) == 0
        parts.append(out.read_bytes())
    assert b"".join(parts) == whole.read_bytes()
    if not options:
        assert [len(p.splitlines()) for p in parts] == [5, 5, 5, 6]
    assert "(shard 4/4)" in capsys.readouterr().err


def test_more_shards_than_lines_gives_empty_shards(tiny_translator, distinct, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(distinct[:5]), encoding="utf-8")  # no final newline
    tiny_translator.translate_file(src, tmp_path / "whole.txt", progress=False)
    parts = []
    for index in range(1, 8):
        assert tiny_translator.translate_file(src, tmp_path / f"{index}.txt", progress=False,
                                              shard=(index, 7)) == (index * 5 // 7
                                                                    - (index - 1) * 5 // 7)
        parts.append((tmp_path / f"{index}.txt").read_bytes())
    assert b"".join(parts) == (tmp_path / "whole.txt").read_bytes()
    assert parts.count(b"") == 2


@pytest.mark.parametrize("spec, message", [
    ("0/4", "I must be between 1 and N"), ("5/4", "I must be between 1 and N"),
    ("2", "write I/N"), ("a/b", "write I/N")])
def test_cli_bad_shard_exits_2(tiny_model, tmp_path, capsys, spec, message):
    src = tmp_path / "in.txt"
    src.write_text("A dog.\n", encoding="utf-8")
    assert translate_main(["--model", str(tiny_model), "--input", str(src), "--output",
                           str(tmp_path / "out.txt"), "--shard", spec]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()
    assert translate_main(["--model", str(tiny_model), "--shard", "1/2", "A dog."]) == 2
    assert "--shard splits a file" in capsys.readouterr().err


def test_api_translate_file_shard_and_reference_of_a_shard(tiny_model, tiny_translator,
                                                           distinct, tmp_path, capsys):
    src, ref = tmp_path / "in.txt", tmp_path / "ref.txt"
    src.write_text("\n".join(distinct[:10]) + "\n", encoding="utf-8")
    ref.write_text("\n".join(distinct[:10]) + "\n", encoding="utf-8")  # any text will do
    assert tiny_translator.translate_file(src, tmp_path / "o.txt", progress=False,
                                          shard=(2, 3)) == 3
    expected = tiny_translator.translate(distinct[3:6])
    assert (tmp_path / "o.txt").read_text(encoding="utf-8").splitlines() == expected
    assert translate_main(["--model", str(tiny_model), "--quiet", "--input", str(src),
                           "--output", str(tmp_path / "o2.txt"), "--shard", "2/3",
                           "--reference", str(ref)]) == 0
    err = capsys.readouterr().err
    assert f"BLEU = {bleu(expected, distinct[3:6], 'de').score:.2f}" in err


def test_cli_invalid_utf8_input_fails_naming_the_line(tiny_model, distinct, tmp_path, capsys):
    data = f"{distinct[0]}\n".encode("utf-8") + INVALID_UTF8 + f"{distinct[1]}".encode("utf-8")
    src, dst = write_bytes(tmp_path / "in.txt", data), tmp_path / "out.txt"
    code, _, err = run_cli(capsys, "--model", tiny_model, "--quiet", "--input", src,
                           "--output", dst)
    assert code != 0
    assert "line 2" in err and "Traceback" not in err
    assert not dst.exists()

    code, _, err = run_cli(capsys, "--model", tiny_model, "--quiet", "--errors", "replace",
                           "--input", src, "--output", dst)
    assert code == 0, err
    assert dst.read_bytes().count(b"\n") == 3


def test_file_translation_killed_midway_leaves_no_output_and_reruns_byte_identically(
        tiny_model, tiny_translator, distinct, tmp_path):
    lines = [distinct[i % len(distinct)] for i in range(20_000)]
    src = write_bytes(tmp_path / "in.txt", "".join(f"{line}\n" for line in lines).encode())
    dst = tmp_path / "out.txt"
    command = [sys.executable, "translate.py", "--model", str(tiny_model), "--quiet",
               "--beam", "1", "--input", str(src), "--output", str(dst)]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            partial = [p for p in tmp_path.glob(".tmp-*-out.txt") if p.stat().st_size > 0]
        except FileNotFoundError:  # renamed between the listing and the look
            partial = []
        if partial:
            break
        time.sleep(0.02)
    process.kill()  # SIGKILL: no clean-up runs
    process.wait()
    assert partial and process.returncode == -9, "the kill must land while output is written"
    assert not dst.exists(), "a killed translation leaves nothing under the output's name"

    subprocess.run(command, cwd=ROOT, check=True, timeout=600)
    reference = tmp_path / "reference.txt"
    tiny_translator.translate_file(src, reference, progress=False, beam=1)
    assert dst.read_bytes() == reference.read_bytes()
    assert dst.read_bytes().count(b"\n") == len(lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt", "reference.txt"]


def test_cli_missing_input_file_exits_2_naming_it(tiny_model, tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    code, _, err = run_cli(capsys, "--model", tiny_model, "--input", missing,
                           "--output", tmp_path / "out.txt")
    assert code == 2 and "missing.txt" in err


@pytest.mark.parametrize("beam", [1, 5])
def test_kernel_and_tf_ops_give_the_same_translations(
        tiny_model, tiny_float32, distinct, beam, monkeypatch):
    """The compiled kernels and TensorFlow's ops (the fallback) translate the same in
    float32 (each traces its own search function): the same n-best texts, scores within
    1e-5."""
    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("TRANSLATOR_NATIVE", flag)
        translator = _in_float32(tiny_model) if flag == "0" else tiny_float32
        results[flag] = translator.translate(distinct[:20], beam=beam, nbest=min(beam, 3),
                                             return_scores=True)
    for kernel_nbest, ops_nbest in zip(results["1"], results["0"]):
        if beam == 1:  # one Hypothesis per input, not a list
            kernel_nbest, ops_nbest = [kernel_nbest], [ops_nbest]
        assert [h.text for h in kernel_nbest] == [h.text for h in ops_nbest]
        np.testing.assert_allclose([h.score for h in kernel_nbest],
                                   [h.score for h in ops_nbest], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beam", [1, 5])
def test_kernel_and_tf_ops_translate_alike_in_bfloat16(
        tiny_model, distinct, beam, monkeypatch):
    """In the model's bfloat16 the two paths round differently (the kernels compute in
    float32 and round once; TensorFlow rounds the attention scores and weights to
    bfloat16, and its sigmoid and tanh are ~1e-7 from the kernel's): near-ties can go
    either way, but most translations are the same and the scores close."""
    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("TRANSLATOR_NATIVE", flag)
        results[flag] = Translator.load(tiny_model).translate(distinct[:20], beam=beam,
                                                              return_scores=True)
    same = [a.text == b.text for a, b in zip(results["1"], results["0"])]
    assert sum(same) >= 16, f"only {sum(same)} of 20 translations agree"
    for a, b, equal in zip(results["1"], results["0"], same):
        if equal:
            assert a.score == pytest.approx(b.score, rel=0.02)
