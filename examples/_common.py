"""Plumbing shared by the example scripts (not part of the library).

Command-line flags common to every example (``--seed``, ``--out``, ``--mixed-precision``,
``--quick``), device reporting, and small matplotlib/CSV helpers. Import this module
*before* Keras: it sets ``TF_CPP_MIN_LOG_LEVEL`` and the Agg matplotlib backend.
"""

import csv
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)


def require_tensorflow_backend(script):
    """For examples with a TensorFlow-only custom ``train_step``: force the TF backend.

    Must be called before Keras is imported. Prints a note when another backend was
    requested through ``KERAS_BACKEND``.
    """
    requested = os.environ.get("KERAS_BACKEND", "tensorflow")
    if requested != "tensorflow":
        print(f"[{script}] uses a TensorFlow custom train_step (tf.GradientTape); "
              f"ignoring KERAS_BACKEND={requested!r} and running on TensorFlow.")
    os.environ["KERAS_BACKEND"] = "tensorflow"


def add_common_args(parser, default_out, default_seed=0):
    """Adds ``--seed``, ``--out``, ``--mixed-precision`` and ``--quick`` to `parser`."""
    parser.add_argument("--seed", type=int, default=default_seed,
                        help="random seed (default: %(default)s)")
    parser.add_argument("--out", default=default_out,
                        help="output folder for CSV/PNG files (default: %(default)s)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="use the mixed_float16 Keras policy (the final embedding layer "
                             "stays float32); only worth it on a GPU")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps on a tiny subset: a smoke test, not a result")
    return parser


def describe_device():
    """One line saying which device the Keras backend will compute on."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            names = []
            for gpu in gpus:
                try:
                    names.append(tf.config.experimental.get_device_details(gpu).get(
                        "device_name", gpu.name))
                except Exception:  # pragma: no cover - details are best effort
                    names.append(gpu.name)
            return f"TensorFlow sees {len(gpus)} GPU(s): {', '.join(names)} -- training on GPU"
        return f"TensorFlow sees no GPU -- training on CPU ({os.cpu_count()} cores)"
    if backend == "jax":
        import jax

        devices = jax.devices()
        kind = devices[0].platform.upper()
        return f"JAX devices: {', '.join(str(d) for d in devices)} -- training on {kind}"
    return f"Keras backend {backend!r}"


def setup(args, script):
    """Seeds, dtype policy and output folder; prints the device. Returns the output path."""
    import keras

    keras.utils.set_random_seed(args.seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # no retracing warnings from repeated predict
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    os.makedirs(args.out, exist_ok=True)
    print(f"[{script}] keras {keras.__version__}, backend={keras.backend.backend()}, "
          f"dtype policy={keras.config.dtype_policy().name}")
    print(f"[{script}] {describe_device()}")
    from keras_featreg.backend import lapack_threads_compete

    if lapack_threads_compete():
        print(f"[{script}] note: JAX on CPU with multi-threaded OpenBLAS: SVMax uses Newton-Schulz; "
              "OPENBLAS_NUM_THREADS=1 makes it use the exact, cheaper Gram eigh (README, 'Speed')")
    return args.out


def mixed_precision_note(args):
    if args.mixed_precision:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if not tf.config.list_physical_devices("GPU"):
                print("note: mixed_float16 on a CPU is slower than float32; it is meant for GPUs")


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def write_csv(rows, path):
    """Writes a list of dicts (union of keys, first-seen order) to `path`."""
    keys = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(key)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in keys})
    return path


def _fmt(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def mean_std(values):
    """(mean, sample std) ignoring NaNs; std is 0 for one value, NaN for none."""
    import numpy as np

    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std


def pyplot():
    """matplotlib.pyplot with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi=80):
    """Saves `fig` as a compact PNG and closes it; returns the path."""
    plt = pyplot()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    print(f"saved {path} ({os.path.getsize(path) / 1024:.0f} KB)")
    return path


def scatter_by_class(ax, points, labels, size=4, alpha=0.7, unit_circle=False):
    """2-D scatter coloured by class (tab10), optional unit circle outline."""
    import numpy as np

    plt = pyplot()
    labels = np.asarray(labels)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10")
    for i, c in enumerate(classes):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=size, alpha=alpha, color=cmap(i % 10),
                   label=str(c), linewidths=0)
    if unit_circle:
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(t), np.sin(t), color="0.7", lw=0.5, zorder=0)
        ax.set_xlim(-1.15, 1.15)
        ax.set_ylim(-1.15, 1.15)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
