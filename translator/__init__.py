"""An LSTM encoder-decoder translator with attention: train on your parallel text, then use."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) hides our own messages.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from translator import Translator` without importing TensorFlow for `translator.config`.
    if name == "Translator":
        from translator.translator import Translator

        return Translator
    raise AttributeError(name)
