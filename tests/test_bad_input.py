"""Bad input, fed to every reader: the training data reader, the tokenizer, the Translator
API, translate.py (arguments, stdin, files), train.py, the config loader and the model
folder loader. Each case gets a result (with as many output lines as input lines) or a
clear error naming the file and line. The README's table of inputs and faults lists them.

The texts are real Multi30k sentences with the odd characters put in; the model is the
session's tiny model (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from translator import config as config_lib
from translator import files
from translator.cli import train_main, translate_main
from translator.data.corpus import CorpusError, load_splits, read_lines, read_parallel, read_tsv
from translator.model_folder import ModelFolderError
from translator.translator import Translator

ROOT = Path(__file__).resolve().parent.parent

# name: (file bytes, lines a reader must see). A "line" ends at "\n" only, as for `wc -l`;
# a last line without "\n" counts.
TEXTS: dict[str, tuple[bytes, int]] = {
    "empty file": (b"", 0),
    "only blank lines": (b"\n   \n\t\n", 3),
    "CRLF line ends": (b"A dog runs.\r\nTwo men sit on a bench.\r\n", 2),
    "UTF-8 byte order mark": (b"\xef\xbb\xbfA dog runs.\nTwo men sit on a bench.\n", 2),
    "NUL bytes": (b"A dog\x00runs.\n\x00\nTwo men sit.\n", 3),
    "control characters": ("A \x07dog \x1b[31mruns\x7f.\nTwo\x08 men\x01 sit.\n".encode(), 2),
    "Unicode line separators inside lines": (
        "A dog\u2028runs.\nTwo\u2029men\x85sit\x0bon\x0ca\x1cbench.\nA lone\rCR.\n".encode(), 3),
    "a 10,000-character line": (("A man rides a bike down the street. " * 278).encode()
                                + b"\nA dog runs.\n", 2),
    "right-to-left text": ("كلب يجري في الحديقة.\nשני גברים יושבים על ספסל.\n".encode(), 2),
    "emoji and astral-plane characters": (
        "A dog 🐕 runs 𝔲𝔫𝔡𝔢𝔯 a tree 👩‍👩‍👧 🇩🇪.\n𝟘𝟙𝟚 𓀀\n".encode(), 2),
    "only punctuation": (b"!?...;:--\n\"'()[]{}\n", 2),
    "mixed scripts": ("A dog 狗 собака Hund ძაღლი runs.\nДва man 在 park.\n".encode(), 2),
    "no final newline": (b"A dog runs.\nTwo men sit on a bench.", 2),
    "SentencePiece's space symbol": ("A \u2581 dog\u2581runs.\n".encode(), 1),
}
BAD_UTF8 = b"A dog runs.\nA man \xff\xfe sits.\nTwo men.\n"


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def output_lines(data: bytes) -> list[str]:
    """Lines as any reader would split them (str.splitlines: also at U+2028, \\r, ...)."""
    return data.decode("utf-8").splitlines()


# ---- the data reader ------------------------------------------------------------------


@pytest.mark.parametrize("case", TEXTS)
def test_reader_sees_every_line_and_only_whole_lines(case, tmp_path):
    data, count = TEXTS[case]
    path = write(tmp_path / "text.txt", data)
    lines = list(read_lines(path))
    assert len(lines) == count == files.count_lines(path)
    assert not any(line.endswith(("\n", "\r")) for line in lines)
    if lines:
        assert not lines[0].startswith("\ufeff"), "the byte order mark is not text"
    assert len(read_parallel(path, path)) == count


def test_reader_invalid_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path / "train.en", BAD_UTF8)
    with pytest.raises(CorpusError, match=r"train\.en, line 2: invalid UTF-8"):
        list(read_lines(path))


def test_misaligned_training_files_name_both_files_and_counts(tmp_path):
    src = write(tmp_path / "train.en", b"A dog.\nA cat.\nA man.\n")
    tgt = write(tmp_path / "train.de", b"Ein Hund.\nEine Katze.\n")
    with pytest.raises(CorpusError, match=r"train\.en has 3 lines but .*train\.de has 2"):
        read_parallel(src, tgt)


def test_tsv_with_a_missing_column_names_the_line_and_extra_columns_are_ignored(tmp_path):
    good = write(tmp_path / "good.tsv", b"A dog.\tEin Hund.\tCC-BY 2.0 (France)\tx\n"
                                        b"A cat.\tEine Katze.\n")
    assert read_tsv(good) == [("A dog.", "Ein Hund."), ("A cat.", "Eine Katze.")]
    bad = write(tmp_path / "bad.tsv", b"A dog.\tEin Hund.\nA cat. Eine Katze.\n")
    with pytest.raises(CorpusError, match=r"bad\.tsv, line 2: expected source<TAB>target"):
        read_tsv(bad)


def own_data(tmp_path: Path, train: bytes, dev: bytes = b"A dog.\n") -> config_lib.DataConfig:
    src, tgt = write(tmp_path / "train.en", train), write(tmp_path / "train.de", train)
    dev_src, dev_tgt = write(tmp_path / "dev.en", dev), write(tmp_path / "dev.de", dev)
    return config_lib.load(overrides=[f"data.train_src={src}", f"data.train_tgt={tgt}",
                                      f"data.dev_src={dev_src}", f"data.dev_tgt={dev_tgt}"]).data


@pytest.mark.parametrize("case", ["empty file", "only blank lines"])
def test_training_data_with_nothing_to_learn_is_refused_naming_the_files(case, tmp_path):
    with pytest.raises(CorpusError, match=r"no training pairs to learn from in .*train\.en"):
        load_splits(own_data(tmp_path, TEXTS[case][0]))


def test_an_empty_dev_set_is_refused_naming_it(tmp_path):
    with pytest.raises(CorpusError, match=r"dev set .*dev\.en and .*dev\.de is empty"):
        load_splits(own_data(tmp_path, b"A dog.\n", dev=b""))


def test_train_py_on_bad_data_exits_2_naming_file_and_line_and_writes_no_folder(
        tmp_path, capsys):
    src = write(tmp_path / "train.en", BAD_UTF8)
    tgt = write(tmp_path / "train.de", b"Ein Hund.\nEin Mann.\nZwei.\n")
    code = train_main(["--preset", "tiny", "--train-src", str(src), "--train-tgt", str(tgt),
                       "--output", str(tmp_path / "model"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "train.en, line 2: invalid UTF-8" in err and "Traceback" not in err
    assert not (tmp_path / "model").exists()


def test_training_on_every_odd_text_gives_a_model_that_translates_it(
        multi30k_slice, tmp_path):
    """The odd lines, as copy pairs, before 1,100 real pairs (the last 500 become the dev
    set): the tokenizer trains on them and the trained model translates them, one output
    per line."""
    from translator.train.run import train

    odd = [line for data, _ in TEXTS.values() for line in data.decode().split("\n")]
    pairs = [(line, line) for line in odd] + multi30k_slice["train"][:1100]
    src = write(tmp_path / "train.en", "".join(f"{s}\n" for s, _ in pairs).encode())
    tgt = write(tmp_path / "train.de", "".join(f"{t}\n" for _, t in pairs).encode())
    config = config_lib.load(preset="tiny", overrides=[
        f"data.train_src={src}", f"data.train_tgt={tgt}", "training.epochs=1",
        "data.dev_limit=20", "data.corpus=null"])
    result = train(config, tmp_path / "model", verbose=0, log=lambda m: None)
    translations = Translator.load(result.folder).translate(odd, beam=1)
    assert len(translations) == len(odd)
    assert all(isinstance(t, str) for t in translations)


# ---- the tokenizer --------------------------------------------------------------------


@pytest.mark.parametrize("case", TEXTS)
def test_tokenizer_round_trips_every_line_exactly(case, tiny_translator):
    tokenizer = tiny_translator.tokenizer
    lines = TEXTS[case][0].decode().split("\n")
    for side in ("src", "tgt"):
        assert tokenizer.decode(tokenizer.encode(lines, side), side) == lines


# ---- translation: the API, files, stdin, arguments -----------------------------------


@pytest.mark.parametrize("case", TEXTS)
def test_api_and_file_translation_give_one_line_per_input_line(case, tiny_translator,
                                                               tmp_path):
    data, count = TEXTS[case]
    src = write(tmp_path / "in.txt", data)
    dst = tmp_path / "out.txt"
    assert tiny_translator.translate_file(src, dst, progress=False, beam=1) == count
    written = dst.read_bytes()
    assert written.count(b"\n") == count
    lines = list(read_lines(src))
    assert output_lines(written) == [files.one_line(t) for t in
                                     tiny_translator.translate(lines, beam=1)]
    assert written.decode().split("\n")[:-1] == output_lines(written)  # no break inside


def test_stdin_file_and_arguments_agree_on_every_odd_line(tiny_model, tiny_translator,
                                                          tmp_path):
    data = b"".join(d if d.endswith(b"\n") or not d else d + b"\n" for d, _ in TEXTS.values())
    src = write(tmp_path / "in.txt", b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n", 3))
    lines = list(read_lines(src))
    command = [sys.executable, "translate.py", "--model", str(tiny_model), "--beam", "1"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    stdin_run = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    args_run = subprocess.Popen(command + [line for line in lines[:6] if line.strip()],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    out, err = stdin_run.communicate(src.read_bytes(), timeout=300)
    assert stdin_run.returncode == 0, err.decode()
    from_args, err = args_run.communicate(timeout=300)
    assert args_run.returncode == 0, err.decode()

    expected = [files.one_line(t) for t in tiny_translator.translate(lines, beam=1)]
    assert out.count(b"\n") == len(lines) == files.count_lines(src)
    assert output_lines(out) == expected
    assert output_lines(from_args) == [files.one_line(t) for t in tiny_translator.translate(
        [line for line in lines[:6] if line.strip()], beam=1)]


def test_any_python_string_gets_a_translation_even_lone_surrogates(tiny_translator):
    odd = ["\ud800 lone surrogate", "a\nnewline", "\u2581", "", " ", "\x00", "\U000f0000"]
    translations = tiny_translator.translate(odd, beam=2)
    assert len(translations) == len(odd) and all(isinstance(t, str) for t in translations)
    assert translations[3] == translations[4] == ""


@pytest.mark.parametrize("argv, message", [
    (["--beam", "0", "A dog."], "decoding.beam"),
    (["--beam", "two", "A dog."], "invalid int value"),
    (["--nbest", "3", "--beam", "2", "A dog."], "nbest"),
    (["--batch-size", "-1", "A dog."], "batch_size"),
    (["--input", "missing.txt", "--output", "out.txt"], "missing.txt: no such file"),
    (["--shard", "3/2", "--input", "in.txt", "--output", "out.txt"], "--shard '3/2'"),
    (["--input", "in.txt"], "--input and --output go together"),
    (["--colour", "blue"], "unrecognized arguments: --colour"),
])
def test_translate_py_bad_arguments_exit_2_with_a_message(argv, message, tiny_model,
                                                          tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "in.txt", b"A dog.\n")
    try:
        code = translate_main(["--model", str(tiny_model), *argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_output_into_a_directory_exits_2_and_leaves_no_temporary(
        tiny_model, tmp_path, capsys):
    src = write(tmp_path / "in.txt", b"A dog.\n")
    (tmp_path / "out").mkdir()
    code = translate_main(["--model", str(tiny_model), "--quiet", "--input", str(src),
                           "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "out is a folder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out"]


# ---- the config loader ----------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("model:\n  dropout: lots\n", "model.dropout"),
    ("model:\n  colour: blue\n", "unknown config key 'model.colour'"),
    ("paint:\n  colour: blue\n", "unknown config section 'paint'"),
    ("- a list\n- not a mapping\n", "mapping"),
    ("model: [1, 2]\n", "section 'model' must be a mapping"),
    ("model:\n  dropout: [0.1\n", "cannot read config"),
    ("training:\n  epochs: !!python/object/apply:os.system ['touch pwned']\n",
     "cannot read config"),
])
def test_bad_config_files_are_refused_naming_the_key_or_the_file(
        text, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "run.yaml", text.encode())
    with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[")):
        config_lib.load(path=path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("data", [b"\xef\xbb\xbfmodel:\n  dropout: 0.2\r\n",
                                  b"model:\r\n  dropout: 0.2\r\n"])
def test_config_with_bom_or_crlf_reads_as_written(data, tmp_path):
    assert config_lib.load(path=write(tmp_path / "run.yaml", data)).model.dropout == 0.2


def test_config_with_invalid_utf8_names_the_file(tmp_path):
    path = write(tmp_path / "run.yaml", b"model:\n  attention: \xff\n")
    with pytest.raises(config_lib.ConfigError, match=r"run\.yaml"):
        config_lib.load(path=path)


# ---- the model folder -----------------------------------------------------------------


def folder_copy(tiny_model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint", "logs"))
    return folder


@pytest.mark.parametrize("name", ["config.yaml", "spm.model", "model.keras"])
def test_folder_missing_a_file_is_refused_naming_it(name, tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    (folder / name).unlink()
    with pytest.raises(ModelFolderError, match=name.replace(".", r"\.")):
        Translator.load(folder)


def test_folder_with_a_truncated_weights_file_is_refused_naming_it(tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    weights = folder / "model.keras"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelFolderError, match=r"model\.keras is corrupt"):
        Translator.load(folder)


def test_folder_from_a_newer_version_is_refused_as_such(tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    card = json.loads((folder / "run.json").read_text())
    assert card["folder_format"] == 1 and card["versions"]["translator"]
    card["folder_format"], card["versions"]["translator"] = 2, "9.0.0"
    (folder / "run.json").write_text(json.dumps(card))
    with open(folder / "config.yaml", "a") as f:
        f.write("search:\n  kind: sampling\n")
    with pytest.raises(ModelFolderError, match=r"written by translator 9\.0\.0 in folder "
                                               r"format 2.*upgrade the translator"):
        Translator.load(folder)


def test_folder_config_with_unknown_keys_suggests_a_newer_version(tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    (folder / "run.json").unlink()
    with open(folder / "config.yaml", "a") as f:
        f.write("search:\n  kind: sampling\n")
    with pytest.raises(ModelFolderError, match=r"config\.yaml is corrupt: unknown config "
                                               r"section 'search'.*newer version"):
        Translator.load(folder)


@pytest.mark.parametrize("text", ["model:\n  dropout: high\n", "\xff", "[1, 2"])
def test_folder_config_with_wrong_types_or_garbage_is_refused_naming_it(
        text, tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    (folder / "config.yaml").write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelFolderError, match=r"config\.yaml is corrupt"):
        Translator.load(folder)


def test_a_translation_holding_a_line_break_is_written_as_one_line():
    """The model writes what its vocabulary holds, byte pieces included: a "\\r" or U+2028
    in a translation would split its output line for some readers."""
    text = "Ein\rHund\u2028läuft\x85im\u2029Park\x0b.\nJa"
    assert files.text_of(text) == "Ein Hund läuft im Park . Ja"
    assert files.text_of(text).splitlines() == [files.text_of(text)]


# ---- temporaries left by killed processes --------------------------------------------


def test_only_the_temporaries_of_dead_processes_of_this_host_are_removed(tmp_path):
    from translator import io_utils

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = io_utils._HOST
    names = {
        "dead": f".tmp-{dead.pid}.{host}-abc_12xy-out.txt",
        "alive": f".tmp-{os.getpid()}.{host}-abc_12xy-out.txt",
        "other host": f".tmp-{dead.pid}.{host}x-abc_12xy-out.txt",
        "other file": f".tmp-{dead.pid}.{host}-abc_12xy-x-out.txt",
        "not a pid": f".tmp-\u00b2.{host}-abc_12xy-out.txt",
        "too long a pid": f".tmp-{'9' * 30}.{host}-abc_12xy-out.txt",
    }
    for name in names.values():
        write(tmp_path / name, b"partial\n")
    assert io_utils.remove_orphans(tmp_path, "out.txt") == [tmp_path / names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for k, n in names.items() if k != "dead")
    assert io_utils.remove_orphans(tmp_path) == [tmp_path / names["other file"]]
