"""Accuracy and cost of the pairwise distance against the plain expansion (TFA's algorithm).

Unit rows in pairs at a known distance t (1e-1, 1e-2, 1e-3), d = 128, float32: the
largest relative error of the pair distances against the float64 distance of the stored
rows, for ``keras_featreg.ops.pairwise.pairwise_distances`` and for the plain expansion
``sqrt(max(|x|^2 + |y|^2 - 2 x.y, 0))``; then forward+backward time of both at b = 144
and 480 (median, ``tf.function``), as a ratio measured in the same run.

    python benchmarks/distance_accuracy.py
"""

import argparse
import sys

import _timing  # noqa: I001  (environment first; standard library only)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help exits here, before TensorFlow is loaded

_timing.import_keras()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from keras_featreg.ops import pairwise as distances  # noqa: E402


def expansion(x):
    sq = ops.sum(ops.square(x), axis=1, keepdims=True)
    d2 = sq + ops.transpose(sq) - 2.0 * ops.matmul(x, ops.transpose(x))
    return distances.safe_sqrt(ops.maximum(d2, 0.0))


def unit_pairs(rng, t, b=64, d=128):
    x = rng.normal(size=(b, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for k in range(0, b, 2):
        v = rng.normal(size=d)
        v -= (v @ x[k]) * x[k]
        v /= np.linalg.norm(v)
        angle = 2.0 * np.arcsin(t / 2.0)
        x[k + 1] = np.cos(angle) * x[k] + np.sin(angle) * v
    return x.astype("float32")


def timed(fn, x):
    step = _timing.fwd_bwd(lambda t: ops.sum(fn(t)), jit=False)
    return lambda: [v.numpy() for v in step(x)]


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    print("| t | expansion max rel. error | pairwise_distances max rel. error |")
    print("|---|---|---|")
    for t in (1e-1, 1e-2, 1e-3):
        x = unit_pairs(rng, t)
        r = x.astype(np.float64)
        ref = np.sqrt(((r[:, None] - r[None]) ** 2).sum(-1))
        near = (np.arange(0, 64, 2), np.arange(1, 64, 2))
        errors = []
        for fn in (expansion, distances.pairwise_distances):
            got = np.asarray(fn(x), np.float64)
            errors.append(np.max(np.abs(got[near] - ref[near]) / ref[near]))
        print(f"| {t:g} | {errors[0]:.2e} | {errors[1]:.2e} |")
    print()
    print("| b x d | expansion fwd+bwd ms | pairwise_distances ms | ratio |")
    print("|---|---|---|---|")
    for b in (144, 480):
        x = tf.random.normal((b, 128), seed=1)
        base = _timing.time_call(timed(expansion, x), repeats=args.repeats)
        ours = _timing.time_call(timed(distances.pairwise_distances, x), repeats=args.repeats)
        print(f"| {b} x 128 | {base * 1e3:.2f} | {ours * 1e3:.2f} | {ours / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
