"""Plumbing shared by the example scripts and the benchmarks (not part of the library).

Command-line flags common to every example (``--seed``, ``--out``, ``--mixed-precision``,
``--quick``), device reporting, small matplotlib/CSV/Markdown helpers, and the examples'
plumbing that is not what they teach (the Fashion-MNIST subsets and linear probe of
``vicreg_ssl.py``, the GAN's density heatmaps). Importing this module is
cheap (standard library only) and sets the environment: ``TF_CPP_MIN_LOG_LEVEL=3`` and the
Agg matplotlib backend, unless already set. Scripts parse their arguments first (so that
``--help`` never loads TensorFlow), then load Keras with :func:`import_keras`, which drops
the native log lines that TensorFlow writes to stderr while it loads even with
``TF_CPP_MIN_LOG_LEVEL=3`` (absl's "All log messages before absl::InitializeLog()" banner,
"oneDNN custom operations are on", "Could not find cuda drivers", cuInit/cuDNN factory
messages, ...).
"""

import contextlib
import csv
import math
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

# A native (C++) log record: absl's "I0000 00:00:1712345678.123456    4533 port.cc:153] ..."
# or TSL's older "2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ...".
_NATIVE_LOG = re.compile(r"^(?:([IWEF])\d{4} [\d:.]+\s+\d+ "
                         r"|\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) )[^\]\n]*\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# Lines without a record prefix that belong to one: absl's banner, the second line of the
# cpu_feature_guard record.
_NATIVE_EXTRA = re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
                           r"|^To enable the following instructions: .* rebuild TensorFlow")


def _min_log_level():
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def _is_native_noise(line, min_level):
    match = _NATIVE_LOG.match(line)
    if match:
        return _SEVERITY[match.group(1) or match.group(2)] < min_level
    return min_level > 0 and bool(_NATIVE_EXTRA.match(line))


@contextlib.contextmanager
def native_stderr_filtered():
    """Drops the native log records written to file descriptor 2 inside the block whose
    severity is below ``TF_CPP_MIN_LOG_LEVEL`` (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).

    TensorFlow >= 2.17 logs its start-up messages through absl before it reads
    ``TF_CPP_MIN_LOG_LEVEL``, straight to the stderr file descriptor, so Python cannot
    catch them. This block sends that descriptor to a temporary file and, on leaving, writes
    everything else back to stderr unchanged (Python warnings and tracebacks included).
    """
    min_level = _min_log_level()
    if min_level <= 0:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no real stderr descriptor
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = "".join(line for line in text.splitlines(keepends=True)
                           if not _is_native_noise(line, min_level))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def quiet_python_loggers():
    """TensorFlow's and absl's Python loggers: errors only; no warnings from their modules."""
    import logging
    import warnings

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(tensorflow|absl)(\.|$)")
    if "absl.logging" in sys.modules:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


def import_keras(tensorflow=True):
    """Imports Keras, and TensorFlow when `tensorflow` is true (keras_featreg's ``tf.data``
    input pipelines use it on every backend) or Keras runs on it, without TensorFlow's
    native start-up lines (see :func:`native_stderr_filtered`). Returns the keras module.

    Call it after parsing the command line; later ``import keras`` / ``import tensorflow``
    statements then find the loaded modules.
    """
    with native_stderr_filtered():
        if tensorflow or os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
            with contextlib.suppress(ImportError):  # a JAX-only install
                import tensorflow  # noqa: F401
        import keras
    quiet_python_loggers()
    return keras


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
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"torch sees {torch.cuda.device_count()} CUDA device(s) -- training on GPU"
        return f"torch sees no CUDA device -- training on CPU ({os.cpu_count()} cores)"
    return f"Keras backend {backend!r}"


def setup(args, script):
    """Seeds, dtype policy and output folder; prints the device. Returns the output path."""
    import keras

    keras.utils.set_random_seed(args.seed)
    quiet_python_loggers()  # e.g. no retracing warnings from repeated predict
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    os.makedirs(args.out, exist_ok=True)
    print(f"[{script}] keras {keras.__version__}, backend={keras.backend.backend()}, "
          f"dtype policy={keras.config.dtype_policy().name}")
    with native_stderr_filtered():  # the first device query initializes CUDA (cuInit)
        device = describe_device()
    print(f"[{script}] {device}")
    from keras_featreg.backend import lapack_threads_compete

    if lapack_threads_compete():
        print(f"[{script}] note: JAX on CPU with multi-threaded OpenBLAS: SVMax uses Newton-Schulz; "
              "OPENBLAS_NUM_THREADS=1 makes it use the exact, cheaper Gram eigh (docs/design/speed.md)")
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


def fashion_mnist_subsets(sizes, data_dir=None, seed=12345):
    """All 70 000 Fashion-MNIST images with labels (the library's loader, classes 0-4 and
    5-9 pooled), shuffled with `seed` and cut into disjoint ``(x, y)`` subsets of `sizes`."""
    import numpy as np

    from keras_featreg import data as data_lib

    (x_a, y_a), (x_b, y_b) = data_lib.load_fashion_mnist_split(path=data_dir)
    x, y = np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])
    order = np.random.default_rng(seed).permutation(len(y))
    bounds = np.cumsum([0, *sizes])
    return [(x[order[a:b]], y[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]


def image_augmenter(noise_std, shift=0.15):
    """The two-view augmentation of ``vicreg_ssl.py``: random shift (a crop, up to `shift` of
    the size, zero fill), horizontal flip, Gaussian noise of std `noise_std`."""
    import keras

    return keras.Sequential([
        keras.layers.RandomTranslation(shift, shift, fill_mode="constant"),
        keras.layers.RandomFlip("horizontal"),
        keras.layers.GaussianNoise(noise_std)], name="augment")


def linear_probe(encoder, train, test):
    """Top-1 accuracy (%) of a logistic regression (scikit-learn) on the frozen, standardized
    features of `encoder` (a Keras model), trained on ``train = (x, y)``, tested on `test`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f_tr = encoder.predict(train[0], batch_size=512, verbose=0)
    f_te = encoder.predict(test[0], batch_size=512, verbose=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    clf.fit(f_tr, train[1])
    return 100.0 * float(clf.score(f_te, test[1]))


def markdown_table(rows, columns):
    """A Markdown table of `rows` (dicts): `columns` is a list of (header, key, format)."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for _, key, fmt in columns) + " |")
    return "\n".join(lines) + "\n"


def save_table(rows, stem, columns):
    """Writes `rows` to ``stem.csv`` (every key) and ``stem.md`` (the Markdown table of
    :func:`markdown_table` with `columns`), and prints the table. Returns the Markdown."""
    md = markdown_table(rows, columns)
    print("\n" + md)
    write_csv(rows, stem + ".csv")
    with open(stem + ".md", "w") as f:
        f.write(md)
    return md


def bar_panels(rows, label_key, panels, path, title_suffix=""):
    """One horizontal bar chart per panel, side by side, a bar per row labelled by
    ``row[label_key]`` with its value printed; `panels` is a list of
    (key, axis label, axis limit, value format). Saved to `path`."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.5 * len(panels),
                                                           0.6 * len(rows) + 2.5), squeeze=False)
    for ax, (key, label, limit, fmt) in zip(axes[0], panels):
        ax.barh([r[label_key] for r in rows], [r[key] for r in rows], color="tab:blue")
        for i, r in enumerate(rows):
            ax.text(r[key] + 0.01 * limit, i, fmt.format(r[key]), va="center", fontsize=10)
        ax.set(xlim=(0, 1.12 * limit), xlabel=label, ylabel=label_key,
               title=label.split(" (")[0] + title_suffix)
        ax.invert_yaxis()
    fig.tight_layout()
    return save_figure(fig, path)


def plot_density_grid(samples, truth, path, bins=80, extent=3.0, max_rows=6):
    """2-D densities through training (the GAN example's, paper Fig. 5): `samples` maps a
    column title to ``{step: (n, 2) points}``; rows are steps (at most `max_rows`, evenly
    spaced), the last row the data `truth`. Each panel: log(1 + count) heatmap, titled."""
    import numpy as np

    plt = pyplot()
    columns = list(samples)
    steps = sorted(samples[columns[0]])
    if len(steps) > max_rows:
        idx = np.unique(np.linspace(0, len(steps) - 1, max_rows).round().astype(int))
        steps = [steps[i] for i in idx]
    rows = len(steps) + 1
    fig, axes = plt.subplots(rows, len(columns), figsize=(3.2 * len(columns) + 0.4, 3.0 * rows),
                             squeeze=False)
    edges = np.linspace(-extent, extent, bins + 1)
    for c, column in enumerate(columns):
        for r in range(rows):
            ax = axes[r][c]
            pts = truth if r == len(steps) else samples[column][steps[r]]
            pts = pts[np.all(np.isfinite(pts), axis=1)]
            hist, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=[edges, edges])
            ax.imshow(np.log1p(hist.T), origin="lower", cmap="viridis",
                      extent=(-extent, extent, -extent, extent), interpolation="nearest")
            ax.set_xticks([-2, 0, 2])
            ax.set_yticks([-2, 0, 2])
            ax.tick_params(labelsize=10)
            ax.set_xlabel("x", fontsize=10)
            ax.set_ylabel("y", fontsize=10)
            ax.set_title("data (ground truth)" if r == len(steps)
                         else f"{column}, step {steps[r]}", fontsize=11)
    fig.tight_layout()
    fig.suptitle("generated density, log(1 + count)", fontsize=12, y=1.0 + 0.15 / rows)
    return save_figure(fig, path)


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
