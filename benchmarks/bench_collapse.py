"""Time of each collapse measure on an (n, d) float32 embedding matrix, against a plain SVD.

Every measure (RankMe, alpha-ReQ, participation ratio, collapsed dimensions, log-spectrum,
all four through ``collapse_measures``; LiDAR on n/2 samples x 2 views) is timed eagerly on
the TensorFlow backend, as a ratio to the baseline timed in the same run: one
``keras.ops.svd(Z, compute_uv=False)`` of the same matrix.  Target (issue): every measure on
10k x 512 well under a second (one eigendecomposition of the d x d Gram matrix).

Run:  python benchmarks/bench_collapse.py               (10000 x 512)
      python benchmarks/bench_collapse.py --quick       (2000 x 128)
Exits non-zero if a measure takes 1 s or more.
"""

import argparse
import sys

import _timing  # noqa: I001  (environment first; standard library only)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2000 x 128 instead of 10000 x 512")
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_timing.import_keras()

import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_featreg import metrics  # noqa: E402


def run(n, d, repeats, rows, failures, limit_s=1.0):
    rng = np.random.default_rng(0)
    z = ops.convert_to_tensor((rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.5)
                              .astype("float32"))
    views = ops.reshape(z, (n // 2, 2, d))
    base = _timing.time_call(lambda: ops.convert_to_numpy(ops.svd(z, compute_uv=False)),
                             repeats=repeats, warmup=1)
    rows.append(("plain SVD (baseline)", f"{1e3 * base:.0f}", "1.00"))
    cases = {
        "effective_rank": lambda: metrics.effective_rank(z),
        "alpha_req": lambda: metrics.alpha_req(z),
        "participation_ratio": lambda: metrics.participation_ratio(z),
        "collapsed_dimensions": lambda: metrics.collapsed_dimensions(z),
        "log_spectrum": lambda: metrics.log_spectrum(z),
        "collapse_measures (4)": lambda: metrics.collapse_measures(z),
        f"lidar ({n // 2} x 2 views)": lambda: metrics.lidar(views),
    }
    for name, fn in cases.items():
        t = _timing.time_call(lambda fn=fn: ops.convert_to_numpy(
            ops.stack(list(v.values())) if isinstance(v := fn(), dict) else v),
            repeats=repeats, warmup=1)
        rows.append((name, f"{1e3 * t:.0f}", f"{t / base:.2f}"))
        if t >= limit_s:
            failures.append(f"{name}: {t:.2f} s >= {limit_s} s")


def main(argv=None):
    args = parse_args(argv)
    n, d = (2000, 128) if args.quick else (10000, 512)
    rows, failures = [], []
    run(n, d, args.repeats, rows, failures)
    print(f"Collapse measures on a {n} x {d} float32 matrix (TensorFlow, eager; median ms)")
    print(_timing.table(rows, ["measure", "ms", "ratio to SVD"]))
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
