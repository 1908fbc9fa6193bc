"""Training-step cost of a feature regularizer on every layer (experiments/all_layers.py).

The five settings of ``experiments/all_layers.py`` (none, weight decay, SVMax on the
embedding, SVMax on every Conv2D/Dense output, VICReg on every Conv2D/Dense output), built by
its ``build()``: table1.py's small CNN on 32 x 32 x 1 inputs, d = 128, the contrastive loss on
the paper's balanced pairs, SGD, b = 144 (36 classes x 4). Each is a separately compiled
model; their steps are timed in interleaved rounds (A B C D E A B ...) on one fixed random
batch so machine drift hits all alike, and the cost is the ratio of median step times against
the unregularized model measured in the same run.

Run:  python benchmarks/bench_all_layers.py [--rounds 15] [--jit-compile]
"""

import argparse
import os
import statistics
import sys
import time

import _timing  # noqa: I001  (environment first; standard library only)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--jit-compile", action="store_true", help="XLA (default: off, as the "
                        "experiment on CPU)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _timing.import_keras()
    import all_layers
    import keras
    import numpy as np

    study = all_layers.parse_args(["--iterations", "1000"])
    rng = np.random.default_rng(0)
    x = rng.random((144, 32, 32, 1)).astype("float32")
    y = np.repeat(np.arange(36), 4).astype("int32")
    models = {}
    for setting in all_layers.SETTINGS:
        keras.utils.clear_session(free_memory=False)
        keras.utils.set_random_seed(0)
        model, _ = all_layers.build(study, setting, x.shape[1:])
        if args.jit_compile:
            model.jit_compile = True
        for _ in range(3):  # compile + warm up
            model.train_on_batch(x, y)
        models[setting] = model
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            for _ in range(args.steps_per_round):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - t0) / args.steps_per_round)
    base = statistics.median(times["none"])
    rows = [(all_layers.NAMES[name], f"{1e3 * statistics.median(ts):.1f}",
             f"{statistics.median(ts) / base:.2f}x") for name, ts in times.items()]
    print(f"small CNN 32x32x1 -> 128, contrastive (balanced pairs), batch 144, jit_compile="
          f"{args.jit_compile}, median step over {args.rounds} interleaved rounds of "
          f"{args.steps_per_round}, Keras backend {keras.backend.backend()}")
    print(_timing.table(rows, ["setting", "step ms", "vs none"]))


if __name__ == "__main__":
    main(sys.argv[1:])
