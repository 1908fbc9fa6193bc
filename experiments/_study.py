"""What ``all_layers.py`` and ``proxy_anchor.py`` share: arguments, data, the training loop and
merging of ``*_runs.csv`` files. Importing it does not import Keras (``--help`` stays fast);
the functions that train import ``table1`` (and with it Keras) when called."""

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


def make_parser(doc, script):
    """An ArgumentParser with the arguments every study takes; add the study's own after."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(doc.split("\n\n")[1:]))
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
    """table1.py's per-dataset defaults, then its data: (train, test)."""
    import numpy as np
    import table1

    defaults = table1.DATASET_DEFAULTS[args.dataset]
    args.iterations = args.iterations or defaults["iterations"]
    args.image_size = defaults["image_size"]
    if args.test_samples is None:
        args.test_samples = defaults["test_samples"]
    train, test, _ = table1.load_data(args)
    print(f"[{script}] {args.dataset}: train {len(train[1])} images / "
          f"{len(np.unique(train[1]))} classes, test {len(test[1])} / "
          f"{len(np.unique(test[1]))} disjoint classes; K={args.iterations}", flush=True)
    return train, test


def fit(model, x, y, classes_per_batch, samples_per_class, seed, iterations):
    """Trains on class-balanced batches; returns (training seconds, last loss)."""
    import keras

    from keras_featreg import data as data_lib

    dataset = data_lib.class_balanced_dataset(x, y, classes_per_batch, samples_per_class,
                                              seed=seed, replace=True)
    start = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=iterations, epochs=1, verbose=0,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    return time.perf_counter() - start, float(history.history["loss"][-1])


def evaluate(embeddings, labels, final_loss):
    """R@1, R@8 (in %), NMI and the spectrum statistics; NaN for a diverged run."""
    import numpy as np

    from keras_featreg import evaluation, metrics

    finite = math.isfinite(final_loss) and bool(np.all(np.isfinite(embeddings)))
    scores = evaluation.evaluate_retrieval(embeddings, labels, ks=(1, 8)) if finite else {}
    stats = metrics.spectrum_statistics(embeddings) if finite else {}
    return {"nmi": scores.get("nmi", math.nan),
            "r@1": 100.0 * scores.get("recall@1", math.nan),
            "r@8": 100.0 * scores.get("recall@8", math.nan),
            "test_s_mu": stats.get("s_mu", math.nan),
            "test_s_mu_lower": stats.get("s_mu_lower", math.nan),
            "test_s_mu_upper": stats.get("s_mu_upper", math.nan),
            "diverged": int(not finite)}


def read_runs(paths, text_keys):
    """Rows of ``*_runs.csv`` files, every column but `text_keys` as a float."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += [{k: (v if k in text_keys else float(v)) for k, v in row.items()}
                     for row in csv.DictReader(f)]
    return rows


def write_tables(rows, table, markdown, prefix, script):
    """``<prefix>_runs.csv``, ``_table.csv`` and ``_table.md``; prints the Markdown."""
    _common.write_csv(rows, prefix + "_runs.csv")
    _common.write_csv(table, prefix + "_table.csv")
    with open(prefix + "_table.md", "w") as f:
        f.write(markdown)
    print("\n" + markdown)
    print(f"[{script}] wrote {prefix}_runs.csv, _table.csv, _table.md")


def diverged_note(t):
    return f" ({int(t['diverged'])} of {int(t['seeds'])} diverged)" if t["diverged"] else ""
