"""Paper reproduction harness: the SVMax paper's Fig. 5, a GAN on a ring of 8 Gaussians.

(The teaching version, one seed per variant, is ``examples/gan_mixture.py``; this script
trains its variants over several seeds with the example's ``train_gan`` and adds the
mean +- std tables, the per-run CSV and the heatmaps of the first seed.)

Reported per run and averaged over seeds, from 10 000 generated samples at the end of
training: modes covered (a mode counts when at least 1 % of the samples are high-quality
samples of that mode), the percentage of high-quality samples (within 3 sigma = 0.06 of the
nearest mode's centre), and, as a coverage measure that does not also demand that precision,
modes reached (at least 1 % of the samples within 0.25 of the centre). Saved:
``gan_heatmaps.png`` (the generated distribution through training, one column per variant,
ground truth in the last row: paper Fig. 5), ``gan_runs.csv``, ``gan_summary.csv``,
``gan_summary.md``. Runs on TensorFlow, JAX and torch (``KERAS_BACKEND``).

Examples::

    python experiments/gan_fig5.py                       # vanilla vs SVMax, 3 seeds
    python experiments/gan_fig5.py --unrolled-steps 5    # adds unrolled GAN +- SVMax
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import _common  # noqa: E402,I001  (sets TF_CPP_MIN_LOG_LEVEL and the Agg backend first)

SCRIPT = "gan_fig5"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--steps", type=int, default=3000,
                        help="generator steps per run (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds (default: 0 1 2; the heatmaps use the first)")
    parser.add_argument("--lr", type=float, default=0.025,
                        help="Adam learning rate of both networks (the paper: 0.025)")
    parser.add_argument("--svmax-lambda", type=float, default=0.01,
                        help="lambda of the unbounded SVMax, eq. 1 (the paper: 0.01)")
    parser.add_argument("--unrolled-steps", type=int, default=0,
                        help="also train unrolled GANs with K steps (the paper: 5); 0 = off")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--latent-dim", type=int, default=256)
    parser.add_argument("--snapshots", type=int, default=6,
                        help="number of evaluation snapshots during training")
    parser.add_argument("--eval-samples", type=int, default=10000)
    _common.add_common_args(parser, default_out=os.path.join("runs", "gan_fig5"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 40)
        args.snapshots = 2
        args.eval_samples = 1000
        args.batch_size = min(args.batch_size, 128)
        args.seeds = args.seeds or [args.seed]
    args.seeds = args.seeds if args.seeds is not None else [0, 1, 2]
    return args


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before Keras is loaded

_common.import_keras()

import gan_mixture as gan  # noqa: E402  (the tutorial: data, models, train_gan, metrics)
import numpy as np  # noqa: E402


def summarize(rows, variants):
    """Mean +- std per variant, and the Markdown table."""
    summary = []
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant]
        modes = _common.mean_std(r["modes_covered"] for r in runs)
        quality = _common.mean_std(r["high_quality_%"] for r in runs)
        reached = _common.mean_std(r["modes_reached"] for r in runs)
        summary.append({"variant": variant, "seeds": len(runs), "modes_mean": modes[0],
                        "modes_std": modes[1], "high_quality_mean": quality[0],
                        "high_quality_std": quality[1], "reached_mean": reached[0],
                        "reached_std": reached[1],
                        "modes_per_seed": " ".join(str(r["modes_covered"]) for r in runs),
                        "reached_per_seed": " ".join(str(r["modes_reached"]) for r in runs)})
    lines = ["| variant | modes covered, 3σ (of 8) | high-quality samples (%) | "
             f"modes reached, ≤ {gan.COARSE_RADIUS} (of 8) | per seed: covered / reached |",
             "|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['variant']} | {s['modes_mean']:.1f} ± {s['modes_std']:.1f} | "
                     f"{s['high_quality_mean']:.1f} ± {s['high_quality_std']:.1f} | "
                     f"{s['reached_mean']:.1f} ± {s['reached_std']:.1f} | "
                     f"{s['modes_per_seed']} / {s['reached_per_seed']} |")
    return summary, "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    out = _common.setup(args, SCRIPT)
    _common.mixed_precision_note(args)
    variants = ["vanilla", "svmax"]
    if args.unrolled_steps:
        variants += [f"unrolled{args.unrolled_steps}", f"unrolled{args.unrolled_steps}+svmax"]
    print(f"[{SCRIPT}] 8 Gaussians, radius {gan.RADIUS}, sigma {gan.STD}; Adam lr {args.lr} for "
          f"G and D, batch {args.batch_size}, {args.steps} steps; SVMax eq. 1 lambda "
          f"{args.svmax_lambda}")
    t0 = time.perf_counter()
    rows, first = [], {}
    for seed in args.seeds:
        for variant in variants:
            print(f"[{SCRIPT}] {variant}, seed {seed}", flush=True)
            start = time.perf_counter()
            snapshots = gan.train_gan(args, variant, seed)
            seconds = time.perf_counter() - start
            if seed == args.seeds[0]:
                first[variant] = snapshots
            final_step = max(snapshots)
            covered, quality, counts = gan.sample_quality(snapshots[final_step])
            history = [gan.sample_quality(s)[0] for s in snapshots.values()]
            rows.append({
                "variant": variant, "seed": seed, "steps": final_step, "lr": args.lr,
                "lambda": args.svmax_lambda if "svmax" in variant else 0.0,
                "unrolled_steps": args.unrolled_steps if variant.startswith("unrolled") else 0,
                "modes_covered": covered, "high_quality_%": quality,
                "modes_reached": gan.sample_quality(snapshots[final_step],
                                                    radius=gan.COARSE_RADIUS)[0],
                "best_modes_during_training": max(history),
                "mode_counts": " ".join(str(int(c)) for c in counts), "seconds": seconds})
            print(f"    -> modes covered {covered}/8, high-quality {quality:.1f}%, modes "
                  f"reached {rows[-1]['modes_reached']}/8  ({seconds:.1f}s)", flush=True)

    summary, md = summarize(rows, variants)
    print("\n" + md)
    _common.write_csv(rows, os.path.join(out, "gan_runs.csv"))
    _common.write_csv(summary, os.path.join(out, "gan_summary.csv"))
    with open(os.path.join(out, "gan_summary.md"), "w") as f:
        f.write(md)
    truth = gan.sample_real(10_000, np.random.default_rng(123))
    _common.plot_density_grid(first, truth, os.path.join(out, "gan_heatmaps.png"))
    print(f"[{SCRIPT}] total {time.perf_counter() - t0:.0f}s")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
