"""Backend-neutral test helpers (gradients, references), IDX files, script runs."""

import csv
import gzip
import math
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops


def value_and_grad(fn, x, jit=False):
    """(value, d value / d x) of a scalar function, on the active Keras backend.

    With JAX, `jit=True` compiles the whole function once (cheaper for a one-off shape);
    the default runs op by op, whose per-shape compilations are cached across tests.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return np.asarray(value), np.asarray(tape.gradient(value, x))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        value_and_grad = jax.value_and_grad(fn)
        if jit:
            value_and_grad = jax.jit(value_and_grad)
        value, grad = value_and_grad(jnp.asarray(x))
        return np.asarray(value), np.asarray(grad)
    if backend == "torch":
        import torch

        if isinstance(x, torch.Tensor):  # e.g. bfloat16, which NumPy cannot hold
            x = x.detach().clone().requires_grad_(True)
        else:
            x = torch.tensor(np.asarray(x), requires_grad=True)
        value = fn(x)
        value.backward()
        as_np = lambda t: t.detach().cpu().float().numpy() if t.dtype == torch.bfloat16 else t.detach().cpu().numpy()  # noqa: E731
        return as_np(value), as_np(x.grad)
    pytest.skip(f"no gradient helper for backend {backend}")


def jit(fn):
    """``fn`` compiled by XLA on the active backend (tf.function(jit_compile) / jax.jit)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if backend != "jax":
        pytest.skip(f"no XLA-compiled path on the {backend} backend")
    import jax

    return jax.jit(fn)


def numeric_grad(f, x, h=1e-6):
    """Central finite differences of a float64 numpy function."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


def to_np(x):
    return np.asarray(ops.convert_to_numpy(x))


def saved_and_loaded_losses(model, x, tmp_path):
    """``(sum(model.losses), the same after a .keras save/load)`` on input ``x``, and the loaded model."""
    import os

    model(x)
    before = float(sum(to_np(v) for v in model.losses))
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded(x)
    return before, float(sum(to_np(v) for v in loaded.losses)), loaded


def write_idx(path, array, compress):
    """Writes `array` (uint8 or int32) as an IDX file (the MNIST format), gzipped if `compress`."""
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += np.asarray(array.shape, ">i4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(data)


def write_fake_fashion_mnist(folder, train=300, test=100, seed=0):
    """The four Fashion-MNIST IDX files in `folder`: random 28 x 28 uint8 images, labels
    ``i % 10``. For tests of code paths that read Fashion-MNIST, not of the data set."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for stem, n in (("train", train), ("t10k", test)):
        write_idx(os.path.join(folder, f"{stem}-images-idx3-ubyte.gz"),
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), True)
        write_idx(os.path.join(folder, f"{stem}-labels-idx1-ubyte.gz"),
                  (np.arange(n) % 10).astype(np.uint8), True)
    return folder


# What TensorFlow writes to stderr while it loads (absl's banner, INFO lines about oneDNN and
# CUDA): the example scripts and benchmarks must keep it out of their output.
NATIVE_NOISE = ("absl::InitializeLog", "oneDNN", "cuInit", "cudart", "Could not find cuda drivers")
HEAVY_MODULES = ("tensorflow", "keras", "keras_featreg", "jax")


def assert_no_native_noise(stderr):
    noise = [line for line in stderr.splitlines() if any(m in line for m in NATIVE_NOISE)]
    assert not noise, "TensorFlow start-up lines on stderr:\n" + "\n".join(noise)


def script_env():
    """The environment of a plain ``python script.py`` run: the scripts set
    ``TF_CPP_MIN_LOG_LEVEL`` themselves."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def run_help(script, timeout=120):
    """Runs ``python -X importtime <script> --help``; checks that it exits 0, prints its
    usage, imports none of `HEAVY_MODULES` (no TensorFlow: ``--help`` is instant) and leaves
    no TensorFlow start-up lines on stderr. Returns stdout."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(script), "--help"],
                          env=script_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:1000]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    heavy = sorted({name.split(".")[0] for name in imported} & set(HEAVY_MODULES))
    assert not heavy, f"{script} --help imported {heavy}"
    assert_no_native_noise(proc.stderr)
    return proc.stdout


# ---- running the example and experiment scripts ---------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT_TIMEOUT = 300  # seconds; each quick run takes well under a minute on an idle 2-core CPU


def run_script(args, cwd=ROOT, quiet=False):
    """Runs ``python *args`` as a user would (``TF_CPP_MIN_LOG_LEVEL`` unset); returns stdout.
    With `quiet`, also checks that stderr holds no TensorFlow start-up lines."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=script_env(),
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n"
        f"{proc.stderr[-4000:]}")
    if quiet:
        assert_no_native_noise(proc.stderr)
    return proc.stdout


def numbers_after(label, text):
    """Every number printed right after `label` (e.g. 'R@1 97.3' -> [97.3])."""
    pattern = re.escape(label) + r"\s+(-?(?:\d+\.?\d*|nan|inf))"
    return [float(v) for v in re.findall(pattern, text)]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_finite_columns(rows, columns):
    assert rows
    for row in rows:
        for column in columns:
            assert math.isfinite(float(row[column])), (column, row)


def assert_small_png(path):
    assert os.path.isfile(path), path
    size = os.path.getsize(path)
    assert 0 < size < 200 * 1024, (path, size)


# ---- model.export() --------------------------------------------------------------------

def require_tf_saved_model_export():
    """Skips where ``model.export(format="tf_saved_model")`` cannot run."""
    backend = keras.backend.backend()
    if backend == "torch":
        pytest.importorskip(
            "torch_xla", reason="Keras's tf_saved_model export on the torch backend needs torch_xla")
    elif backend not in ("tensorflow", "jax"):
        pytest.skip(f"no tf_saved_model export on the {backend} backend")
    return pytest.importorskip("tensorflow", reason="export writes a TensorFlow SavedModel")


def export_and_reload(model, tmp_path, name="exported"):
    """``model.export()`` to `tmp_path`, then ``tf.saved_model.load`` (kept alive by the caller)."""
    tf = require_tf_saved_model_export()
    path = os.path.join(tmp_path, name)
    model.export(path, verbose=False)
    return tf.saved_model.load(path)
