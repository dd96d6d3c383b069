"""The model in plain Keras 3, in reading order: lstm.py (the LSTM equations), attention.py
(scores, softmax, context), layers.py (the Keras layers holding the weights), seq2seq.py
(the encoder-decoder and its decoder step), loss.py (the training loss), and
operations.py (the one seam through which the compiled kernels replace whole operations);
ensemble.py: several trained models translating together.
"""

from translator.model.ensemble import Ensemble
from translator.model.loss import MaskedCrossEntropy
from translator.model.operations import PLAIN, Operations
from translator.model.seq2seq import SHARED_KEYS, STATIC_KEYS, Seq2Seq

__all__ = ["Ensemble", "MaskedCrossEntropy", "Operations", "PLAIN", "SHARED_KEYS", "STATIC_KEYS",
           "Seq2Seq"]
