"""Shared helpers for the benchmarks (TensorFlow backend): environment and timing.

Importing this module is cheap (standard library only). It sets ``KERAS_BACKEND=tensorflow``
unless set and, through examples/_common.py, ``TF_CPP_MIN_LOG_LEVEL=3``; the benchmarks parse
their command line first, then load Keras and TensorFlow with :func:`import_keras`, which
keeps TensorFlow's native start-up lines (absl, oneDNN, CUDA) off stderr.
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
if _EXAMPLES not in sys.path:
    sys.path.append(_EXAMPLES)

from _common import import_keras, native_stderr_filtered  # noqa: E402,F401


def time_call(fn, repeats=7, warmup=2, budget_s=20.0):
    """Median wall time (seconds) of ``fn()`` after ``warmup`` calls; fewer repeats if slow."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 1:
            break
    return statistics.median(times)


def fwd_bwd(fn, jit):
    """``tf.function`` returning ``fn(x)`` and its gradient w.r.t. ``x``, XLA when ``jit``."""
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x)

    return step


def table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [line, sep]
    for r in rows:
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(out)
