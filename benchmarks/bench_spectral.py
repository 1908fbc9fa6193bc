"""Forward+backward cost and accuracy of SVMax's and VICReg's terms against naive baselines.

(a) forward+backward time of each term for several (b, d), with and without XLA
    (``tf.function(jit_compile=...)``), as a ratio to the naive baseline measured in the same
    run: naive SVMax = paper eq. 4 on ``keras.ops.svd(E, compute_uv=False)`` differentiated
    through the SVD; naive VICReg covariance = the d x d covariance matrix (official code).
(c) accuracy of each nuclear-norm path against a float64 SVD on healthy, half-collapsed
    (rank k/2) and rank-one L2-normalized embeddings, and of the Gram covariance form
    against the d x d formula in float64.

Run:  python benchmarks/bench_spectral.py            (full; ~10-15 min on 2 CPU cores)
      python benchmarks/bench_spectral.py --quick    (two small shapes)
Exits non-zero if an issue-6 target fails (speed targets without XLA at (256, 2048) and
(512, 8192); accuracy 1e-3; covariance >= 10x at 512 x 8192 within 1e-5).
"""

import argparse
import math
import sys

import _timing  # noqa: I001  (environment first; standard library only)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small shapes only")
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_timing.import_keras()  # TensorFlow and Keras, without TensorFlow's native start-up lines

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from keras_featreg.ops import moments, spectral  # noqa: E402
from keras_featreg.regularizers import SVMax  # noqa: E402

SHAPES = [(144, 128), (256, 256), (256, 2048), (1024, 128), (512, 8192)]
# XLA's Jacobi SVD: 962 ms at 144x128 and 16.9 s at 256x256 (REFERENCE.md); larger is minutes.
NAIVE_XLA_MAX_WORK = 256 * 256 * 256


def naive_svmax(x):
    e = spectral.l2_normalize_rows(x)
    b, d = e.shape
    s_mu = ops.sum(ops.svd(e, compute_uv=False)) / d
    lower = math.sqrt(b) / d
    upper = math.sqrt(b * d / max(b, d)) * lower
    return ops.exp((upper - s_mu) / (upper - lower))


def naive_covariance(z):
    zc = z - ops.mean(z, axis=0, keepdims=True)
    c = ops.matmul(ops.transpose(zc), zc) / (z.shape[0] - 1)
    off = c * (1.0 - ops.eye(z.shape[1]))
    return ops.sum(ops.square(off)) / z.shape[1]


def timed(fn, x, jit, repeats):
    step = _timing.fwd_bwd(fn, jit)
    return _timing.time_call(lambda: [t.numpy() for t in step(x)], repeats=repeats, warmup=1)


def speed(shapes, repeats, rows, failures):
    rng = np.random.default_rng(0)
    for b, d in shapes:
        x = tf.constant(rng.standard_normal((b, d)).astype("float32"))
        work = b * d * min(b, d)
        for jit in (False, True):
            tag = "XLA" if jit else "no XLA"
            if jit and work > NAIVE_XLA_MAX_WORK:
                base, base_txt = None, "skipped (minutes)"
            else:
                base = timed(naive_svmax, x, jit, repeats)
                base_txt = f"{1e3 * base:.1f}"
            methods = ["newton_schulz"] if jit else ["svd", "gram", "newton_schulz"]
            auto = SVMax(1.0).penalty if not jit else None
            for method in methods + (["auto"] if auto else []):
                reg = SVMax(1.0, method=method)
                t = timed(reg.penalty, x, jit, repeats)
                ratio = f"{base / t:.2f}x" if base else "-"
                chosen = spectral.resolve_method(x, "auto") if method == "auto" else method
                rows.append((f"SVMax {b}x{d}", tag, method if method != "auto" else f"auto={chosen}",
                             base_txt, f"{1e3 * t:.1f}", ratio))
                if (not jit and method == "auto" and (b, d) in [(256, 2048), (512, 8192)]
                        and base / t < 2.0):
                    failures.append(f"SVMax auto at {b}x{d} without XLA: {base / t:.2f}x < 2x")
        for jit in (False, True):
            tag = "XLA" if jit else "no XLA"
            base = timed(naive_covariance, x, jit, repeats)
            t = timed(lambda z: moments.covariance_penalty(z, "auto"), x, jit, repeats)
            chosen = moments.resolve_covariance_method(x, "auto")
            rows.append((f"VICReg cov {b}x{d}", tag, f"auto={chosen}", f"{1e3 * base:.1f}",
                         f"{1e3 * t:.1f}", f"{base / t:.2f}x"))
            if (b, d) == (512, 8192) and base / t < 10.0:
                failures.append(f"VICReg covariance at 512x8192 ({tag}): {base / t:.2f}x < 10x")
        print(f"  timed {b}x{d}", file=sys.stderr, flush=True)


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def accuracy(shapes, rows, failures):
    rng = np.random.default_rng(1)
    for b, d in shapes:
        k = min(b, d)
        cases = {
            "healthy": _unit_rows(rng.standard_normal((b, d))),
            "half-collapsed": _unit_rows(rng.standard_normal((b, k // 2)) @ rng.standard_normal((k // 2, d))),
            "rank-one": _unit_rows(np.outer(rng.standard_normal(b), rng.standard_normal(d))),
        }
        for name, e in cases.items():
            ref = np.linalg.svd(e, compute_uv=False).sum() / d
            x32 = tf.constant(e.astype("float32"))
            errs = []
            for method in ("svd", "gram", "newton_schulz"):
                y, g = _timing.fwd_bwd(lambda t, m=method: spectral.mean_singular_value(t, m), False)(x32)
                err = abs(float(y) - ref) / ref
                errs.append(f"{err:.1e}")
                if name != "rank-one" and err > 1e-3:
                    failures.append(f"s_mu {method} {b}x{d} {name}: rel err {err:.1e} > 1e-3")
                if not np.all(np.isfinite(g.numpy())):
                    failures.append(f"non-finite gradient: {method} {b}x{d} {name}")
            rows.append((f"{b}x{d}", name, *errs))
        z = rng.standard_normal((b, d))
        zc = z - z.mean(0)
        c = zc.T @ zc / (b - 1)
        ref = (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / d
        got = float(moments.covariance_penalty(tf.constant(z.astype("float32")), "gram"))
        err = abs(got - ref) / ref
        rows.append((f"{b}x{d}", "VICReg cov gram vs float64", f"{err:.1e}", "", ""))
        if (b, d) == (512, 8192) and err > 1e-5:
            failures.append(f"covariance gram 512x8192 rel err {err:.1e} > 1e-5")


def main(argv=None):
    args = parse_args(argv)
    shapes = SHAPES[:2] if args.quick else SHAPES
    failures = []
    speed_rows, acc_rows = [], []
    print("(a) forward+backward, median ms (ratio = naive / ours, same run)", flush=True)
    speed(shapes, args.repeats, speed_rows, failures)
    print(_timing.table(speed_rows, ["term", "compile", "method", "naive ms", "ours ms", "speed-up"]))
    print("\n(c) relative error of s_mu against a float64 SVD (no XLA)")
    accuracy(shapes, acc_rows, failures)
    print(_timing.table(acc_rows, ["shape", "embeddings", "svd", "gram", "newton_schulz"]))
    if failures:
        print("\nTARGETS MISSED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall issue-6 targets measured here hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
