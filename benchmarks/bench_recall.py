"""Benchmark of keras_featreg.evaluation.recall_at_k (chunked) against a naive baseline.

Usage:
    python benchmarks/bench_recall.py [--n 60000] [--dim 128] [--classes 100 10]
                                      [--naive-n 10000] [--repeats 2]

For every class count it times Recall@{1,2,4,8} on n × dim synthetic clustered,
L2-normalized float32 embeddings (best of `--repeats` runs) and measures the peak of
the memory it allocates (tracemalloc, which sees NumPy's buffers; the growth of the
process's RSS, sampled by a thread, is printed too). The naive baseline (full distance matrix +
argpartition/argsort of every row, what one writes without chunking) only fits in
memory for smaller n, so both are timed at `--naive-n` and reported as a ratio; their
recalls must agree. Exits with status 1 when a run at full size exceeds the targets
(10 s, 1 GiB of extra memory) or when the two implementations disagree.
"""

import argparse
import os
import sys
import threading
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _common  # noqa: E402  (standard library only; Keras is loaded after parsing the flags)

KS = (1, 2, 4, 8)
TIME_TARGET_S = 10.0
MEMORY_TARGET_BYTES = 1 << 30


def clustered_embeddings(n, dim, num_classes, seed=0, noise=2.5):
    """L2-normalized Gaussian clusters around random centres (Recall@1 0.6 to 0.95)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, num_classes, n)
    x = centres[labels] + rng.standard_normal((n, dim)).astype(np.float32) * (
        noise / np.sqrt(dim)
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def naive_recall(x, labels, ks=KS):
    """Full n × n distance matrix, then the k nearest of every row."""
    sq = np.einsum("ij,ij->i", x, x)
    d = sq[:, None] + sq[None, :] - 2 * (x @ x.T)
    np.fill_diagonal(d, np.inf)
    k_max = max(ks)
    nearest = np.argpartition(d, k_max - 1, axis=1)[:, :k_max]
    order = np.argsort(np.take_along_axis(d, nearest, axis=1), axis=1)
    nearest = np.take_along_axis(nearest, order, axis=1)
    hits = labels[nearest] == labels[:, None]
    return {k: float(np.mean(hits[:, :k].any(axis=1))) for k in ks}


def _cpu_seconds():
    times = os.times()
    return times.user + times.system


def timed(fn, repeats):
    """(best wall seconds, CPU seconds of that run, result) over `repeats` runs."""
    best, cpu, result = np.inf, np.nan, None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        result = fn()
        wall = time.perf_counter() - start
        if wall < best:
            best, cpu = wall, _cpu_seconds() - start_cpu
    return best, cpu, result


def _current_rss():
    """Resident set size of this process in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def peak_memory(fn):
    """(tracemalloc peak, peak RSS growth) in bytes while running fn.

    tracemalloc sees NumPy's buffers exactly; the RSS growth (current RSS sampled
    every 2 ms by a thread, minus the RSS before) also covers BLAS and thread stacks.
    """
    baseline = _current_rss()
    peak_rss = [baseline or 0]
    done = threading.Event()

    def sample():
        while not done.wait(0.002):
            peak_rss[0] = max(peak_rss[0], _current_rss() or 0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        done.set()
        sampler.join()
    return peak, (peak_rss[0] - baseline if baseline is not None else float("nan"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 10])
    parser.add_argument("--naive-n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=2048)
    args = parser.parse_args(argv)
    _common.import_keras(tensorflow=False)  # without TensorFlow's native start-up lines
    from keras_featreg.evaluation import recall_at_k

    print(f"CPUs: {os.cpu_count()}, load average at start: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}, numpy {np.__version__}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if os.getloadavg()[0] > cpus - 0.5:
        print(f"WARNING: load average {os.getloadavg()[0]:.1f} on {cpus} CPUs: other "
              "processes compete for the CPUs and inflate wall times (see CPU s).")
    rows, ok = [], True
    for num_classes in args.classes:
        x, y = clustered_embeddings(args.n, args.dim, num_classes)
        fn = lambda: recall_at_k(x, y, KS, chunk_size=args.chunk_size)  # noqa: E731
        seconds, cpu, recalls = timed(fn, args.repeats)
        traced, rss = peak_memory(fn)
        passed = seconds <= TIME_TARGET_S and max(traced, rss) <= MEMORY_TARGET_BYTES
        ok &= passed
        rows.append((f"chunked {args.n}x{args.dim}, {num_classes} classes", seconds, cpu,
                     traced, rss, recalls, "ok" if passed else "FAIL"))

    xs, ys = clustered_embeddings(args.naive_n, args.dim, args.classes[0], seed=1)
    fast_s, fast_cpu, fast = timed(lambda: recall_at_k(xs, ys, KS, chunk_size=args.chunk_size),
                         args.repeats)
    naive_s, naive_cpu, naive = timed(lambda: naive_recall(xs, ys), args.repeats)
    naive_mem, naive_rss = peak_memory(lambda: naive_recall(xs, ys))
    fast_mem, fast_rss = peak_memory(lambda: recall_at_k(xs, ys, KS))
    agree = all(abs(fast[k] - naive[k]) <= 2 / args.naive_n for k in KS)
    ok &= agree
    tag = f"{args.naive_n}x{args.dim}, {args.classes[0]} classes"
    rows.append((f"chunked {tag}", fast_s, fast_cpu, fast_mem, fast_rss, fast, ""))
    rows.append((f"naive   {tag}", naive_s, naive_cpu, naive_mem, naive_rss, naive,
                 "agree" if agree else "DISAGREE"))

    header = (f"{'run':<40} {'wall s':>7} {'CPU s':>7} {'peak MiB':>9} {'RSS+ MiB':>9}"
              "  recall@1,2,4,8")
    print(header)
    print("-" * len(header))
    for name, seconds, cpu, traced, rss, recalls, status in rows:
        values = " ".join(f"{recalls[k]:.4f}" for k in KS)
        print(f"{name:<40} {seconds:7.2f} {cpu:7.2f} {traced / 2**20:9.1f} {rss / 2**20:9.1f}  "
              f"{values}  {status}")
    print(f"\nspeed-up over naive at n={args.naive_n}: {naive_s / fast_s:.1f}x "
          f"(memory {naive_mem / max(fast_mem, 1):.1f}x less)")
    print(f"targets at n={args.n}: <= {TIME_TARGET_S:.0f} s and <= 1 GiB extra: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
