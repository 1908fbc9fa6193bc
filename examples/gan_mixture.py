"""A GAN on a ring of 8 Gaussians, with and without SVMax on the generator (SVMax paper, Fig. 5).

8 Gaussians (sigma 0.02, radius 2; Metz et al. 2017), learning rate 0.025 to provoke mode
collapse, and the unbounded SVMax of eq. 1 on the fake batch, ``L_G = L_GAN - 0.01 * s_mu``.
The classic Keras GAN pattern, on TensorFlow, JAX and torch: the discriminator is trained
with ``train_on_batch`` on real and generated points, the generator through the model
``generator -> frozen discriminator`` towards the label "real" (non-saturating loss).
``--unrolled-steps K``: the generator steps against the discriminator trained K steps ahead.
A mode is *covered* when >= 1 % of the samples lie within 3 sigma of its centre, *reached*
within 0.25. The seed sweep with tables: ``experiments/gan_fig5.py``.

    python examples/gan_mixture.py --unrolled-steps 5    # vanilla, SVMax, unrolled GAN +- SVMax
"""

import argparse
import math
import os
import sys
import time

import _common  # noqa: I001  (environment first; standard library only)

SCRIPT = "gan_mixture"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="generator steps per run")
    parser.add_argument("--lr", type=float, default=0.025, help="Adam learning rate (G and D)")
    parser.add_argument("--svmax-lambda", type=float, default=0.01, help="lambda of eq. 1")
    parser.add_argument("--unrolled-steps", type=int, default=0,
                        help="also train unrolled GANs with K steps (the paper: 5); 0 = off")
    for flag, default in (("--batch-size", 512), ("--latent-dim", 256), ("--snapshots", 6),
                          ("--eval-samples", 10000)):
        parser.add_argument(flag, type=int, default=default, help="default: %(default)s")
    _common.add_common_args(parser, default_out=os.path.join("runs", "gan_mixture"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.snapshots, args.eval_samples = min(args.steps, 40), 2, 1000
        args.batch_size = min(args.batch_size, 128)
    return args


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before Keras is loaded

_common.import_keras()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_featreg.metrics import mean_singular_value  # noqa: E402
from keras_featreg.regularizers import SVMax  # noqa: E402

NUM_MODES, RADIUS, STD, COARSE_RADIUS = 8, 2.0, 0.02, 0.25
ANGLES = 2 * np.pi * np.arange(NUM_MODES) / NUM_MODES
CENTERS = (RADIUS * np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)).astype("float32")


def sample_real(n, rng):
    modes = rng.integers(NUM_MODES, size=n)
    return CENTERS[modes] + STD * rng.standard_normal((n, 2)).astype("float32")


def sample_quality(samples, radius=3 * STD, min_fraction=0.01):
    """(modes covered, % of samples within `radius` of their nearest centre, per-mode counts)."""
    samples = np.asarray(samples, dtype=np.float64)
    dist = np.linalg.norm(samples[:, None, :] - CENTERS[None].astype(np.float64), axis=2)
    dist[~np.all(np.isfinite(samples), axis=1)] = np.inf
    good = dist.min(axis=1) <= radius
    counts = np.bincount(dist.argmin(axis=1)[good], minlength=NUM_MODES)
    return int(np.sum(counts >= min_fraction * len(samples))), 100.0 * float(good.mean()), counts


def dense(units, fan_in, **kwargs):
    """Dense with PyTorch's default initialization, as the reference code: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.layers.Dense(
        units, kernel_initializer=keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound), **kwargs)


def mlp(name, inputs, outputs, activation, hidden=128, **output_kwargs):
    """The reference networks: inputs -> 128 -> 128 -> outputs (float32: points, logits)."""
    return keras.Sequential([
        keras.Input((inputs,)),
        dense(hidden, inputs, activation=activation),
        dense(hidden, hidden, activation=activation),
        dense(outputs, hidden, dtype="float32", **output_kwargs),
    ], name=name)


def discriminator_loss(labels, logits):
    """BCE(real half) + BCE(fake half), the sum of two means of the reference code."""
    return 2.0 * keras.losses.binary_crossentropy(labels, logits, from_logits=True)


def train_gan(args, variant, seed):
    """Trains one variant; returns {step: generated samples} at the snapshot steps."""
    keras.utils.set_random_seed(seed)
    rng, b = np.random.default_rng(seed), args.batch_size
    svmax = SVMax(factor=args.svmax_lambda, bounded=False, normalize=False)
    generator = mlp("generator", args.latent_dim, 2, "tanh",  # SVMax on the fake batch:
                    activity_regularizer=svmax if "svmax" in variant else None)
    discriminator = mlp("discriminator", 2, 1, "relu")  # a logit
    d_adam, g_adam = [keras.optimizers.Adam(args.lr, beta_1=0.5, epsilon=1e-8) for _ in "dg"]
    discriminator.compile(optimizer=d_adam, loss=discriminator_loss)
    discriminator.trainable = False  # inside `gan`, only the generator learns
    gan = keras.Sequential([generator, discriminator], name="gan")
    gan.compile(optimizer=g_adam, loss=keras.losses.BinaryCrossentropy(from_logits=True))
    real_fake = np.concatenate([np.ones((b, 1)), np.zeros((b, 1))]).astype("float32")

    def noise():
        return rng.standard_normal((b, args.latent_dim)).astype("float32")

    def discriminator_step(real):
        discriminator.trainable = True
        fake = generator.predict_on_batch(noise())
        return discriminator.train_on_batch(np.concatenate([real, fake]), real_fake)

    z_eval = np.random.default_rng(10_000 + seed).standard_normal(
        (args.eval_samples, args.latent_dim)).astype("float32")
    snapshots, every, start = {}, max(1, args.steps // args.snapshots), time.perf_counter()
    snapshots[0] = generator.predict(z_eval, batch_size=4096, verbose=0)
    unrolled = args.unrolled_steps if variant.startswith("unrolled") else 0
    for step in range(1, args.steps + 1):
        real = sample_real(b, rng)
        d_loss = discriminator_step(real)
        backup = discriminator.get_weights() if unrolled else None
        for _ in range(unrolled):  # look ahead: the generator steps against this D
            discriminator_step(real)
        discriminator.trainable = False
        g_loss = gan.train_on_batch(noise(), real_fake[:b])  # fakes labelled "real"
        if backup is not None:
            discriminator.set_weights(backup)
        if step % every == 0 or step == args.steps:
            snapshots[step] = generator.predict(z_eval, batch_size=4096, verbose=0)
            covered, quality, _ = sample_quality(snapshots[step])
            s_mu = float(mean_singular_value(snapshots[step][:b], normalize=False))
            print(f"    [{variant} seed {seed}] step {step:>5}  d_loss {float(d_loss):.3f}  "
                  f"g_loss (+ SVMax) {float(g_loss):.3f}  s_mu {s_mu:.3f}  modes {covered}/8  "
                  f"high-quality {quality:5.1f}%  {time.perf_counter() - start:5.1f}s", flush=True)
    return snapshots


def main(argv=None):
    args = parse_args(argv)
    out = _common.setup(args, SCRIPT)
    variants = ["vanilla", "svmax"]
    if args.unrolled_steps:
        variants += [f"unrolled{args.unrolled_steps}", f"unrolled{args.unrolled_steps}+svmax"]
    snapshots, finals = {}, {}
    for variant in variants:
        print(f"[{SCRIPT}] {variant}: {args.steps} steps, Adam lr {args.lr}", flush=True)
        snapshots[variant] = train_gan(args, variant, args.seed)
        final = snapshots[variant][max(snapshots[variant])]
        covered, quality, _ = sample_quality(final)
        reached = sample_quality(final, radius=COARSE_RADIUS)[0]
        finals[variant] = {"modes_covered": covered, "high_quality_%": quality,
                           "modes_reached": reached}
        print(f"    -> modes covered {covered}/8, high-quality {quality:.1f}%, "
              f"modes reached {reached}/8", flush=True)
    truth = sample_real(10_000, np.random.default_rng(123))
    _common.plot_density_grid(snapshots, truth, os.path.join(out, "gan_heatmaps.png"))
    return finals


if __name__ == "__main__":
    main(sys.argv[1:])
