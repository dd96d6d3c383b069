"""Fixtures built from small slices of the real corpora in ../shared/corpora.

The tiny model is trained once per test session (about 20 s on 2 cores) and shared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MIRROR = Path(os.environ.get("TRANSLATOR_MIRROR", ROOT.parent / "shared" / "corpora"))
os.environ["TRANSLATOR_MIRROR"] = str(MIRROR)


def pytest_configure(config):
    if not (MIRROR / "multi30k" / "train.en.gz").exists():
        raise pytest.UsageError(f"the corpus mirror {MIRROR} is missing; set TRANSLATOR_MIRROR")


@pytest.fixture(scope="session")
def mirror() -> Path:
    return MIRROR


@pytest.fixture(scope="session")
def multi30k_slice():
    """The first 2,000 English-German training pairs and the first 100 test pairs."""
    from translator.data.corpus import load_corpus

    return {
        "train": load_corpus("multi30k", "train", "en", "de")[:2000],
        "test": load_corpus("multi30k", "test_2016_flickr", "en", "de")[:100],
    }


@pytest.fixture(scope="session")
def tiny_config():
    from translator import config

    return config.load(preset="tiny", overrides=["training.epochs=3"])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_config) -> Path:
    """A model folder trained with the tiny preset on a real 2,000-pair Multi30k slice."""
    from translator.train.run import train

    folder = tmp_path_factory.mktemp("models") / "tiny"
    train(tiny_config, folder, verbose=0, log=lambda message: None)
    return folder


@pytest.fixture(scope="session")
def tiny_translator(tiny_model):
    from translator.translator import Translator

    return Translator.load(tiny_model)
