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

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _study  # noqa: E402,I001  (no Keras yet: --help stays fast)
from _study import _common  # noqa: E402

SCRIPT = "proxy_anchor"


def parse_args(argv=None):
    parser = _study.make_parser(__doc__, SCRIPT)
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 1e-4, 1e-3],
                        help="SVMax weights, 0 = no regularizer (default: the paper's)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--dim", type=int, default=512, help="(default: %(default)s, the paper's)")
    parser.add_argument("--classes-per-batch", type=int, default=36)
    parser.add_argument("--samples-per-class", type=int, default=4)
    return _study.finish_args(parser.parse_args(argv), SCRIPT)


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit before Keras is used

_common.import_keras()  # TensorFlow and Keras, without TensorFlow's native start-up lines

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _models import build_embedding_model  # noqa: E402
from _schedule import ConstantThenPolynomialDecay  # noqa: E402

from keras_featreg import evaluation  # noqa: E402
from keras_featreg.layers import attach_regularizer, embedding_model  # noqa: E402
from keras_featreg.losses import ProxyAnchorLoss  # noqa: E402
from keras_featreg.regularizers import SVMax  # noqa: E402


def run(args, train, test, lam, seed):
    (x_tr, y_tr), (x_te, y_te) = train, test
    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    num_classes = int(np.max(y_tr)) + 1
    loss = ProxyAnchorLoss(num_classes=num_classes, embedding_size=args.dim)
    net = build_embedding_model(x_tr.shape[1:], dim=args.dim, width=args.width,
                                hidden=args.hidden)
    if lam > 0:
        attach_regularizer(net, SVMax(factor=lam), layers="embedding")
    model = keras.Model(net.inputs, loss.head(name="proxies")(net.outputs[0]))
    schedule = ConstantThenPolynomialDecay(args.lr, args.iterations)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay),
                  loss=loss)
    p = min(args.classes_per_batch, num_classes)
    train_seconds, final_loss = _study.fit(model, x_tr, y_tr, p, args.samples_per_class, seed,
                                           args.iterations)
    emb = evaluation.embed(embedding_model(model), x_te, batch_size=512, verbose=0)
    return {"dataset": args.dataset, "lambda": lam, "seed": seed, "dim": args.dim,
            "batch_size": p * args.samples_per_class, "lr": args.lr,
            "iterations": args.iterations, "final_loss": final_loss,
            "train_seconds": train_seconds, **_study.evaluate(emb, y_te, final_loss)}


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
        lines.append(
            f"| {t['lambda']:g}{_study.diverged_note(t)} | {t['nmi_mean']:.3f} ± {t['nmi_std']:.3f} | "
            f"{t['r@1_mean']:.1f} ± {t['r@1_std']:.1f} | {t['r@8_mean']:.1f} ± "
            f"{t['r@8_std']:.1f} | {delta} | {t['test_s_mu_mean']:.2f} ± "
            f"{t['test_s_mu_std']:.2f} ({t['test_s_mu_upper']:.2f}) | "
            f"{t['train_seconds_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def write_results(rows, prefix):
    table = summarize(rows)
    _study.write_tables(rows, table, markdown_table(table), prefix, SCRIPT)
    return table


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        os.makedirs(args.out, exist_ok=True)
        write_results(_study.read_runs(args.merge, ("dataset",)),
                      os.path.join(args.out, args.tag))
        return None
    out = _common.setup(args, SCRIPT)
    t0 = time.perf_counter()
    train, test = _study.load(args, SCRIPT)
    print(f"[{SCRIPT}] Proxy-Anchor, d={args.dim}, AdamW lr {args.lr:g}", flush=True)
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
