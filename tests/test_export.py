"""The SavedModel export (translator/export.py): a fresh process with only TensorFlow and
tensorflow-text loads it and translates byte-identically to Translator on the plain path;
the README's TensorFlow Serving request fits its signature."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow_text", reason="the export needs tensorflow-text ([export])")
if os.environ.get("TRANSLATOR_NATIVE") == "0":
    pytest.skip("the export traces TensorFlow's own ops in both suites: "
                "`make test` covers it", allow_module_level=True)

import tensorflow as tf  # noqa: E402

from translator import export  # noqa: E402
from translator.data.tokenizer import ESCAPE, SPACE_SYMBOL, escape, unescape  # noqa: E402
from translator.model.operations import PLAIN  # noqa: E402
from translator.translator import Translator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Real test sentences, and the odd texts a server is sent (tests/test_bad_input.py): blank,
# padded with Unicode spaces, control characters, SentencePiece's space symbol and its
# escape, astral-plane characters, other scripts.
ODD = ["", "   ", "\t\u3000 A dog runs.\u2028 ", "A \x07dog \x1b[31mruns\x7f.",
       f"A {SPACE_SYMBOL} dog{SPACE_SYMBOL}runs.", f"a {ESCAPE}1 b {ESCAPE}{ESCAPE}",
       "A dog 🐕 runs 𝔲𝔫𝔡𝔢𝔯 a tree 👩‍👩‍👧 🇩🇪.", "كلب يجري في الحديقة.",
       "A dog 狗 собака Hund ძაღლი runs.", "!?...;:--", "\u00a0two\u00a0men\u00a0"]

# Runs in a fresh interpreter that cannot import this package: TensorFlow and
# tensorflow-text only. argv: SavedModel folders, then a JSON file of inputs and outputs.
SERVE = """
import importlib.abc, json, sys

class NoTranslator(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "translator" or name.startswith("translator."):
            raise ImportError("the SavedModel must not need the translator package")

sys.meta_path.insert(0, NoTranslator())
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

*folders, data = sys.argv[1:]
with open(data, encoding="utf-8") as f:
    lines = json.load(f)["lines"]
results = []
for folder in folders:
    serve = tf.saved_model.load(folder).signatures["serving_default"]
    out = serve(text=tf.constant([line.encode("utf-8") for line in lines]))
    results.append({"translation": [t.decode("utf-8") for t in out["translation"].numpy()],
                    "score": out["score"].numpy().tolist()})
assert not any(m == "translator" or m.startswith("translator.") for m in sys.modules)
with open(data, "w", encoding="utf-8") as f:
    json.dump({"lines": lines, "results": results}, f)
"""


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    """The tiny model exported twice: with its beam (2) and greedy."""
    out = tmp_path_factory.mktemp("exported")
    return {"beam": export.export(tiny_model, out / "beam" / "1"),
            "greedy": export.export(tiny_model, out / "greedy" / "1", beam=1)}


@pytest.fixture(scope="module")
def plain_translator(tiny_model):
    """The tiny model's Translator on TensorFlow's ops alone (as TRANSLATOR_NATIVE=0)."""
    translator = Translator.load(tiny_model)
    translator.model.use_operations(PLAIN)
    return translator


def test_fresh_process_translates_byte_identically_to_the_plain_translator(
        exported, plain_translator, multi30k_slice, tmp_path):
    lines = [source for source, _ in multi30k_slice["test"]] + ODD
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"lines": lines}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-I", "-c", SERVE, str(exported["beam"]),
                    str(exported["greedy"]), str(data)], check=True, cwd=tmp_path, env=env,
                   capture_output=True)
    served = json.loads(data.read_text(encoding="utf-8"))["results"]
    for result, beam in zip(served, (plain_translator.config.decoding.beam, 1)):
        expected = plain_translator.translate(lines, beam=beam, return_scores=True)
        assert result["translation"] == [h.text for h in expected], f"beam {beam}"
        np.testing.assert_allclose(result["score"], [h.score for h in expected], rtol=1e-6,
                                   err_msg=f"beam {beam}")
        assert result["translation"][len(lines) - len(ODD)] == ""  # a blank line
    assert any(t for t in served[0]["translation"])


# invalid UTF-8: a lone byte, a cut sequence, a surrogate, overlong forms, beyond U+10FFFF
BAD_UTF8 = [b"\xff", b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x80\x80", b"\xc0\xaf",
            b"\xf4\x90\x80\x80"]


def test_invalid_utf8_is_replaced_as_translate_py_errors_replace_does(
        exported, plain_translator):
    raw = [b"A man " + bad + b" sits on a bench." for bad in BAD_UTF8]
    replaced = tf.strings.unicode_transcode(tf.constant(raw), "UTF-8", "UTF-8",
                                            errors="replace", replacement_char=0xFFFD)
    assert [r.decode("utf-8") for r in replaced.numpy()] == [
        r.decode("utf-8", errors="replace") for r in raw]
    serve = tf.saved_model.load(str(exported["beam"])).signatures[export.SIGNATURE]
    out = serve(text=tf.constant(raw[:2]))["translation"].numpy()
    assert [t.decode("utf-8") for t in out] == plain_translator.translate(
        [r.decode("utf-8", errors="replace") for r in raw[:2]])


def test_in_graph_escape_strip_and_unescape_match_the_tokenizer():
    """Every combination of the escape characters, and every code point Python's
    str.strip() removes, against the Python functions the Translator uses."""
    alphabet = [ESCAPE, "1", SPACE_SYMBOL, "a"]
    texts = [""]
    for _ in range(5):
        texts = texts + [t + c for t in texts for c in alphabet if len(t) < 5]
    texts = sorted(set(texts))
    got = export._unescape(tf.constant(texts)).numpy()
    assert [g.decode("utf-8") for g in got] == [unescape(t) for t in texts]
    got = export._escape(tf.constant(texts)).numpy()
    assert [g.decode("utf-8") for g in got] == [escape(t) for t in texts]
    points = [chr(c) for c in range(0x3100) if not 0xD800 <= c <= 0xDFFF]
    padded = [f"{c}{c}x{c}y{c}{c}" for c in points]
    got = tf.strings.regex_replace(tf.constant(padded), export._STRIP, "").numpy()
    assert [g.decode("utf-8") for g in got] == [p.strip() for p in padded]


def test_export_command_replaces_a_folder_whole_and_refuses_bad_arguments(
        tiny_model, tmp_path, capsys):
    out = tmp_path / "served" / "1"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an older export")
    assert export.main(["--model", str(tiny_model), "--out", str(out)]) == 0
    assert (out / "saved_model.pb").is_file() and not (out / "stale.txt").exists()
    assert [p.name for p in out.parent.iterdir()] == ["1"]  # no temporary left
    assert export.main(["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert export.main(["--model", str(tiny_model), "--out", str(tmp_path / "y"),
                        "--beam", "0"]) == 2
    assert "decoding.beam" in capsys.readouterr().err
    assert export.main(["--model", str(tiny_model), "--out", str(tmp_path / "z"),
                        "--length-penalty", "-1"]) == 2
    assert "decoding.length_penalty" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "xyz")


def _readme_request_and_response() -> tuple[dict, dict]:
    """The request body of the README's `curl ... :predict` example and the response shown
    under it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Serve"):]
    request = re.search(r"curl [^\n]*-d '(\{.*?\})'", section, re.S)
    response = re.search(r"```json\n(.*?)```", section, re.S)
    assert request and response, "README: the Serve section's curl request and JSON response"
    return json.loads(request.group(1)), json.loads(response.group(1))


def test_readme_rest_request_fits_the_signature_and_gives_the_readme_response_shape(exported):
    """TensorFlow Serving's REST row format: "instances" holds one value per example for a
    signature with one input; "predictions" holds one object per example with a key per
    output."""
    request, shown = _readme_request_and_response()
    signature = tf.saved_model.load(str(exported["beam"])).signatures[export.SIGNATURE]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == [export.INPUT] == ["text"]
    assert inputs["text"].dtype == tf.string and inputs["text"].shape.as_list() == [None]
    assert set(signature.structured_outputs) == set(export.OUTPUTS)
    instances = request["instances"]
    assert instances and all(isinstance(x, str) for x in instances)
    out = signature(text=tf.constant(instances))
    predictions = [{"translation": t.decode("utf-8"), "score": float(s)}
                   for t, s in zip(out["translation"].numpy(), out["score"].numpy())]
    response = json.loads(json.dumps({"predictions": predictions}))
    assert list(shown) == list(response) == ["predictions"]
    assert len(shown["predictions"]) == len(response["predictions"]) == len(instances)
    for ours, theirs in zip(response["predictions"], shown["predictions"]):
        assert set(ours) == set(theirs) == set(export.OUTPUTS)
        assert isinstance(theirs["translation"], str) and isinstance(theirs["score"], float)
