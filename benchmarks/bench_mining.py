"""Cost of semi-hard and batch-all triplet mining against the contrastive loss (O(b^2 d)).

(a) forward+backward median ms of each loss on L2-normalized ``(b, 128)`` embeddings of a
    ``b/4 x 4`` batch, ``tf.function`` without and with XLA (``jit_compile``), at
    b = 144, 480, 1800, with the ratio to the contrastive loss at the same b and setting.
    The cases are timed in interleaved rounds (A B C ... A B C ...) so machine drift hits
    them alike; the ratios come from one run. "old" rows are the O(b^3) forms the library
    used before (``mining._batch_semi_hard_cubic``, ``mining.batch_all`` through the
    ``MinedTriplets`` path), timed up to b = 480 (at 1800 a ``(b, b, b)`` float32 tensor is
    23 GB). The soft batch-all keeps O(b^3) time (no sorted form): timed up to b = 480.
    "PML" rows: pytorch-metric-learning's semi-hard miner and all-triplets loss on torch CPU
    (same embeddings, same run, up to b = 480) when torch and PML are installed.
(b) peak extra memory of one forward+backward (tracing and compilation included), each
    case in a fresh subprocess: the peak of the resident set size (``/proc/self/statm``,
    sampled every 0.2 ms by a thread; TensorFlow's kernels release the GIL) minus its value
    just before the call, the same case having run at b = 16 first (TensorFlow and its
    kernels loaded). ``ru_maxrss`` cannot be used: TensorFlow's import peaks higher than
    the steps. Linux only; CPU memory (allocator caching included, so an upper bound).

Run:  python benchmarks/bench_mining.py                 (~5 min on 2 CPU cores)
      python benchmarks/bench_mining.py --quick         (b = 144, 480; memory at 480)
      python benchmarks/bench_mining.py --soft-1800     (also the soft batch-all at 1800:
                                                         minutes, O(b^3) time)
Exits non-zero if a target fails: at b = 480 without XLA, semi-hard and batch-all (hinge)
cost <= 3x the contrastive loss; at b = 1800 their forward+backward needs <= 1 GiB extra.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import _timing  # noqa: I001  (environment first; standard library only)

CASES = ("contrastive", "semi-hard", "semi-hard old", "all", "all old", "all soft")
TARGET_RATIO, TARGET_MIB = 3.0, 1024.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="b = 144 and 480 only")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--soft-1800", action="store_true",
                        help="also time and measure the soft batch-all at b = 1800 (minutes)")
    parser.add_argument("--memory-case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1800, help=argparse.SUPPRESS)
    parser.add_argument("--jit", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_timing.import_keras()  # TensorFlow and Keras, without TensorFlow's native start-up lines

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_featreg import losses as lr  # noqa: E402
from keras_featreg.miners import _triplets as mining  # noqa: E402


def _old_all(distances, labels):
    return mining.batch_all(distances, labels)  # not `batch_all` itself: the cubic path


def loss_fn(case, labels):
    if case == "contrastive":
        return lambda x: lr.contrastive_loss(labels, x)
    kwargs = {
        "semi-hard": {"mining": "semi_hard"},
        "semi-hard old": {"mining": mining._batch_semi_hard_cubic},
        "all": {"mining": "all"},
        "all old": {"mining": _old_all},
        "all soft": {"mining": "all", "soft": True},
    }[case]
    return lambda x: lr.triplet_loss(labels, x, **kwargs)


def inputs(b, d=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, d)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return tf.constant(np.repeat(np.arange(b // 4 + 1), 4)[:b]), tf.constant(x)


def pml_steps(b):
    """PML 2.9 on torch CPU, same embeddings: {"PML semi-hard": step, "PML all": step}, or {}
    when torch / pytorch-metric-learning is not installed. PML's semi-hard is
    ``TripletMarginMiner("semihard")`` (every triplet with 0 < d_an - d_ap <= m, not FaceNet's
    one negative per pair) and its "all" ``TripletMarginLoss`` without a miner; both build
    (b, b, b) tensors, so they are timed up to b = 480."""
    if b > 480:
        return {}
    try:
        import torch
        from pytorch_metric_learning import losses as pml_losses
        from pytorch_metric_learning import miners as pml_miners
    except ImportError:
        return {}
    torch.set_num_threads(2)
    labels, x = inputs(b)
    y = torch.tensor(labels.numpy())
    e = torch.tensor(x.numpy(), requires_grad=True)
    loss = pml_losses.TripletMarginLoss(margin=0.2)
    miner = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")

    def step(mined):
        def run():
            e.grad = None
            value = loss(e, y, miner(e, y)) if mined else loss(e, y)
            value.backward()
            return value.item()
        return run

    return {"PML semi-hard": step(True), "PML all": step(False)}


def runs_at(case, b, jit, soft_1800):
    if b > 480 and case.endswith("old"):
        return False
    if b > 480 and case == "all soft":
        return soft_1800 and not jit
    return not (jit and case == "all soft" and b > 144)  # XLA's softplus: 10 s at 480


def speed(batches, rounds, soft_1800, rows, failures):
    for b in batches:
        labels, x = inputs(b)
        for jit in (False, True):
            tag = "XLA" if jit else "no XLA"
            cases = [c for c in CASES if runs_at(c, b, jit, soft_1800)]
            compiled = {c: _timing.fwd_bwd(loss_fn(c, labels), jit) for c in cases}
            steps = {c: (lambda f=compiled[c]: [t.numpy() for t in f(x)]) for c in cases}
            if not jit:  # PML has no XLA form: timed once per b, in the no-XLA rounds
                steps.update(pml_steps(b))
                cases = list(steps)
            times = {c: [] for c in cases}
            for c in cases:  # compile and warm up
                steps[c]()
            slow = {c for c in cases if c.endswith("old") or c == "all soft"}
            for r in range(rounds):
                for c in cases:
                    if c in slow and r >= 2:
                        continue
                    t0 = time.perf_counter()
                    steps[c]()
                    times[c].append(time.perf_counter() - t0)
            base = statistics.median(times["contrastive"])
            for c in cases:
                t = statistics.median(times[c])
                rows.append((b, tag, c, f"{1e3 * t:.1f}", f"{t / base:.1f}x"))
                if b == 480 and not jit and c in ("semi-hard", "all") and t / base > TARGET_RATIO:
                    failures.append(f"{c} at b=480 ({tag}): {t / base:.1f}x > {TARGET_RATIO}x contrastive")
            print(f"  timed b={b} ({tag})", file=sys.stderr, flush=True)


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_during(fn, interval_s=2e-4):
    """(resident set size before `fn()` in MiB, its peak while `fn()` runs), sampled by a
    thread every `interval_s` (TensorFlow's kernels release the GIL)."""
    import threading

    before, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return before, max(peak[0], _rss_mib())


def measure_memory(case, b, jit):
    """Runs in a fresh process: peak resident-memory rise during one forward+backward at b
    (tracing, compilation and the step), the same case having run at b = 16 first."""
    labels, x = inputs(16)
    [t.numpy() for t in _timing.fwd_bwd(loss_fn(case, labels), jit)(x)]
    labels, x = inputs(b)
    step = _timing.fwd_bwd(loss_fn(case, labels), jit)
    before, peak = _peak_rss_during(lambda: [t.numpy() for t in step(x)])
    return peak - before


def memory(b, soft_1800, rows, failures):
    for jit in (False, True):
        tag = "XLA" if jit else "no XLA"
        for case in CASES:
            if not runs_at(case, b, jit, soft_1800) and not (case.endswith("old") and b <= 480):
                continue
            command = [sys.executable, os.path.abspath(__file__), "--memory-case", case,
                       "--batch", str(b), "--jit", str(int(jit))]
            t0 = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                rows.append((b, tag, case, "failed: " + proc.stderr.strip()[-200:], ""))
                continue
            mib = float(proc.stdout.strip().splitlines()[-1])
            rows.append((b, tag, case, f"{mib:.0f}", f"{seconds:.0f}"))
            if b == 1800 and case in ("semi-hard", "all") and mib > TARGET_MIB:
                failures.append(f"{case} at b=1800 ({tag}): {mib:.0f} MiB > {TARGET_MIB:.0f} MiB")
            print(f"  memory b={b} {case} ({tag})", file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.memory_case:
        print(f"{measure_memory(args.memory_case, args.batch, bool(args.jit)):.1f}")
        return 0
    batches = [144, 480] if args.quick else [144, 480, 1800]
    failures, speed_rows, memory_rows = [], [], []
    print("(a) forward+backward, median ms; ratio = loss / contrastive loss (same b, same run)",
          flush=True)
    speed(batches, args.rounds, args.soft_1800, speed_rows, failures)
    print(_timing.table(speed_rows, ["b", "compile", "loss", "ms", "ratio"]))
    memory_batch = 480 if args.quick else 1800
    print(f"\n(b) peak extra memory of one forward+backward at b = {memory_batch} (MiB, resident "
          "set rise during the call; wall s of the subprocess incl. start-up)", flush=True)
    memory(memory_batch, args.soft_1800, memory_rows, failures)
    print(_timing.table(memory_rows, ["b", "compile", "loss", "peak extra MiB", "wall s"]))
    if failures:
        print("\nTARGETS MISSED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall targets measured here hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
