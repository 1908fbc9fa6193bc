"""Self-supervised VICReg pretraining on Fashion-MNIST, and SVMax in place of its regularizers.

A small conv encoder (3 conv blocks with batch norm, a 4 x width = 64-d representation after
average pooling) and an expander (256-256-256, the official 8192-8192-8192 scaled down) are
trained on two augmented views of each image (random shift/crop, horizontal flip, Gaussian
noise) with ``fit``: the model's ``call`` embeds both views and its ``compute_loss``
applies the objective, so Keras' own ``train_step`` trains it on TensorFlow, JAX and torch:

* ``vicreg``: :class:`keras_featreg.losses.VICRegLoss`, the official weights
  ``25 * invariance + 25 * variance + 1 * covariance``;
* ``svmax``: VICReg's variance and covariance terms replaced by the bounded SVMax on each
  branch, ``||z_a/|z_a| - z_b/|z_b|||^2 + SVMax(z_a) + SVMax(z_b)`` (invariance between
  L2-normalized embeddings: the bounded SVMax is scale-free, so an unnormalized invariance
  could be driven to 0 by shrinking the embeddings);
* ``none``: the invariance term alone, which collapses (the control).

The frozen encoder is then evaluated with a linear probe (scikit-learn logistic regression on
standardized features, labelled images disjoint from the pretraining images) against the same
encoder randomly initialized, and the spread of the embeddings with
:func:`keras_featreg.metrics.collapse_statistics` (fraction of dimensions whose std is below
1 % of the RMS std) and :func:`keras_featreg.metrics.spectrum_statistics` (where s_mu sits
between its bounds: 0 = rank one, 1 = perfectly spread). Data: the Fashion-MNIST IDX files of
Debian's ``dataset-fashion-mnist`` package (or ``--data-dir``), all 10 classes.

    python examples/vicreg_ssl.py --regularizer vicreg svmax none
"""

import argparse
import os
import sys
import time

import _common  # noqa: I001  (environment first; standard library only)

SCRIPT = "vicreg_ssl"
VARIANTS = ("vicreg", "svmax", "none")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regularizer", nargs="+", choices=VARIANTS,
                        default=["vicreg", "svmax"],
                        help="objectives to pretrain with, one run each (default: vicreg svmax)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--svmax-lambda", type=float, default=1.0)
    parser.add_argument("--pretrain-samples", type=int, default=10000,
                        help="unlabelled images for pretraining")
    parser.add_argument("--probe-samples", type=int, default=5000,
                        help="labelled images for each of probe-train and probe-test")
    parser.add_argument("--width", type=int, default=16, help="encoder's first conv width")
    parser.add_argument("--expander", type=int, default=256, help="expander width")
    parser.add_argument("--noise", type=float, default=0.1, help="augmentation noise std")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding the four Fashion-MNIST IDX files (default: Debian's "
                             "dataset-fashion-mnist, /usr/share/datasets/fashion-mnist, or "
                             "~/.keras/datasets/fashion-mnist, else a download)")
    _common.add_common_args(parser, default_out=os.path.join("runs", "vicreg_ssl"))
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
        args.pretrain_samples = min(args.pretrain_samples, 2 * args.batch_size)
        args.probe_samples = min(args.probe_samples, 300)
        args.width, args.expander = min(args.width, 8), min(args.expander, 64)
    return args


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_common.import_keras()  # Keras (and TensorFlow, which the library imports), quietly

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_featreg import data as data_lib  # noqa: E402
from keras_featreg import metrics  # noqa: E402
from keras_featreg.losses import VICRegLoss, vicreg_terms  # noqa: E402
from keras_featreg.ops import moments, spectral  # noqa: E402
from keras_featreg.regularizers import SVMax  # noqa: E402


def load_fashion_all(args):
    """All 70 000 Fashion-MNIST images with labels, split into disjoint pretraining,
    probe-train and probe-test subsets (sizes from the flags)."""
    # classes 0-4 / 5-9, pooled
    (x_a, y_a), (x_b, y_b) = data_lib.load_fashion_mnist_split(path=args.data_dir)
    x, y = np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])
    order = np.random.default_rng(12345).permutation(len(y))
    sizes = np.cumsum([args.pretrain_samples, args.probe_samples, args.probe_samples])
    pre, tr, te = order[:sizes[0]], order[sizes[0]:sizes[1]], order[sizes[1]:sizes[2]]
    return x[pre], (x[tr], y[tr]), (x[te], y[te])


def make_encoder(input_shape, width=32):
    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate((width, 2 * width, 4 * width)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype="float32")(x)
    return keras.Model(inputs, x, name="encoder")


def make_expander(input_dim, units=256):
    inputs = keras.Input((input_dim,))
    x = inputs
    for _ in range(2):
        x = keras.layers.Dense(units, use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.Dense(units, dtype="float32")(x)  # the embedding: float32
    return keras.Model(inputs, x, name="expander")


def make_augmenter(noise_std):
    return keras.Sequential([
        keras.layers.RandomTranslation(0.15, 0.15, fill_mode="constant"),  # shift / crop
        keras.layers.RandomFlip("horizontal"),
        keras.layers.GaussianNoise(noise_std),
    ], name="augment")


class VICRegObjective:
    """The official VICReg loss; logs its three unweighted terms."""

    def __init__(self):
        self.loss = VICRegLoss()

    def __call__(self, z_a, z_b):
        terms = vicreg_terms(z_a, z_b)
        return self.loss(z_a, z_b), terms


class SVMaxObjective:
    """Invariance between L2-normalized embeddings + bounded SVMax on each branch."""

    def __init__(self, svmax_lambda):
        self.svmax = SVMax(factor=svmax_lambda)

    def __call__(self, z_a, z_b):
        n_a, n_b = spectral.l2_normalize_rows(z_a), spectral.l2_normalize_rows(z_b)
        # invariance_penalty is the MSE over n * d elements; * d gives mean ||a - b||^2.
        invariance = moments.invariance_penalty(n_a, n_b) * float(z_a.shape[-1])
        penalty = self.svmax.penalty(z_a) + self.svmax.penalty(z_b)
        return invariance + penalty, {"invariance": invariance, "svmax": penalty}


class InvarianceOnly:
    """The control: invariance alone (VICReg's first term), nothing against collapse."""

    def __call__(self, z_a, z_b):
        invariance = 25.0 * moments.invariance_penalty(z_a, z_b)
        return invariance, {"invariance": invariance}


class SelfSupervised(keras.Model):
    """Two augmented views -> encoder -> expander -> objective(z_a, z_b).

    In training, ``call`` returns both views' embeddings, stacked (each view goes through
    the network on its own, so batch normalization sees one view at a time); in inference
    (``predict``) the embedding of the unaugmented input. ``compute_loss`` applies the
    objective and logs its terms: Keras' ``train_step`` of every backend does the rest
    (gradients, mixed-precision loss scaling, the optimizer step).
    """

    def __init__(self, encoder, expander, augmenter, objective, term_names, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.expander, self.augmenter = encoder, expander, augmenter
        self.objective = objective
        self.term_trackers = [keras.metrics.Mean(name=name) for name in term_names]

    def build(self, input_shape):  # the encoder and the expander come built
        self.augmenter.build(input_shape)

    def embed(self, x, training=False):
        return self.expander(self.encoder(x, training=training), training=training)

    def call(self, x, training=False):
        if not training:
            return self.embed(x)
        z_a = self.embed(self.augmenter(x, training=True), training=True)
        z_b = self.embed(self.augmenter(x, training=True), training=True)
        return keras.ops.stack([z_a, z_b], axis=1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss, parts = self.objective(y_pred[:, 0], y_pred[:, 1])
        for tracker in self.term_trackers:
            tracker.update_state(parts[tracker.name])
        return loss


def linear_probe(encoder, train, test):
    """Top-1 accuracy of a logistic regression on frozen, standardized features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f_tr = encoder.predict(train[0], batch_size=512, verbose=0)
    f_te = encoder.predict(test[0], batch_size=512, verbose=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    clf.fit(f_tr, train[1])
    return 100.0 * float(clf.score(f_te, test[1]))


def spread(model, encoder, x):
    rep = encoder.predict(x, batch_size=512, verbose=0)
    emb = model.predict(x, batch_size=512, verbose=0)
    rep_stats = metrics.collapse_statistics(rep)
    emb_stats = metrics.spectrum_statistics(emb)
    return {"repr_collapsed_%": 100 * rep_stats["collapsed_fraction"],
            "emb_collapsed_%": 100 * emb_stats["collapsed_fraction"],
            "emb_s_mu_position": emb_stats["s_mu_position"]}


def make_objective(name, args):
    """(objective, names of the terms it logs)."""
    if name == "vicreg":
        return VICRegObjective(), ("invariance", "variance", "covariance")
    if name == "svmax":
        return SVMaxObjective(args.svmax_lambda), ("invariance", "svmax")
    return InvarianceOnly(), ("invariance",)


def main(argv=None):
    args = parse_args(argv)
    out = _common.setup(args, SCRIPT)
    _common.mixed_precision_note(args)
    t0 = time.perf_counter()
    x_pre, probe_train, probe_test = load_fashion_all(args)
    print(f"[{SCRIPT}] Fashion-MNIST: {len(x_pre)} unlabelled pretraining images, linear probe "
          f"on {len(probe_train[1])} / {len(probe_test[1])} labelled images (10 classes)")
    rows = []

    keras.utils.set_random_seed(args.seed)
    random_encoder = make_encoder(x_pre.shape[1:], args.width)
    random_model = keras.Sequential([random_encoder, make_expander(random_encoder.output_shape[-1],
                                                                   args.expander)])
    row = {"encoder": "random init", "probe_acc_%": linear_probe(random_encoder, probe_train,
                                                                 probe_test),
           **spread(random_model, random_encoder, probe_test[0]), "seconds": 0.0}
    rows.append(row)
    print(f"    random-init encoder: linear probe {row['probe_acc_%']:.1f}%", flush=True)

    for name in args.regularizer:
        keras.utils.clear_session()
        keras.utils.set_random_seed(args.seed)
        encoder = make_encoder(x_pre.shape[1:], args.width)
        expander = make_expander(encoder.output_shape[-1], args.expander)
        model = SelfSupervised(encoder, expander, make_augmenter(args.noise),
                               *make_objective(name, args))
        model.compile(optimizer=keras.optimizers.Adam(args.lr), jit_compile=False)
        print(f"[{SCRIPT}] pretraining with {name}: {args.epochs} epochs, batch {args.batch_size}",
              flush=True)
        start = time.perf_counter()
        history = model.fit(x_pre, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                            callbacks=[keras.callbacks.LambdaCallback(
                                on_epoch_end=lambda e, logs: print(
                                    "    epoch {}: {}".format(e + 1, "  ".join(
                                        f"{k} {float(v):.4f}" for k, v in (logs or {}).items())),
                                    flush=True))])
        seconds = time.perf_counter() - start
        row = {"encoder": name, "probe_acc_%": linear_probe(encoder, probe_train, probe_test),
               **spread(model, encoder, probe_test[0]), "seconds": seconds,
               "final_loss": float(history.history["loss"][-1])}
        rows.append(row)
        print(f"    -> {name}: linear probe {row['probe_acc_%']:.1f}%, collapsed dims: "
              f"representation {row['repr_collapsed_%']:.1f}%, embedding "
              f"{row['emb_collapsed_%']:.1f}%, s_mu position {row['emb_s_mu_position']:.3f}  "
              f"({seconds:.0f}s)", flush=True)

    lines = ["| encoder | linear probe acc. (%) | collapsed dims, representation (%) | "
             "collapsed dims, embedding (%) | embedding s_μ position |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['probe_acc_%']:.1f} | {r['repr_collapsed_%']:.1f} | "
                     f"{r['emb_collapsed_%']:.1f} | {r['emb_s_mu_position']:.3f} |")
    md = "\n".join(lines) + "\n"
    print("\n" + md)
    _common.write_csv(rows, os.path.join(out, "vicreg_ssl.csv"))
    with open(os.path.join(out, "vicreg_ssl.md"), "w") as f:
        f.write(md)
    fig, axes = _common.pyplot().subplots(1, 2, figsize=(11, 0.6 * len(rows) + 2.5))
    panels = [("probe_acc_%", "linear probe accuracy (%)", 100, "{:.1f}"),
              ("emb_s_mu_position", "embedding s_μ position (0 = rank one, 1 = spread)", 1,
               "{:.3f}")]
    for ax, (key, label, limit, fmt) in zip(axes, panels):
        ax.barh([r["encoder"] for r in rows], [r[key] for r in rows], color="tab:blue")
        for i, r in enumerate(rows):
            ax.text(r[key] + 0.01 * limit, i, fmt.format(r[key]), va="center", fontsize=10)
        ax.set(xlim=(0, 1.12 * limit), xlabel=label, ylabel="encoder",
               title=label.split(" (")[0] + ", Fashion-MNIST")
        ax.invert_yaxis()
    fig.tight_layout()
    _common.save_figure(fig, os.path.join(out, "vicreg_ssl.png"))
    print(f"[{SCRIPT}] total {time.perf_counter() - t0:.0f}s")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
