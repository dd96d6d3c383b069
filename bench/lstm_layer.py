"""One LSTM layer, forward and backward: keras.layers.LSTM against the translator's LSTM
layer on its plain path and on the compiled kernels, timed interleaved in one process.

The three compute the same function (tests/test_model.py holds the translator's layer to
keras.layers.LSTM with the same weights). The case is an encoder direction of the `base`
preset during training: a batch of 64 sentences of 16 tokens, 256 inputs, 256 units;
each timed call runs the layer and the gradient of a loss on its outputs and final state
(tf.function, traced first). Reported: milliseconds per call (medians over repeats) and
each variant's speed relative to keras.layers.LSTM.

Run:  .venv/bin/python bench/lstm_layer.py [--precision mixed_bfloat16] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import flops  # imports translator first: TensorFlow starts quietly


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--time", type=int, default=16)
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default="float32")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--name", default="lstm_layer", help="results file name")
    return parser.parse_args(argv)


def variants(args: argparse.Namespace) -> dict:
    """name -> a traced training step of that layer (same weights for all three)."""
    import keras
    import tensorflow as tf

    from translator import kernels
    from translator.model import PLAIN
    from translator.model.layers import LSTM

    keras.utils.set_random_seed(1)
    x = tf.random.normal([args.batch, args.time, args.inputs])
    ours = LSTM(args.units, dtype=args.precision)
    ours(x)
    reference = keras.layers.LSTM(args.units, return_sequences=True, return_state=True,
                                  dtype=args.precision)
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())

    def step_of(layer, call, operations=None):
        @tf.function
        def step():
            if operations is not None:
                layer.operations = operations
            with tf.GradientTape() as tape:
                outputs, h, c = call(layer)
                loss = (tf.reduce_sum(tf.cast(outputs, tf.float32))
                        + tf.reduce_sum(tf.cast(h, tf.float32))
                        + tf.reduce_sum(tf.cast(c, tf.float32)))
            return tape.gradient(loss, layer.trainable_variables)
        return step

    def ours_call(layer):
        outputs, (h, c) = layer(x, training=True)
        return outputs, h, c

    steps = {"keras.layers.LSTM": step_of(reference, lambda layer: layer(x, training=True)),
             "plain": step_of(ours, ours_call, PLAIN)}
    compiled = kernels.choose_operations()
    if compiled is not PLAIN:
        twin = LSTM(args.units, dtype=args.precision)
        twin(x)
        twin.set_weights(ours.get_weights())
        steps["kernels"] = step_of(twin, ours_call, compiled)
    for step in steps.values():
        step()  # trace
    return steps


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = flops.print_machine()
    steps = variants(args)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(args.repeats):
        order = list(steps) if repeat % 2 == 0 else list(steps)[::-1]
        for name in order:
            start = time.perf_counter()
            for _ in range(args.calls):
                steps[name]()
            times[name].append(1000 * (time.perf_counter() - start) / args.calls)
    medians = {name: flops.median(values) for name, values in times.items()}
    reference = medians["keras.layers.LSTM"]
    print(f"LSTM layer, forward and backward: batch {args.batch}, time {args.time}, "
          f"{args.inputs} inputs, {args.units} units, {args.precision}")
    flops.print_table(["variant", "ms per call", "speed vs keras.layers.LSTM"],
                      [[name, f"{ms:.2f}", f"{reference / ms:.2f}x"]
                       for name, ms in medians.items()])
    flops.write_results(args.name, {"machine": info, "args": vars(args), "ms_per_call": times,
                                    "median_ms": medians,
                                    "speed_vs_keras": {n: reference / ms
                                                       for n, ms in medians.items()}})


if __name__ == "__main__":
    main()
