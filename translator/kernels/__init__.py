"""Compiled fast paths (optional: everything works without them).

C++ ops in csrc/, compiled on first use for this CPU (build.py, cpu.py), loaded by
library.py, and offered to a model as whole operations by operations.py: the one seam,
translator.model.operations. tuning.py times the fused decoder step once per machine.
docs/kernels.md describes them.
"""

from __future__ import annotations


def choose_operations():
    """The operations a model should run here: the compiled kernels where they load
    (translator.kernels.operations.CompiledOperations), else the plain TensorFlow path.

    The kernels are CPU ops: a model built under a tf.distribute strategy (its replicas
    may sit on other devices) or on a machine with a GPU runs the plain path, whose ops
    TensorFlow places on the model's device, so none is moved to the CPU silently."""
    import tensorflow as tf

    from translator.kernels import library
    from translator.model.operations import PLAIN

    if tf.distribute.has_strategy() or tf.config.list_physical_devices("GPU"):
        return PLAIN
    if library.library() is None:
        return PLAIN
    from translator.kernels.operations import CompiledOperations

    return CompiledOperations()
