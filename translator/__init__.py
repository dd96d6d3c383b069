"""An LSTM encoder-decoder translator with attention: train on your parallel text, then use."""

import os

from translator import quiet

# TensorFlow's C++ chatter (oneDNN notices, CUDA probes) hides our own messages. Level 3
# keeps its C++ log to FATAL: its errors reach the user as Python exceptions anyway (and
# some of its ERROR lines are not errors, e.g. "oneDNN supports DT_INT32 only on platforms
# with AVX-512", printed on AVX-512 machines). TF_CPP_MIN_LOG_LEVEL=0 shows everything.
# The lines printed before that level is read are filtered by translator.quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
quiet.install()

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from translator import Translator` without importing TensorFlow for `translator.config`.
    if name == "Translator":
        from translator.translator import Translator

        return Translator
    raise AttributeError(name)
