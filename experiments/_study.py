"""What the studies (``table1.py``, ``all_layers.py``, ``proxy_anchor.py``) share: arguments,
data (the datasets with disjoint train / test classes and their defaults), the training loop,
evaluation and merging of ``*_runs.csv`` files. Importing it does not import Keras (``--help``
stays fast); the functions that train or evaluate import it when called.

The other harness parts: ``_protocol.py`` (the paper's losses, regularizers, batch layout),
``_schedule.py`` (the learning-rate schedule), ``_models.py`` (the embedding networks, their
compilation), ``_training.py`` (``table1.py``'s runs) and ``_tables.py`` (``table1.py``'s
tables and plots).
"""

import argparse
import csv
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import _common  # noqa: E402,I001  (sets TF_CPP_MIN_LOG_LEVEL and the Agg backend first)

TFDS_DATASETS = ("cars196", "caltech_birds2011", "stanford_online_products")  # the [tfds] extra
DATASETS = ("digits", "fashion_mnist", "glyphs", *TFDS_DATASETS)
# Defaults per dataset: iterations K, test subset (None = all), image size for backbones.
DATASET_DEFAULTS = {
    "digits": {"iterations": 300, "test_samples": None, "image_size": 32},
    "fashion_mnist": {"iterations": 600, "test_samples": 5000, "image_size": 32},
    "glyphs": {"iterations": 1000, "test_samples": None, "image_size": 32},
    "cars196": {"iterations": 5000, "test_samples": None, "image_size": 224},
    "caltech_birds2011": {"iterations": 5000, "test_samples": None, "image_size": 224},
    "stanford_online_products": {"iterations": 20000, "test_samples": None, "image_size": 224},
}


def doc_parser(doc):
    """An ArgumentParser whose description is the first paragraph of `doc`, the rest the
    epilog."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(doc.split("\n\n")[1:]))


def make_parser(doc, script):
    """A :func:`doc_parser` with the arguments every study takes; add the study's own after."""
    parser = doc_parser(doc)
    parser.add_argument("--dataset", choices=("digits", "fashion_mnist", "glyphs"),
                        default="glyphs", help="(default: %(default)s)")
    parser.add_argument("--glyph-classes", type=int, default=400,
                        help="--dataset glyphs: characters, half of them training classes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=None,
                        help="K (default: table1.py's per dataset: glyphs 1000, digits 300)")
    parser.add_argument("--width", type=int, default=32,
                        help="filters of the small CNN's first conv layer")
    parser.add_argument("--hidden", type=int, default=256,
                        help="units of the small CNN's hidden Dense layer")
    parser.add_argument("--tag", default=None,
                        help=f"output prefix (default: {script}_<dataset>)")
    parser.add_argument("--merge", nargs="+", metavar="RUNS_CSV", default=None,
                        help="train nothing: merge *_runs.csv files of earlier (e.g. parallel) "
                             "invocations into one table under --out/--tag")
    _common.add_common_args(parser, default_out=os.path.join("runs", script))
    return parser


def finish_args(args, script):
    """--quick (digits, 4 iterations, one seed, small subsets) and the default tag."""
    if args.quick:
        args.dataset = "digits" if args.dataset == "glyphs" else args.dataset
        args.iterations = args.iterations or 4
        args.seeds = args.seeds[:1]
    args.test_samples = 300 if args.quick else None
    args.train_samples = 1000 if args.quick else None
    args.tag = args.tag or f"{script}_{args.dataset}"
    return args


def load(args, script):
    """The per-dataset defaults (``DATASET_DEFAULTS``), then the data: (train, test)."""
    import numpy as np

    defaults = DATASET_DEFAULTS[args.dataset]
    args.iterations = args.iterations or defaults["iterations"]
    args.image_size = defaults["image_size"]
    if args.test_samples is None:
        args.test_samples = defaults["test_samples"]
    train, test, _ = load_data(args)
    print(f"[{script}] {args.dataset}: train {len(train[1])} images / "
          f"{len(np.unique(train[1]))} classes, test {len(test[1])} / "
          f"{len(np.unique(test[1]))} disjoint classes; K={args.iterations}", flush=True)
    return train, test


def _stratified_subset(x, y, n, seed):
    import numpy as np

    if n is None or n >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    idx = []
    classes = np.unique(y)
    per_class = max(1, n // len(classes))
    for c in classes:
        members = np.flatnonzero(y == c)
        idx.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    idx = np.sort(np.concatenate(idx))
    return x[idx], y[idx]


def load_data(args):
    """((x_train, y_train), (x_test, y_test), input_scale) with disjoint classes."""
    import numpy as np

    from keras_featreg import data as data_lib

    if args.dataset == "digits":
        (x_tr, y_tr), (x_te, y_te) = data_lib.load_digits_split()
    elif args.dataset == "fashion_mnist":
        (x_tr, y_tr), (x_te, y_te) = data_lib.load_fashion_mnist_split()
    elif args.dataset == "glyphs":
        (x_tr, y_tr), (x_te, y_te) = data_lib.load_glyphs_split(
            num_classes=args.glyph_classes, train_classes=args.glyph_classes // 2,
            image_size=args.image_size)
    else:
        (x_tr, y_tr), (x_te, y_te) = data_lib.load_tfds_split(
            args.dataset, image_size=(args.image_size, args.image_size))
    # uint8 images (tfds) stay uint8 in memory and are rescaled inside the model.
    input_scale = 1.0 / 255.0 if x_tr.dtype == np.uint8 else 1.0
    x_tr, y_tr = _stratified_subset(x_tr, y_tr, args.train_samples, seed=1)
    x_te, y_te = _stratified_subset(x_te, y_te, args.test_samples, seed=2)
    return (x_tr, y_tr), (x_te, y_te), input_scale


def fit(model, x, y, classes_per_batch, samples_per_class, seed, iterations,
        steps_per_epoch=None, callbacks=()):
    """Trains `iterations` steps on class-balanced batches, in epochs of `steps_per_epoch`
    (default: one epoch; `callbacks` see their ends); returns (training seconds, last loss)."""
    import keras

    from keras_featreg import data as data_lib

    dataset = data_lib.class_balanced_dataset(x, y, classes_per_batch, samples_per_class,
                                              seed=seed, replace=True)
    steps_per_epoch = steps_per_epoch or iterations
    epochs = max(1, math.ceil(iterations / steps_per_epoch))
    start = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=steps_per_epoch, epochs=epochs, verbose=0,
                        shuffle=False,
                        callbacks=[*callbacks, keras.callbacks.TerminateOnNaN()])
    return time.perf_counter() - start, float(history.history["loss"][-1])


def evaluate(embeddings, labels, final_loss, ks=(1, 8), full=False):
    """R@K (in %), NMI and the spectrum statistics; NaN for a diverged run. With `full`
    (``table1.py``'s rows), also MAP@R (in %; NaN without a test label that occurs twice)
    and the collapsed fraction."""
    import numpy as np

    from keras_featreg import evaluation, metrics

    finite = math.isfinite(final_loss) and bool(np.all(np.isfinite(embeddings)))
    repeated = len(np.unique(labels)) < len(labels)  # MAP@R needs a label that occurs twice
    scores = (evaluation.evaluate_retrieval(embeddings, labels, ks=ks, map_at_r=repeated)
              if finite else {})
    stats = metrics.spectrum_statistics(embeddings) if finite else {}
    row = {"nmi": scores.get("nmi", math.nan)}
    if full:
        row["map@r"] = 100.0 * scores.get("map@r", math.nan)
    row.update({f"r@{k}": 100.0 * scores.get(f"recall@{k}", math.nan) for k in ks})
    row.update({"test_s_mu": stats.get("s_mu", math.nan),
                "test_s_mu_lower": stats.get("s_mu_lower", math.nan),
                "test_s_mu_upper": stats.get("s_mu_upper", math.nan)})
    if full:
        row["collapsed_fraction"] = stats.get("collapsed_fraction", math.nan)
    row["diverged"] = int(not finite)
    return row


def read_runs(paths, text_keys, int_keys=()):
    """Rows of ``*_runs.csv`` files: `text_keys` as strings, `int_keys` as ints (when
    finite), every other column as a float (an empty cell: NaN)."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += [{k: _cell(k, v, text_keys, int_keys) for k, v in row.items()}
                     for row in csv.DictReader(f)]
    return rows


def _cell(key, value, text_keys, int_keys):
    if key in text_keys:
        return value
    number = float(value) if value not in ("", None) else math.nan
    return int(number) if key in int_keys and math.isfinite(number) else number


def write_tables(rows, table, markdown, prefix, script=None):
    """``<prefix>_runs.csv``, ``_table.csv`` and ``_table.md``; prints the Markdown and, given
    `script`, the files written."""
    _common.write_csv(rows, prefix + "_runs.csv")
    _common.write_csv(table, prefix + "_table.csv")
    with open(prefix + "_table.md", "w") as f:
        f.write(markdown)
    print("\n" + markdown)
    if script is not None:
        print(f"[{script}] wrote {prefix}_runs.csv, _table.csv, _table.md")


def diverged_note(t):
    return f" ({int(t['diverged'])} of {int(t['seeds'])} diverged)" if t["diverged"] else ""
