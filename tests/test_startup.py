"""A quiet start and `python -m translator info`.

TensorFlow prints start-up lines (absl's 'All log messages before absl::InitializeLog()',
oneDNN, CUDA probes) to the terminal before its log level is read; translator.quiet keeps
them off it. These tests run the commands as a user would, in fresh processes, with no
TF_CPP_MIN_LOG_LEVEL set, and read what reaches stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from translator.kernels import library as native
from translator.quiet import STARTUP_NOISE, startup_lines_filtered

ROOT = Path(__file__).resolve().parent.parent
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} |^WARNING: All log messages", re.MULTILINE)


def run(*command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=600)


def own_lines_only(stderr: str) -> bool:
    """True when every stderr line is one of the project's ('translator: ...')."""
    return all(line.startswith("translator: ") for line in stderr.splitlines())


def test_translate_py_stderr_holds_only_the_projects_own_lines(tiny_model):
    result = run("translate.py", "--model", str(tiny_model), "--beam", "2", "A man is here.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert own_lines_only(result.stderr), result.stderr
    assert not CPP_LOG_LINE.search(result.stderr)


def test_train_py_prints_no_tensorflow_start_up_lines(tmp_path):
    """A run refused for a missing file has imported TensorFlow and the model code first;
    its error is the only line."""
    missing = [str(tmp_path / f"missing.{lang}") for lang in ("en", "de")]
    result = run("train.py", "--preset", "tiny", "--output", str(tmp_path / "m"),
                 "--train-src", missing[0], "--train-tgt", missing[1],
                 "--dev-src", missing[0], "--dev-tgt", missing[1])
    assert result.returncode == 2 and "missing.en" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not CPP_LOG_LINE.search(result.stderr), result.stderr
    assert not re.search(STARTUP_NOISE, result.stderr), result.stderr


def test_import_translator_and_tensorflow_print_nothing():
    result = run("-c", "import translator; from translator.translator import Translator; "
                 "import tensorflow as tf; tf.constant(1.0) + 1")
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_real_error_at_start_up_still_reaches_stderr(capfd):
    """Only the known start-up lines are dropped; anything else is written back."""
    with startup_lines_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1.2 3 cudart_stub.cc:31] Could not find cuda drivers on "
                    b"your machine, GPU will not be used.\n")
        os.write(2, b"libfoo.so: cannot open shared object file\n")
    assert capfd.readouterr().err == "libfoo.so: cannot open shared object file\n"


FAKE_TENSORFLOW = """import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written"
            b" to STDERR\\n")
os.write(2, b"I0000 00:00:17.5 9 port.cc:153] oneDNN custom operations are on. You may see"
            b" slightly different numerical results.\\n")
os.write(2, b"a real problem\\n")
if os.environ.get("FAKE_TF_ABORT"):
    os.abort()
"""


def fake_tensorflow_run(tmp_path, code: str, **env: str) -> subprocess.CompletedProcess:
    """A process that finds a stand-in tensorflow package (noise, a real line, and with
    FAKE_TF_ABORT a crash) before the real one, imports translator, then runs code."""
    (tmp_path / "tensorflow").mkdir(exist_ok=True)
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    script = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import translator; {code}"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_the_import_hook_filters_tensorflows_start_up_lines(tmp_path):
    """Through the hook: the noise is dropped, the real line kept, even after a probe of
    tensorflow's spec (which must not use the hook up)."""
    result = fake_tensorflow_run(tmp_path, "import importlib.util; "
                                 "importlib.util.find_spec('tensorflow'); import tensorflow")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "a real problem\n"


def test_a_crash_during_the_import_still_shows_what_was_printed(tmp_path):
    result = fake_tensorflow_run(tmp_path, "import tensorflow", FAKE_TF_ABORT="1")
    assert result.returncode != 0
    assert "a real problem" in result.stderr and "oneDNN" not in result.stderr


def test_without_a_stderr_tensorflow_still_imports(tmp_path):
    result = fake_tensorflow_run(tmp_path, "sys.stderr = None; import tensorflow")
    assert result.returncode == 0


def test_info_says_what_runs_and_where_the_caches_are():
    """Versions, the CPU and its features, the kernels' state (with the reason when off),
    the precision training would choose, and the cache paths; also as a console script."""
    result = run("-m", "translator", "info")
    assert result.returncode == 0, result.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines())
    for label in ("translator", "python", "tensorflow", "keras", "cpu", "cpu features",
                  "kernels", "training precision", "kernel cache", "corpus cache"):
        assert rows.get(label), f"info has no {label!r} row:\n{result.stdout}"
    assert rows["kernels"] == native.status()
    assert rows["training precision"] in ("auto -> float32", "auto -> mixed_bfloat16")
    console_script = Path(sys.executable).with_name("translator-info")
    assert console_script.exists(), "pip install -e . installs the translator-info script"
    plain = subprocess.run([str(console_script)], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "TRANSLATOR_NATIVE": "0"})
    assert "off: TRANSLATOR_NATIVE=0" in plain.stdout


def test_the_first_search_on_a_machine_times_the_decoder_step_quietly(tiny_model, tmp_path):
    """Where the fused decoder step has not been timed yet, the first search times it while
    the search is being traced: no AutoGraph warning reaches the terminal."""
    if native.library() is None:
        import pytest

        pytest.skip("no compiled kernels here")
    plan = native._state["plan"]
    cache = tmp_path / "cache" / "kernels"
    cache.mkdir(parents=True)
    shutil.copy(plan.library, cache / plan.library.name)  # built, not yet timed
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["TRANSLATOR_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run([sys.executable, "translate.py", "--model", str(tiny_model),
                             "A man is here."], cwd=ROOT, env=env, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stderr
    assert list(cache.glob("*.tuning.json")), "the step was not timed in this process"
    assert "AutoGraph" not in result.stderr and own_lines_only(result.stderr), result.stderr
