"""Feature regularizers on every layer, the question the SVMax paper's review left open.

"I wish a paper evaluates the impact of these feature embedding regularizers when applied on
all layers." This script trains one ranking loss at one (large) learning rate with

* ``none``: no regularizer;
* ``weight_decay``: decoupled weight decay in SGD (``--weight-decay``, every weight);
* ``svmax_embedding``: bounded SVMax on the embedding only (the paper's setting);
* ``svmax_all``: the same SVMax on the output of every Conv2D and Dense layer;
* ``vicreg_all``: VICReg's variance + covariance terms on the output of every Conv2D and
  Dense layer;

attached to a built model with :func:`keras_featreg.layers.attach_regularizer` (convolution
maps are reduced to their channel means, ``feature_reduction="average"``: VICReg's covariance
of a flattened 32 x 32 x 32 map would be a 32 768 x 32 768 matrix). It reports R@1, R@8 and NMI
on the test classes, the training time, and per layer the position of the test features'
mean singular value between its bounds, ``(s_mu - L) / (U - L)`` (0: rank one, 1: all singular
values equal), the same reduction as the regularizer's.

The model, data, schedule and loss come from ``table1.py`` (the paper's Table 1 protocol).

Examples::

    python experiments/all_layers.py --dataset glyphs          # 5 settings x 3 seeds
    python experiments/all_layers.py --quick                    # smoke test on digits
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import _common  # noqa: E402,I001  (sets TF_CPP_MIN_LOG_LEVEL and the Agg backend first)

SCRIPT = "all_layers"
SETTINGS = ("none", "weight_decay", "svmax_embedding", "svmax_all", "vicreg_all")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--dataset", choices=("digits", "fashion_mnist", "glyphs"),
                        default="glyphs", help="(default: %(default)s)")
    parser.add_argument("--glyph-classes", type=int, default=400,
                        help="--dataset glyphs: characters, half of them training classes")
    parser.add_argument("--loss", choices=("contrastive", "triplet", "npair", "angular"), default="contrastive",
                        help="(default: %(default)s)")
    parser.add_argument("--contrastive-pairs", choices=("all", "balanced"), default="balanced",
                        help="see table1.py (default: %(default)s, the paper's 72 + 72 pairs)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="learning rate (default: %(default)s, Table 1's largest)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=None,
                        help="K (default: table1.py's per dataset: glyphs 1000, digits 300)")
    parser.add_argument("--batch-size", type=int, default=144)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--svmax-lambda", type=float, default=None,
                        help="SVMax lambda per regularized layer (default: the paper's for "
                             "the loss)")
    parser.add_argument("--vicreg-variance", type=float, default=25.0)
    parser.add_argument("--vicreg-covariance", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=5e-4,
                        help="SGD's decoupled weight decay for the weight_decay setting")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--tag", default=None, help="output prefix (default: all_layers_<dataset>)")
    parser.add_argument("--merge", nargs="+", metavar="RUNS_CSV", default=None,
                        help="train nothing: merge *_runs.csv files of earlier (e.g. parallel) "
                             "invocations into one table and plot under --out/--tag")
    _common.add_common_args(parser, default_out=os.path.join("runs", "all_layers"))
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset = "digits" if args.dataset == "glyphs" else args.dataset
        args.iterations = args.iterations or 4
        args.seeds = args.seeds[:1]
    args.test_samples = 300 if args.quick else None
    args.train_samples = 1000 if args.quick else None
    args.tag = args.tag or f"all_layers_{args.dataset}"
    return args


def complete_args(args):
    """table1.py's per-dataset defaults (after Keras is imported: --help does not import it)."""
    defaults = table1.DATASET_DEFAULTS[args.dataset]
    args.iterations = args.iterations or defaults["iterations"]
    args.image_size = defaults["image_size"]
    if args.test_samples is None:
        args.test_samples = defaults["test_samples"]
    return args


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit before Keras is used

import table1  # noqa: E402  (imports Keras quietly; the paper's protocol)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_featreg import data as data_lib  # noqa: E402
from keras_featreg import evaluation, metrics  # noqa: E402
from keras_featreg.layers import attach_regularizer  # noqa: E402
from keras_featreg.regularizers import SVMax, VICReg  # noqa: E402


def regularized_layers(model):
    """The Conv2D and Dense layers of the embedding network, input to output."""
    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


def build(args, setting, input_shape):
    """(model, description of what was attached)."""
    model = table1.build_embedding_model(input_shape, dim=args.dim, width=args.width,
                                         hidden=args.hidden)
    lam = (table1.PAPER_LAMBDA[args.loss] if args.svmax_lambda is None
           else args.svmax_lambda)
    attached = []
    if setting == "svmax_embedding":
        attached = attach_regularizer(model, SVMax(factor=lam), layers="embedding")
    elif setting == "svmax_all":
        attached = attach_regularizer(model, SVMax(factor=lam, feature_reduction="average"),
                                      layers=regularized_layers(model))
    elif setting == "vicreg_all":
        reg = VICReg(variance_factor=args.vicreg_variance,
                     covariance_factor=args.vicreg_covariance, feature_reduction="average")
        attached = attach_regularizer(model, reg, layers=regularized_layers(model))
    schedule = table1.ConstantThenPolynomialDecay(args.lr, args.iterations)
    weight_decay = args.weight_decay if setting == "weight_decay" else None
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9,
                                     weight_decay=weight_decay)
    model.compile(optimizer=optimizer, loss=table1.make_loss(args.loss, args.contrastive_pairs))
    return model, attached


def layer_positions(model, x):
    """{layer name: s_mu position of its test features} (conv maps: channel means)."""
    outputs, names = [], []
    for layer in regularized_layers(model):
        out = layer.output
        if len(out.shape) == 4:
            out = keras.layers.GlobalAveragePooling2D()(out)
        outputs.append(out)
        names.append(layer.name)
    features = keras.Model(model.inputs, outputs).predict(x, batch_size=512, verbose=0)
    positions = {}
    for name, f in zip(names, features):
        stats = metrics.spectrum_statistics(np.asarray(f, dtype=np.float64))
        positions[name] = stats["s_mu_position"]
    return positions


def run(args, train, test, setting, seed):
    (x_tr, y_tr), (x_te, y_te) = train, test
    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    model, attached = build(args, setting, x_tr.shape[1:])
    p, l = table1.batch_layout(args.loss, args.batch_size, len(np.unique(y_tr)))
    dataset = data_lib.class_balanced_dataset(x_tr, y_tr, p, l, seed=seed, replace=True)
    start = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=args.iterations, epochs=1, verbose=0,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    train_seconds = time.perf_counter() - start
    final_loss = float(history.history["loss"][-1])
    emb = evaluation.embed(model, x_te, batch_size=512, verbose=0)
    row = {"dataset": args.dataset, "loss": args.loss, "setting": setting, "lr": args.lr,
           "seed": seed, "batch_size": p * l, "iterations": args.iterations,
           "regularized_layers": len(attached), "final_loss": final_loss,
           "train_seconds": train_seconds}
    finite = math.isfinite(final_loss) and np.all(np.isfinite(emb))
    scores = evaluation.evaluate_retrieval(emb, y_te, ks=(1, 8)) if finite else {}
    row.update({"nmi": scores.get("nmi", math.nan),
                "r@1": 100.0 * scores.get("recall@1", math.nan),
                "r@8": 100.0 * scores.get("recall@8", math.nan),
                "diverged": int(not finite)})
    positions = layer_positions(model, x_te) if finite else {
        layer.name: math.nan for layer in regularized_layers(model)}
    row.update({f"pos_{name}": value for name, value in positions.items()})
    return row


def summarize(rows):
    table = []
    for setting in SETTINGS:
        runs = [r for r in rows if r["setting"] == setting]
        if not runs:
            continue
        out = {"setting": setting, "seeds": len(runs),
               "diverged": sum(r["diverged"] for r in runs),
               "regularized_layers": runs[0]["regularized_layers"]}
        keys = ["r@1", "r@8", "nmi", "train_seconds"] + [k for k in runs[0] if
                                                          k.startswith("pos_")]
        for key in keys:
            out[f"{key}_mean"], out[f"{key}_std"] = _common.mean_std(r[key] for r in runs)
        # the fastest finished run: the machine is shared, slower runs measure the neighbours
        finished = [r["train_seconds"] for r in runs if not r["diverged"]]
        out["train_seconds_min"] = min(finished) if finished else math.nan
        table.append(out)
    return table


NAMES = {"none": "none", "weight_decay": "weight decay", "svmax_embedding": "SVMax, embedding",
         "svmax_all": "SVMax, every layer", "vicreg_all": "VICReg, every layer"}


def markdown_table(table, layer_names):
    head = ("| setting | layers | R@1 (%) | R@8 (%) | NMI | train s (fastest) | "
            + " | ".join(f"pos {n}" for n in layer_names) + " |")
    lines = [head, "|" + "---|" * (6 + len(layer_names))]
    for t in table:
        diverged = (f" ({int(t['diverged'])} of {int(t['seeds'])} diverged)" if t["diverged"]
                    else "")
        cells = [NAMES[t["setting"]] + diverged,
                 str(int(t["regularized_layers"])),
                 f"{t['r@1_mean']:.1f} ± {t['r@1_std']:.1f}",
                 f"{t['r@8_mean']:.1f} ± {t['r@8_std']:.1f}",
                 f"{t['nmi_mean']:.3f} ± {t['nmi_std']:.3f}",
                 f"{t['train_seconds_min']:.0f}"]
        cells += [f"{t[f'pos_{n}_mean']:.2f}" for n in layer_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_positions(table, layer_names, path):
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    xs = np.arange(len(layer_names))
    for t in table:
        means = [t[f"pos_{n}_mean"] for n in layer_names]
        stds = [t[f"pos_{n}_std"] for n in layer_names]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=NAMES[t["setting"]])
    ax.set_xticks(xs, layer_names)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("(s_μ − L) / (U − L), test features")
    ax.set_title("Where each layer's mean singular value sits between its bounds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return _common.save_figure(fig, path)


def read_runs(paths):
    import csv

    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows.append({k: (v if k in ("dataset", "loss", "setting") else float(v))
                             for k, v in row.items()})
    return rows


def write_results(rows, prefix):
    layer_names = [k[4:] for k in rows[0] if k.startswith("pos_")]
    table = summarize(rows)
    _common.write_csv(rows, prefix + "_runs.csv")
    _common.write_csv(table, prefix + "_table.csv")
    md = markdown_table(table, layer_names)
    with open(prefix + "_table.md", "w") as f:
        f.write(md)
    plot_positions(table, layer_names, prefix + "_positions.png")
    print("\n" + md)
    print(f"[{SCRIPT}] wrote {prefix}_runs.csv, _table.csv, _table.md, _positions.png")
    return table


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        os.makedirs(args.out, exist_ok=True)
        write_results(read_runs(args.merge), os.path.join(args.out, args.tag))
        return None
    complete_args(args)
    out = _common.setup(args, SCRIPT)
    t0 = time.perf_counter()
    train, test, _ = table1.load_data(args)
    print(f"[{SCRIPT}] {args.dataset}: train {len(train[1])} images / "
          f"{len(np.unique(train[1]))} classes, test {len(test[1])} / "
          f"{len(np.unique(test[1]))} disjoint classes; {args.loss} loss"
          f"{' (' + args.contrastive_pairs + ' pairs)' if args.loss == 'contrastive' else ''}, "
          f"lr {args.lr:g}, K={args.iterations}")
    rows = []
    for seed in args.seeds:
        for setting in args.settings:
            row = run(args, train, test, setting, seed)
            rows.append(row)
            print(f"  {setting:<16} seed {seed}: R@1 {row['r@1']:.2f}  NMI {row['nmi']:.3f}  "
                  f"{row['train_seconds']:.0f}s  positions "
                  + " ".join(f"{row[k]:.2f}" for k in row if k.startswith("pos_")), flush=True)
    write_results(rows, os.path.join(out, args.tag))
    print(f"[{SCRIPT}] total {time.perf_counter() - t0:.0f}s")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
