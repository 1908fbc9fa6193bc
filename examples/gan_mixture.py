"""A GAN on a ring of 8 Gaussians, with and without SVMax on the generator (SVMax paper, Sec. 4.2).

The toy problem of Metz et al. (2017, "Unrolled GANs"): 8 Gaussians with sigma = 0.02 on a
circle of radius 2. The paper takes a public PyTorch implementation of that experiment and
changes one thing, the learning rate of both networks to 0.025, to provoke mode collapse;
then it adds the *unbounded* SVMax of eq. 1 on the generator's fake batch,
``L_G = L_GAN - lambda * s_mu`` with lambda = 0.01 and no normalization (the points live on a
radius-2 circle, not the unit sphere): ``SVMax(factor=0.01, bounded=False, normalize=False)``.

Setup here (as the public reference implementations of Metz et al.): generator
z (256-d N(0, 1)) -> 128 tanh -> 128 tanh -> 2; discriminator 2 -> 128 ReLU -> 128 ReLU ->
1 logit, PyTorch's default initialization;
non-saturating GAN loss; Adam(lr=0.025, beta_1=0.5) for both networks; batch 512; one
discriminator step per generator step. ``--unrolled-steps K`` adds the unrolled GAN of the
paper's Fig. 5 (columns 3-4) as the PyTorch reference does it: the generator is updated
against a copy of the discriminator trained K more steps, with no gradient through the
unrolling (first-order), then the discriminator's weights are restored.

Training uses ``model.fit`` with a custom ``train_step`` written with ``tf.GradientTape``:
this example runs on the TensorFlow backend only.

Reported per run and averaged over seeds, from 10 000 generated samples at the end of
training: modes covered (a mode counts when at least 1 % of the samples are high-quality
samples of that mode), the percentage of high-quality samples (within 3 sigma = 0.06 of the
nearest mode's centre), and, as a coverage measure that does not also demand that precision,
modes reached (at least 1 % of the samples within 0.25 of the centre). Saved:
``gan_heatmaps.png`` (the generated distribution through training, one column per variant,
ground truth in the last row: paper Fig. 5), ``gan_runs.csv``, ``gan_summary.csv``,
``gan_summary.md``.

Examples::

    python examples/gan_mixture.py                       # vanilla vs SVMax, 3 seeds
    python examples/gan_mixture.py --unrolled-steps 5    # adds unrolled GAN +- SVMax
"""

import argparse
import math
import os
import sys
import time

import _common  # noqa: I001  (environment first; standard library only)

SCRIPT = "gan_mixture"


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
    _common.add_common_args(parser, default_out=os.path.join("runs", "gan_mixture"))
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
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_common.require_tensorflow_backend(SCRIPT)
_common.import_keras()  # TensorFlow and Keras, without TensorFlow's native start-up lines

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_featreg.metrics import mean_singular_value  # noqa: E402
from keras_featreg.regularizers import SVMax  # noqa: E402

NUM_MODES, RADIUS, STD = 8, 2.0, 0.02


def mode_centers():
    angles = 2 * np.pi * np.arange(NUM_MODES) / NUM_MODES
    return (RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)).astype("float32")


def sample_real(n, rng):
    centers = mode_centers()
    return centers[rng.integers(NUM_MODES, size=n)] + STD * rng.standard_normal((n, 2)).astype(
        "float32")


COARSE_RADIUS = 0.25  # neighbouring centres are 2 * 2 * sin(pi / 8) = 1.53 apart


def modes_reached(samples, radius=COARSE_RADIUS, min_fraction=0.01):
    """Modes with at least 1 % of the samples within `radius` of their centre: coverage
    without the precision the 3-sigma criterion also demands (a collapsed generator reaches
    few modes; a blurry one that visits every mode reaches all 8)."""
    return sample_quality(samples, threshold_std=radius / STD, min_fraction=min_fraction)[0]


def sample_quality(samples, threshold_std=3.0, min_fraction=0.01):
    """(modes covered, % high-quality samples, per-mode counts) of generated 2-D samples."""
    samples = np.asarray(samples, dtype=np.float64)
    finite = np.all(np.isfinite(samples), axis=1)
    dist = np.linalg.norm(samples[:, None, :] - mode_centers()[None].astype(np.float64), axis=2)
    dist[~finite] = np.inf
    nearest = dist.argmin(axis=1)
    good = dist.min(axis=1) <= threshold_std * STD
    counts = np.bincount(nearest[good], minlength=NUM_MODES)
    covered = int(np.sum(counts >= min_fraction * len(samples)))
    return covered, 100.0 * float(good.mean()), counts


def dense(units, fan_in, **kwargs):
    """Dense with PyTorch's default ``nn.Linear`` initialization (the reference code's):
    weights and biases uniform in +-1/sqrt(fan_in). (Keras' zero biases would put every ReLU
    kink of the discriminator through the origin.)"""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound), **kwargs)


def make_generator(latent_dim, hidden=128):
    return keras.Sequential([
        keras.Input((latent_dim,)),
        dense(hidden, latent_dim, activation="tanh"),
        dense(hidden, hidden, activation="tanh"),
        dense(2, hidden, dtype="float32"),  # the fake "embedding", always float32
    ], name="generator")


def make_discriminator(hidden=128):
    return keras.Sequential([
        keras.Input((2,)),
        dense(hidden, 2, activation="relu"),
        dense(hidden, hidden, activation="relu"),
        dense(1, hidden, dtype="float32"),  # logit
    ], name="discriminator")


class GAN(keras.Model):
    """Generator + discriminator trained by ``fit``; the data are batches of real points.

    Args:
        regularizer: a :class:`keras_featreg.regularizers.SVMax` (or any feature
            regularizer) whose ``penalty`` is added to the generator loss on its fake batch.
        unrolled_steps: K > 0 for a (first-order) unrolled GAN.
    """

    def __init__(self, generator, discriminator, latent_dim, regularizer=None,
                 unrolled_steps=0, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim, self.regularizer = latent_dim, regularizer
        self.unrolled_steps = int(unrolled_steps)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.bce = keras.losses.BinaryCrossentropy(from_logits=True)

    def compile(self, g_optimizer, d_optimizer, **kwargs):
        super().compile(**kwargs)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer

    def call(self, z):
        return self.generator(z)

    def _noise(self, n):
        return keras.random.normal((n, self.latent_dim), seed=self.seed_generator)

    def _discriminator_step(self, real):
        n = tf.shape(real)[0]
        fake = self.generator(self._noise(n), training=True)
        with tf.GradientTape() as tape:
            real_logits = self.discriminator(real, training=True)
            fake_logits = self.discriminator(fake, training=True)
            loss = (self.bce(tf.ones_like(real_logits), real_logits)
                    + self.bce(tf.zeros_like(fake_logits), fake_logits))
        weights = self.discriminator.trainable_weights
        self.d_optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
        return loss

    def train_step(self, real):
        real = tf.cast(real, "float32")
        d_loss = self._discriminator_step(real)
        backup = None
        if self.unrolled_steps:
            backup = [tf.identity(v.value) for v in self.discriminator.trainable_weights]
            for _ in range(self.unrolled_steps):
                self._discriminator_step(real)
        n = tf.shape(real)[0]
        with tf.GradientTape() as tape:
            fake = self.generator(self._noise(n), training=True)
            logits = self.discriminator(fake, training=True)
            gan_loss = self.bce(tf.ones_like(logits), logits)  # non-saturating
            reg = (self.regularizer.penalty(fake) if self.regularizer is not None
                   else tf.zeros(()))
            g_loss = gan_loss + reg
        weights = self.generator.trainable_weights
        self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, weights), weights))
        if backup is not None:
            for v, value in zip(self.discriminator.trainable_weights, backup):
                v.assign(value)
        s_mu = mean_singular_value(fake, normalize=False)
        return {"d_loss": d_loss, "g_loss": gan_loss, "svmax_term": reg, "s_mu": s_mu}


class Snapshots(keras.callbacks.Callback):
    """Every epoch (= snapshot interval): samples the generator, prints quality metrics."""

    def __init__(self, latent_dim, steps_per_epoch, num_samples, seed, label):
        super().__init__()
        rng = np.random.default_rng(10_000 + seed)
        self.z = rng.standard_normal((num_samples, latent_dim)).astype("float32")
        self.steps_per_epoch, self.label = steps_per_epoch, label
        self.samples, self.history = {}, []
        self.start = time.perf_counter()

    def snapshot(self, step):
        fake = self.model.generator.predict(self.z, batch_size=4096, verbose=0)
        self.samples[step] = fake
        covered, quality, _ = sample_quality(fake)
        self.history.append({"step": step, "modes": covered, "high_quality_%": quality,
                             "modes_reached": modes_reached(fake)})
        return covered, quality

    def on_train_begin(self, logs=None):
        self.snapshot(0)

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.steps_per_epoch
        covered, quality = self.snapshot(step)
        logs = logs or {}
        print(f"    [{self.label}] step {step:>5}  d_loss {logs.get('d_loss', np.nan):.3f}  "
              f"g_loss {logs.get('g_loss', np.nan):.3f}  s_mu {logs.get('s_mu', np.nan):.3f}  "
              f"modes {covered}/8  high-quality {quality:5.1f}%  "
              f"reached {self.history[-1]['modes_reached']}/8  "
              f"{time.perf_counter() - self.start:5.1f}s", flush=True)


def train_gan(args, variant, seed):
    """Trains one GAN; returns (final metrics row, Snapshots callback)."""
    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    svmax = "svmax" in variant
    unrolled = args.unrolled_steps if variant.startswith("unrolled") else 0
    regularizer = SVMax(factor=args.svmax_lambda, bounded=False, normalize=False) if svmax else None
    gan = GAN(make_generator(args.latent_dim), make_discriminator(), args.latent_dim,
              regularizer=regularizer, unrolled_steps=unrolled, seed=seed)
    steps_per_epoch = max(1, args.steps // args.snapshots)
    gan.compile(
        g_optimizer=keras.optimizers.Adam(args.lr, beta_1=0.5, beta_2=0.999, epsilon=1e-8),
        d_optimizer=keras.optimizers.Adam(args.lr, beta_1=0.5, beta_2=0.999, epsilon=1e-8),
        jit_compile=False,
        # Several steps per tf.function call: the networks are tiny, Python overhead dominates.
        steps_per_execution=math.gcd(steps_per_epoch, 50),
    )
    rng = np.random.default_rng(seed)
    real = sample_real(args.steps * args.batch_size, rng)
    epochs = max(1, args.steps // steps_per_epoch)
    snaps = Snapshots(args.latent_dim, steps_per_epoch, args.eval_samples, seed,
                      f"{variant} seed {seed}")
    start = time.perf_counter()
    gan.fit(real, batch_size=args.batch_size, steps_per_epoch=steps_per_epoch, epochs=epochs,
            shuffle=False, verbose=0, callbacks=[snaps])
    seconds = time.perf_counter() - start
    final_step = max(snaps.samples)
    covered, quality, counts = sample_quality(snaps.samples[final_step])
    row = {"variant": variant, "seed": seed, "steps": final_step, "lr": args.lr,
           "lambda": args.svmax_lambda if svmax else 0.0, "unrolled_steps": unrolled,
           "modes_covered": covered, "high_quality_%": quality,
           "modes_reached": modes_reached(snaps.samples[final_step]),
           "best_modes_during_training": max(h["modes"] for h in snaps.history),
           "mode_counts": " ".join(str(int(c)) for c in counts), "seconds": seconds}
    return row, snaps


def plot_heatmaps(snapshots, variants, path, bins=80, extent=3.0, max_rows=6):
    """Fig. 5: rows = training steps, columns = variants, last row = ground truth."""
    plt = _common.pyplot()
    steps = sorted(snapshots[variants[0]].samples)
    if len(steps) > max_rows:
        idx = np.unique(np.linspace(0, len(steps) - 1, max_rows).round().astype(int))
        steps = [steps[i] for i in idx]
    rows = len(steps) + 1
    fig, axes = plt.subplots(rows, len(variants), figsize=(3.2 * len(variants) + 0.4, 3.0 * rows),
                             squeeze=False)
    edges = np.linspace(-extent, extent, bins + 1)
    truth = sample_real(10_000, np.random.default_rng(123))
    for c, variant in enumerate(variants):
        for r in range(rows):
            ax = axes[r][c]
            pts = truth if r == len(steps) else snapshots[variant].samples[steps[r]]
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
                         else f"{variant}, step {steps[r]}", fontsize=11)
    fig.suptitle("generated density, log(1 + count)", fontsize=12)
    fig.tight_layout()
    return _common.save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    out = _common.setup(args, SCRIPT)
    _common.mixed_precision_note(args)
    variants = ["vanilla", "svmax"]
    if args.unrolled_steps:
        variants += [f"unrolled{args.unrolled_steps}", f"unrolled{args.unrolled_steps}+svmax"]
    print(f"[{SCRIPT}] 8 Gaussians, radius {RADIUS}, sigma {STD}; Adam lr {args.lr} for G and D, "
          f"batch {args.batch_size}, {args.steps} steps; SVMax eq. 1 lambda {args.svmax_lambda}")
    t0 = time.perf_counter()
    rows, first = [], {}
    for seed in args.seeds:
        for variant in variants:
            print(f"[{SCRIPT}] {variant}, seed {seed}", flush=True)
            row, snaps = train_gan(args, variant, seed)
            rows.append(row)
            if seed == args.seeds[0]:
                first[variant] = snaps
            print(f"    -> modes covered {row['modes_covered']}/8, high-quality "
                  f"{row['high_quality_%']:.1f}%, modes reached {row['modes_reached']}/8  "
                  f"({row['seconds']:.1f}s)", flush=True)

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
             f"modes reached, ≤ {COARSE_RADIUS} (of 8) | per seed: covered / reached |",
             "|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['variant']} | {s['modes_mean']:.1f} ± {s['modes_std']:.1f} | "
                     f"{s['high_quality_mean']:.1f} ± {s['high_quality_std']:.1f} | "
                     f"{s['reached_mean']:.1f} ± {s['reached_std']:.1f} | "
                     f"{s['modes_per_seed']} / {s['reached_per_seed']} |")
    md = "\n".join(lines) + "\n"
    print("\n" + md)
    _common.write_csv(rows, os.path.join(out, "gan_runs.csv"))
    _common.write_csv(summary, os.path.join(out, "gan_summary.csv"))
    with open(os.path.join(out, "gan_summary.md"), "w") as f:
        f.write(md)
    plot_heatmaps(first, variants, os.path.join(out, "gan_heatmaps.png"))
    print(f"[{SCRIPT}] total {time.perf_counter() - t0:.0f}s")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
