"""Self-supervised VICReg pretraining on Fashion-MNIST, and SVMax in place of its regularizers.

A small conv encoder (3 conv blocks with batch norm, a 64-d representation) and an expander
(256-256-256, the official 8192-wide one scaled down) are trained with ``fit`` on two
augmented views of each image (shift/crop, horizontal flip, Gaussian noise): the model's
``call`` embeds both views, its ``compute_loss`` applies the objective, so Keras' own
``train_step`` trains it on TensorFlow, JAX and torch. Objectives (``--regularizer``):

* ``vicreg``: :class:`keras_featreg.losses.VICRegLoss`, ``25 inv + 25 var + 1 cov``;
* ``svmax``: VICReg's variance and covariance replaced by the bounded SVMax on each branch,
  with the invariance between L2-normalized embeddings (SVMax is scale-free);
* ``none``: the invariance alone, which collapses (the control).

Evaluation: a linear probe on the frozen encoder (baseline: the encoder randomly
initialized) and the embeddings' spread (``keras_featreg.metrics.spectrum_statistics``).

    python examples/vicreg_ssl.py --regularizer vicreg svmax none
"""

import argparse
import os
import sys
import time

import _common  # noqa: I001  (environment first; standard library only)

SCRIPT = "vicreg_ssl"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regularizer", nargs="+", choices=("vicreg", "svmax", "none"),
                        default=["vicreg", "svmax"], help="objectives, one run each")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--svmax-lambda", type=float, default=1.0)
    parser.add_argument("--pretrain-samples", type=int, default=10000, help="unlabelled images")
    parser.add_argument("--probe-samples", type=int, default=5000,
                        help="labelled images for each of probe-train and probe-test")
    parser.add_argument("--width", type=int, default=16, help="encoder's first conv width")
    parser.add_argument("--expander", type=int, default=256, help="expander width")
    parser.add_argument("--noise", type=float, default=0.1, help="augmentation noise std")
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files "
                        "(default: Debian's dataset-fashion-mnist, else a download)")
    _common.add_common_args(parser, default_out=os.path.join("runs", "vicreg_ssl"))
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.probe_samples = 1, min(args.probe_samples, 300)
        args.pretrain_samples = min(args.pretrain_samples, 2 * args.batch_size)
        args.width, args.expander = min(args.width, 8), min(args.expander, 64)
    return args


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_common.import_keras()  # Keras (and TensorFlow, which the library imports), quietly

import keras  # noqa: E402

from keras_featreg import metrics  # noqa: E402
from keras_featreg.losses import VICRegLoss, vicreg_terms  # noqa: E402
from keras_featreg.ops import moments, spectral  # noqa: E402
from keras_featreg.regularizers import SVMax  # noqa: E402


def make_encoder(input_shape, width):
    inputs = x = keras.Input(input_shape)
    for i, filters in enumerate((width, 2 * width, 4 * width)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
        if i < 2:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype="float32")(x)
    return keras.Model(inputs, x, name="encoder")


def make_expander(input_dim, units):
    inputs = x = keras.Input((input_dim,))
    for _ in range(2):
        x = keras.layers.Dense(units, use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Dense(units, dtype="float32")(x)  # the embedding: float32
    return keras.Model(inputs, x, name="expander")


def make_objective(name, svmax_lambda):
    """(objective(z_a, z_b) -> (loss, {term: value}), the names of the logged terms)."""
    if name == "vicreg":  # the official loss; logs its three unweighted terms
        vicreg = VICRegLoss()
        return (lambda z_a, z_b: (vicreg(z_a, z_b), vicreg_terms(z_a, z_b)),
                ("invariance", "variance", "covariance"))
    if name == "svmax":  # ||z_a/|z_a| - z_b/|z_b|||^2 + SVMax(z_a) + SVMax(z_b)
        svmax = SVMax(factor=svmax_lambda)

        def objective(z_a, z_b):
            n_a, n_b = spectral.l2_normalize_rows(z_a), spectral.l2_normalize_rows(z_b)
            # invariance_penalty is the MSE over n * d elements; * d gives mean ||a - b||^2
            invariance = moments.invariance_penalty(n_a, n_b) * float(z_a.shape[-1])
            penalty = svmax.penalty(z_a) + svmax.penalty(z_b)
            return invariance + penalty, {"invariance": invariance, "svmax": penalty}
        return objective, ("invariance", "svmax")

    def invariance_only(z_a, z_b):  # the control: VICReg's first term, nothing against collapse
        invariance = 25.0 * moments.invariance_penalty(z_a, z_b)
        return invariance, {"invariance": invariance}
    return invariance_only, ("invariance",)


class SelfSupervised(keras.Model):
    """Training: ``call`` embeds two augmented views (batch norm sees one view at a time),
    ``compute_loss`` applies the objective to them and logs its terms; Keras' ``train_step``
    does the rest. Inference: the embedding of the unaugmented input."""

    def __init__(self, encoder, expander, noise_std, objective, term_names, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.expander, self.objective = encoder, expander, objective
        self.augmenter = _common.image_augmenter(noise_std)  # shift / crop, flip, noise
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


def evaluate(name, model, encoder, probe_train, probe_test):
    """Linear probe accuracy and the spread of the representation and the embedding."""
    rep = metrics.collapse_statistics(encoder.predict(probe_test[0], batch_size=512, verbose=0))
    emb = metrics.spectrum_statistics(model.predict(probe_test[0], batch_size=512, verbose=0))
    return {"encoder": name, "probe_acc_%": _common.linear_probe(encoder, probe_train, probe_test),
            "repr_collapsed_%": 100 * rep["collapsed_fraction"],
            "emb_collapsed_%": 100 * emb["collapsed_fraction"],
            "emb_s_mu_position": emb["s_mu_position"]}


def main(argv=None):
    args = parse_args(argv)
    out = _common.setup(args, SCRIPT)
    _common.mixed_precision_note(args)
    t0 = time.perf_counter()
    (x_pre, _), probe_train, probe_test = _common.fashion_mnist_subsets(
        [args.pretrain_samples, args.probe_samples, args.probe_samples], args.data_dir)
    print(f"[{SCRIPT}] Fashion-MNIST: {len(x_pre)} unlabelled pretraining images, linear probe "
          f"on {len(probe_train[1])} / {len(probe_test[1])} labelled images (10 classes)")

    rows = []
    for name in ["random init", *args.regularizer]:  # the baseline: the encoder, untrained
        keras.utils.clear_session()
        keras.utils.set_random_seed(args.seed)
        encoder = make_encoder(x_pre.shape[1:], args.width)
        expander = make_expander(encoder.output_shape[-1], args.expander)
        model = SelfSupervised(encoder, expander, args.noise,
                               *make_objective(name, args.svmax_lambda))
        model.compile(optimizer=keras.optimizers.Adam(args.lr), jit_compile=False)
        run = {"seconds": 0.0}
        if name != "random init":
            print(f"[{SCRIPT}] pretraining with {name}: {args.epochs} epochs, batch "
                  f"{args.batch_size}", flush=True)
            start = time.perf_counter()
            history = model.fit(x_pre, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
            run = {"seconds": time.perf_counter() - start,
                   "final_loss": float(history.history["loss"][-1])}
        rows.append({**evaluate(name, model, encoder, probe_train, probe_test), **run})
        print(f"    -> {name}: linear probe {rows[-1]['probe_acc_%']:.1f}%, embedding s_mu "
              f"position {rows[-1]['emb_s_mu_position']:.3f}", flush=True)

    _common.save_table(rows, os.path.join(out, "vicreg_ssl"), [  # .csv, .md, printed
        ("encoder", "encoder", "{}"), ("linear probe acc. (%)", "probe_acc_%", "{:.1f}"),
        ("collapsed dims, representation (%)", "repr_collapsed_%", "{:.1f}"),
        ("collapsed dims, embedding (%)", "emb_collapsed_%", "{:.1f}"),
        ("embedding s_μ position", "emb_s_mu_position", "{:.3f}")])
    _common.bar_panels(rows, "encoder", [
        ("probe_acc_%", "linear probe accuracy (%)", 100, "{:.1f}"),
        ("emb_s_mu_position", "embedding s_μ position (0 = rank one, 1 = spread)", 1, "{:.3f}")],
        os.path.join(out, "vicreg_ssl.png"), title_suffix=", Fashion-MNIST")
    print(f"[{SCRIPT}] total {time.perf_counter() - t0:.0f}s")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
