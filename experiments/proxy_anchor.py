"""Table 3 of the SVMax paper, in analog: Proxy-Anchor with SVMax lambda in {0, 1e-4, 1e-3}.

The paper adds SVMax to the Proxy-Anchor loss (Kim et al., CVPR 2020) at d = 512 and reports a
marginal effect. This script trains ``keras_featreg.losses.ProxyAnchorLoss`` (margin 0.1,
alpha 32, its ``ProxyHead`` owning one proxy per training class) on the embedding of
``table1.py``'s small CNN, with bounded SVMax of weight lambda on the L2-normalized embedding
(``attach_regularizer(model, SVMax(lam), layers="embedding")``), and reports NMI, R@1, R@8
and the test embeddings' s_mu with its bounds, per lambda, mean +- std over seeds.

Optimizer: AdamW with weight decay 1e-4, as Proxy-Anchor's recipe, at lr 1e-3 for every
weight, proxies included (Proxy-Anchor fine-tunes an ImageNet network at 1e-4 with 100x on
the proxies; this network starts from scratch and Keras has one learning rate per
optimizer); the lr is held for K/2 iterations then decayed polynomially (table1.py's
schedule); class-balanced 36 x 4 batches (b = 144).

Examples::

    python experiments/proxy_anchor.py --dataset glyphs          # 3 lambdas x 3 seeds
    python experiments/proxy_anchor.py --quick                    # smoke test on digits
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

SCRIPT = "proxy_anchor"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--dataset", choices=("digits", "fashion_mnist", "glyphs"),
                        default="glyphs", help="(default: %(default)s)")
    parser.add_argument("--glyph-classes", type=int, default=400,
                        help="--dataset glyphs: characters, half of them training classes")
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 1e-4, 1e-3],
                        help="SVMax weights, 0 = no regularizer (default: the paper's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--iterations", type=int, default=None,
                        help="K (default: table1.py's per dataset: glyphs 1000, digits 300)")
    parser.add_argument("--dim", type=int, default=512, help="(default: %(default)s, the paper's)")
    parser.add_argument("--classes-per-batch", type=int, default=36)
    parser.add_argument("--samples-per-class", type=int, default=4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--tag", default=None, help="output prefix (default: proxy_anchor_<dataset>)")
    parser.add_argument("--merge", nargs="+", metavar="RUNS_CSV", default=None,
                        help="train nothing: merge *_runs.csv files of earlier (e.g. parallel) "
                             "invocations into one table under --out/--tag")
    _common.add_common_args(parser, default_out=os.path.join("runs", "proxy_anchor"))
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset = "digits" if args.dataset == "glyphs" else args.dataset
        args.iterations = args.iterations or 4
        args.seeds = args.seeds[:1]
    args.test_samples = 300 if args.quick else None
    args.train_samples = 1000 if args.quick else None
    args.tag = args.tag or f"proxy_anchor_{args.dataset}"
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
from keras_featreg.layers import attach_regularizer, embedding_model  # noqa: E402
from keras_featreg.losses import ProxyAnchorLoss  # noqa: E402
from keras_featreg.regularizers import SVMax  # noqa: E402


def run(args, train, test, lam, seed):
    (x_tr, y_tr), (x_te, y_te) = train, test
    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    num_classes = int(np.max(y_tr)) + 1
    loss = ProxyAnchorLoss(num_classes=num_classes, embedding_size=args.dim)
    net = table1.build_embedding_model(x_tr.shape[1:], dim=args.dim, width=args.width,
                                       hidden=args.hidden)
    if lam > 0:
        attach_regularizer(net, SVMax(factor=lam), layers="embedding")
    model = keras.Model(net.inputs, loss.head(name="proxies")(net.outputs[0]))
    schedule = table1.ConstantThenPolynomialDecay(args.lr, args.iterations)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay),
                  loss=loss)
    p = min(args.classes_per_batch, num_classes)
    dataset = data_lib.class_balanced_dataset(x_tr, y_tr, p, args.samples_per_class,
                                              seed=seed, replace=True)
    start = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=args.iterations, epochs=1, verbose=0,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    train_seconds = time.perf_counter() - start
    final_loss = float(history.history["loss"][-1])
    emb = evaluation.embed(embedding_model(model), x_te, batch_size=512, verbose=0)
    row = {"dataset": args.dataset, "lambda": lam, "seed": seed, "dim": args.dim,
           "batch_size": p * args.samples_per_class, "lr": args.lr,
           "iterations": args.iterations, "final_loss": final_loss,
           "train_seconds": train_seconds}
    finite = math.isfinite(final_loss) and np.all(np.isfinite(emb))
    scores = evaluation.evaluate_retrieval(emb, y_te, ks=(1, 8)) if finite else {}
    stats = metrics.spectrum_statistics(emb) if finite else {}
    row.update({"nmi": scores.get("nmi", math.nan),
                "r@1": 100.0 * scores.get("recall@1", math.nan),
                "r@8": 100.0 * scores.get("recall@8", math.nan),
                "test_s_mu": stats.get("s_mu", math.nan),
                "test_s_mu_lower": stats.get("s_mu_lower", math.nan),
                "test_s_mu_upper": stats.get("s_mu_upper", math.nan),
                "diverged": int(not finite)})
    return row


def summarize(rows):
    table = []
    for lam in sorted({r["lambda"] for r in rows}):
        runs = [r for r in rows if r["lambda"] == lam]
        out = {"lambda": lam, "seeds": len(runs), "diverged": sum(r["diverged"] for r in runs)}
        for key in ("nmi", "r@1", "r@8", "test_s_mu", "train_seconds"):
            out[f"{key}_mean"], out[f"{key}_std"] = _common.mean_std(r[key] for r in runs)
        out["test_s_mu_upper"] = runs[0]["test_s_mu_upper"]
        table.append(out)
    base = {r["seed"]: r["r@1"] for r in rows if r["lambda"] == 0}
    for t in table:
        deltas = [r["r@1"] - base[r["seed"]] for r in rows
                  if r["lambda"] == t["lambda"] and r["seed"] in base]
        t["delta_r@1_mean"], t["delta_r@1_std"] = (
            _common.mean_std(deltas) if t["lambda"] != 0 and deltas else (math.nan, math.nan))
    return table


def markdown_table(table):
    lines = ["| SVMax λ | NMI | R@1 (%) | R@8 (%) | ΔR@1 | test s_μ (U) | train s |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        delta = ("-" if not math.isfinite(t["delta_r@1_mean"])
                 else f"{t['delta_r@1_mean']:+.1f} ± {t['delta_r@1_std']:.1f}")
        diverged = (f" ({int(t['diverged'])} of {int(t['seeds'])} diverged)" if t["diverged"]
                    else "")
        lines.append(
            f"| {t['lambda']:g}{diverged} | {t['nmi_mean']:.3f} ± {t['nmi_std']:.3f} | "
            f"{t['r@1_mean']:.1f} ± {t['r@1_std']:.1f} | {t['r@8_mean']:.1f} ± "
            f"{t['r@8_std']:.1f} | {delta} | {t['test_s_mu_mean']:.2f} ± "
            f"{t['test_s_mu_std']:.2f} ({t['test_s_mu_upper']:.2f}) | "
            f"{t['train_seconds_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def read_runs(paths):
    import csv

    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += [{k: (v if k == "dataset" else float(v)) for k, v in row.items()}
                     for row in csv.DictReader(f)]
    return rows


def write_results(rows, prefix):
    table = summarize(rows)
    _common.write_csv(rows, prefix + "_runs.csv")
    _common.write_csv(table, prefix + "_table.csv")
    md = markdown_table(table)
    with open(prefix + "_table.md", "w") as f:
        f.write(md)
    print("\n" + md)
    print(f"[{SCRIPT}] wrote {prefix}_runs.csv, _table.csv, _table.md")
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
          f"{len(np.unique(test[1]))} disjoint classes; d={args.dim}, K={args.iterations}")
    rows = []
    for seed in args.seeds:
        for lam in args.lambdas:
            row = run(args, train, test, lam, seed)
            rows.append(row)
            print(f"  lambda {lam:g} seed {seed}: R@1 {row['r@1']:.2f}  NMI {row['nmi']:.3f}  "
                  f"test s_mu {row['test_s_mu']:.3f} (U={row['test_s_mu_upper']:.3f})  "
                  f"{row['train_seconds']:.0f}s", flush=True)
    write_results(rows, os.path.join(out, args.tag))
    print(f"[{SCRIPT}] total {time.perf_counter() - t0:.0f}s")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
