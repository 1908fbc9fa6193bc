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

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _study  # noqa: E402,I001  (no Keras yet: --help stays fast)
from _study import _common  # noqa: E402

SCRIPT = "all_layers"
SETTINGS = ("none", "weight_decay", "svmax_embedding", "svmax_all", "vicreg_all")


def parse_args(argv=None):
    parser = _study.make_parser(__doc__, SCRIPT)
    parser.add_argument("--loss", choices=("contrastive", "triplet", "npair", "angular"),
                        default="contrastive", help="(default: %(default)s)")
    parser.add_argument("--contrastive-pairs", choices=("all", "balanced"), default="balanced",
                        help="see table1.py (default: %(default)s, the paper's 72 + 72 pairs)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="learning rate (default: %(default)s, Table 1's largest)")
    parser.add_argument("--batch-size", type=int, default=144)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--svmax-lambda", type=float, default=None,
                        help="SVMax lambda per regularized layer (default: the paper's for "
                             "the loss)")
    parser.add_argument("--vicreg-variance", type=float, default=25.0)
    parser.add_argument("--vicreg-covariance", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=5e-4,
                        help="SGD's decoupled weight decay for the weight_decay setting")
    return _study.finish_args(parser.parse_args(argv), SCRIPT)


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit before Keras is used

_common.import_keras()  # TensorFlow and Keras, without TensorFlow's native start-up lines

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _models import build_embedding_model  # noqa: E402
from _protocol import PAPER_LAMBDA, batch_layout, make_loss  # noqa: E402
from _schedule import ConstantThenPolynomialDecay  # noqa: E402

from keras_featreg import evaluation, metrics  # noqa: E402
from keras_featreg.layers import attach_regularizer  # noqa: E402
from keras_featreg.regularizers import SVMax, VICReg  # noqa: E402


def regularized_layers(model):
    """The Conv2D and Dense layers of the embedding network, input to output."""
    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


def build(args, setting, input_shape):
    """(model, description of what was attached)."""
    model = build_embedding_model(input_shape, dim=args.dim, width=args.width,
                                  hidden=args.hidden)
    lam = PAPER_LAMBDA[args.loss] if args.svmax_lambda is None else args.svmax_lambda
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
    schedule = ConstantThenPolynomialDecay(args.lr, args.iterations)
    weight_decay = args.weight_decay if setting == "weight_decay" else None
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9,
                                     weight_decay=weight_decay)
    model.compile(optimizer=optimizer, loss=make_loss(args.loss, args.contrastive_pairs))
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
    p, l = batch_layout(args.loss, args.batch_size, len(np.unique(y_tr)))
    train_seconds, final_loss = _study.fit(model, x_tr, y_tr, p, l, seed, args.iterations)
    emb = evaluation.embed(model, x_te, batch_size=512, verbose=0)
    row = {"dataset": args.dataset, "loss": args.loss, "setting": setting, "lr": args.lr,
           "seed": seed, "batch_size": p * l, "iterations": args.iterations,
           "regularized_layers": len(attached), "final_loss": final_loss,
           "train_seconds": train_seconds, **_study.evaluate(emb, y_te, final_loss)}
    finite = not row["diverged"]
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
        cells = [NAMES[t["setting"]] + _study.diverged_note(t),
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
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                    label=NAMES[t["setting"]] + _study.diverged_note(t))
    ax.set_xticks(xs, layer_names)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("(s_μ − L) / (U − L), test features")
    ax.set_title("Where each layer's mean singular value sits between its bounds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return _common.save_figure(fig, path)


def write_results(rows, prefix):
    layer_names = [k[4:] for k in rows[0] if k.startswith("pos_")]
    table = summarize(rows)
    _study.write_tables(rows, table, markdown_table(table, layer_names), prefix, SCRIPT)
    plot_positions(table, layer_names, prefix + "_positions.png")
    return table


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        os.makedirs(args.out, exist_ok=True)
        write_results(_study.read_runs(args.merge, ("dataset", "loss", "setting")),
                      os.path.join(args.out, args.tag))
        return None
    out = _common.setup(args, SCRIPT)
    t0 = time.perf_counter()
    train, test = _study.load(args, SCRIPT)
    print(f"[{SCRIPT}] {args.loss} loss"
          f"{' (' + args.contrastive_pairs + ' pairs)' if args.loss == 'contrastive' else ''}, "
          f"lr {args.lr:g}", flush=True)
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
