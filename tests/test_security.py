"""Model folders load without running code from them or touching files outside them.

Crafted folders: weights whose archive carries Python code (a Lambda layer) or names a
function outside Keras, a config with YAML's Python tags or with paths that lead out of
the folder, files that are links to outside it, and a training state that names a
checkpoint outside its folder. Each is refused with a ModelFolderError (or, for the
training state, a ValueError) naming the file, or, for harmless paths in the config,
loaded without those paths ever being opened.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from translator.model_folder import ModelFolderError
from translator.train.run import train
from translator.translator import Translator

# Files opened while `_WATCH` is on (an audit hook cannot be removed, so it stays cheap).
_WATCH: list[bool] = []
_OPENED: list[str] = []
_RAN: list[str] = []
_CODE_EVENTS = {"os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn",
                "pickle.find_class", "marshal.loads"}


def _hook(event: str, args: tuple) -> None:
    if not _WATCH:
        return
    if event == "open" and args and isinstance(args[0], (str, bytes, Path)):
        _OPENED.append(str(args[0]))
    elif event in _CODE_EVENTS:
        _RAN.append(event)


sys.addaudithook(_hook)


class watching:
    """Records the files opened and the code-running events inside the block."""

    def __enter__(self):
        _OPENED.clear()
        _RAN.clear()
        _WATCH.append(True)
        return self

    def __exit__(self, *exc):
        _WATCH.clear()
        self.opened, self.ran = list(_OPENED), list(_RAN)
        return False


def assert_refused_and_nothing_ran(folder: Path, name: str, marker: Path) -> None:
    """Loading `folder` fails naming the file `name`; no code ran, `marker` was not made."""
    with watching() as seen, pytest.raises(ModelFolderError, match=re.escape(name)):
        Translator.load(folder)
    assert seen.ran == [] and not marker.exists()


def folder_copy(tiny_model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("logs", "evaluations"))
    return folder


def test_a_good_folder_loads_with_no_code_run_and_no_file_opened_outside_it(
        tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    with watching() as seen:
        Translator.load(folder)
    assert seen.ran == []
    outside = [p for p in seen.opened if str(tmp_path) in p and not p.startswith(str(folder))]
    assert outside == []
    assert any(p.endswith("model.keras") for p in seen.opened)  # the hook does see opens


def test_weights_carrying_python_code_are_refused_and_the_code_never_runs(
        tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    marker = tmp_path / "code-ran"
    code = (f"lambda x: x * (1 + 0 * __import__('pathlib').Path({str(marker)!r})"
            ".write_text('ran'))")
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(eval(code), output_shape=(2,))(inputs))
    model.save(folder / "model.keras")
    marker.unlink(missing_ok=True)  # in case building the model ran it, here in the test
    with pytest.raises(ModelFolderError, match=r"model\.keras"):
        Translator.load(folder)
    assert not marker.exists()

    # The archive is armed: outside safe mode it loads, and the model runs the code.
    armed = keras.saving.load_model(folder / "model.keras", safe_mode=False)
    armed(np.ones((1, 2), np.float32))
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "exec"),
                                          ("subprocess", "Popen")])
def test_weights_naming_a_function_outside_keras_are_refused(module, name, tiny_model,
                                                             tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    marker = tmp_path / "code-ran"
    archive = folder / "model.keras"
    with zipfile.ZipFile(tiny_model / "model.keras") as original:
        parts = {item: original.read(item) for item in original.namelist()}
    parts["config.json"] = json.dumps({
        "module": module, "class_name": name, "registered_name": name,
        "config": f"touch {marker}", "build_config": {}, "compile_config": None,
    }).encode()
    with zipfile.ZipFile(archive, "w") as crafted:
        for item, data in parts.items():
            crafted.writestr(item, data)
    assert_refused_and_nothing_ran(folder, "model.keras", marker)


def test_config_with_python_tags_is_refused_and_runs_nothing(tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    marker = tmp_path / "code-ran"
    with open(folder / "config.yaml", "a") as f:
        f.write(f"extra: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_refused_and_nothing_ran(folder, "config.yaml", marker)


def test_paths_in_the_config_are_never_followed_when_loading(tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    for name in ("train.en", "train.de", "spm.model", "model.keras"):
        (secret / name).write_text("not for the loader\n")
    text = (folder / "config.yaml").read_text()
    text = text.replace("train_src: null", f"train_src: {secret / 'train.en'}")
    text = text.replace("train_tgt: null", f"train_tgt: {secret / 'train.de'}")
    text = text.replace("mirror: null", f"mirror: {secret}")
    text = text.replace("init_from: null", "init_from: ../secret")
    (folder / "config.yaml").write_text(text)
    with watching() as seen:
        translator = Translator.load(folder)
    assert translator.config.data.mirror == str(secret)  # the crafted config was read
    assert not [p for p in seen.opened if str(secret) in p or "../secret" in p]


@pytest.mark.parametrize("name", ["model.keras", "spm.model", "config.yaml"])
def test_a_file_linking_outside_the_folder_is_refused(name, tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    outside = tmp_path / f"outside-{name}"
    shutil.move(folder / name, outside)
    (folder / name).symlink_to(outside)
    with watching() as seen, pytest.raises(ModelFolderError, match="outside the model folder"):
        Translator.load(folder)
    assert not [p for p in seen.opened if p in (str(folder / name), str(outside))]


def test_a_link_inside_the_folder_is_followed(tiny_model, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    shutil.move(folder / "model.keras", folder / "weights.keras")
    (folder / "model.keras").symlink_to("weights.keras")
    assert Translator.load(folder).translate("A dog runs.", beam=1) is not None


@pytest.mark.parametrize("where", ["parent", "absolute", "hidden"])
def test_a_training_state_naming_a_checkpoint_outside_its_folder_is_refused(
        where, tiny_model, tiny_config, tmp_path):
    folder = folder_copy(tiny_model, tmp_path)
    state_file = folder / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    real = folder / "checkpoint" / state["checkpoint"]  # a loadable checkpoint, put there
    shutil.copy(real, tmp_path / "outside.keras")
    shutil.copy(real, folder / "checkpoint" / ".hidden.keras")
    checkpoint = {"parent": "../../outside.keras", "absolute": str(tmp_path / "outside.keras"),
                  "hidden": ".hidden.keras"}[where]
    state.update(checkpoint=checkpoint, finished=False)
    state_file.write_text(json.dumps(state))
    with watching() as seen, pytest.raises(ValueError, match="not a file of"):
        train(tiny_config, folder, verbose=0, log=lambda m: None)
    assert not [p for p in seen.opened if p.endswith(("outside.keras", ".hidden.keras"))]
