"""Digits embedded on the 2-D unit circle, contrastive loss with and without SVMax (paper Fig. 7).

A tiny CNN (one convolutional layer and one hidden layer, as in the paper) maps
scikit-learn's 8x8 digits (all 10 classes; 70 % train, 30 % test) to an L2-normalized 2-D
embedding, trained with the contrastive loss (margin 1, p x l = 10 x 14 class-balanced
batches, SGD momentum 0.9) with and without the bounded SVMax regularizer (lambda = 1, the
paper's value for the contrastive loss). Snapshots of the test embeddings over epochs are
saved as one PNG (rows: vanilla, SVMax; columns: epochs), and
:class:`keras_featreg.callbacks.SpectrumMonitor` logs the test s_mu and its bounds every epoch.
With SVMax the embedding should spread over the circle sooner.
"""

import argparse
import os
import sys
import time

import _common  # noqa: I001  (environment first; standard library only)

SCRIPT = "circle_embedding"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    parser.add_argument("--svmax-lambda", type=float, default=1.0,
                        help="bounded SVMax lambda (the paper's, for the contrastive loss)")
    parser.add_argument("--snapshots", nargs="+", type=int, default=None,
                        help="epochs to draw (default: 0, 1, 2, 5, 10, ..., last)")
    _common.add_common_args(parser, default_out=os.path.join("runs", "circle_embedding"))
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.steps_per_epoch = 2, 3
    if args.snapshots is None:
        args.snapshots = sorted({e for e in (0, 1, 2, 5, 10, 20, args.epochs) if e <= args.epochs})
    return args


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_common.import_keras()  # TensorFlow and Keras, without TensorFlow's native start-up lines

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_featreg import SVMax, EmbeddingRegularization, data as data_lib  # noqa: E402
from keras_featreg.evaluation import recall_at_k  # noqa: E402
from keras_featreg.losses import ContrastiveLoss  # noqa: E402
from keras_featreg.callbacks import SpectrumMonitor  # noqa: E402


def load_digits_all(seed):
    """All 10 digit classes, a stratified 70/30 split (the circle is about spread, not
    open-set retrieval)."""
    from sklearn.model_selection import train_test_split

    (x_a, y_a), (x_b, y_b) = data_lib.load_digits_split()
    x, y = np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y,
                                              random_state=seed)
    return (x_tr, y_tr), (x_te, y_te)


def build_model(input_shape, svmax_lambda=None):
    """One conv layer, one hidden layer, a 2-D L2-normalized embedding (+ SVMax)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dense(2, dtype="float32", name="embedding")(x)
    x = keras.layers.UnitNormalization(dtype="float32")(x)
    if svmax_lambda:
        x = EmbeddingRegularization(SVMax(factor=svmax_lambda), dtype="float32")(x)
    return keras.Model(inputs, x)


class EmbeddingSnapshots(keras.callbacks.Callback):
    def __init__(self, x, epochs):
        super().__init__()
        self.x, self.epochs, self.embeddings = x, set(epochs), {}

    def on_train_begin(self, logs=None):
        if 0 in self.epochs:
            self.embeddings[0] = self.model.predict(self.x, verbose=0)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.epochs:
            self.embeddings[epoch + 1] = self.model.predict(self.x, verbose=0)


def angular_coverage(emb, bins=36):
    """Fraction of 10-degree sectors of the circle holding at least one test point."""
    angles = np.arctan2(emb[:, 1], emb[:, 0])
    hist, _ = np.histogram(angles, bins=bins, range=(-np.pi, np.pi))
    return float(np.mean(hist > 0))


def plot(snapshots, labels, path):
    """Rows: vanilla, SVMax; columns: epochs; points coloured by digit (one shared legend)."""
    epochs = sorted(snapshots["vanilla"])
    fig, axes = _common.pyplot().subplots(2, len(epochs), figsize=(max(10, 2.6 * len(epochs)), 6),
                                          squeeze=False)
    for r, name in enumerate(("vanilla", "svmax")):
        for c, epoch in enumerate(epochs):
            ax = axes[r][c]
            _common.scatter_by_class(ax, snapshots[name][epoch], labels, size=6, unit_circle=True)
            ax.set_title(f"{'SVMax' if name == 'svmax' else 'vanilla'}, epoch {epoch}", fontsize=11)
            ax.set_xlabel("embedding dim 1", fontsize=10)
            ax.set_ylabel("embedding dim 2", fontsize=10)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, title="digit", loc="center right", fontsize=10, markerscale=3)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    _common.save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    out = _common.setup(args, SCRIPT)
    _common.mixed_precision_note(args)
    t0 = time.perf_counter()
    (x_tr, y_tr), (x_te, y_te) = load_digits_all(args.seed)
    print(f"[{SCRIPT}] digits: {len(y_tr)} train / {len(y_te)} test images, 10 classes; "
          f"contrastive loss, batches 10 x 14, {args.epochs} epochs x {args.steps_per_epoch} "
          f"steps, SGD lr {args.lr}")
    results, snapshots = [], {}
    for name, lam in (("vanilla", None), ("svmax", args.svmax_lambda)):
        keras.utils.clear_session()
        keras.utils.set_random_seed(args.seed)
        model = build_model(x_tr.shape[1:], lam)
        model.compile(optimizer=keras.optimizers.SGD(args.lr, momentum=0.9),
                      loss=ContrastiveLoss(margin=1.0))
        dataset = data_lib.class_balanced_dataset(x_tr, y_tr, 10, 14, seed=args.seed)
        snaps = EmbeddingSnapshots(x_te, args.snapshots)
        monitor = SpectrumMonitor(x_te)
        start = time.perf_counter()
        history = model.fit(dataset, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                            callbacks=[snaps, monitor], verbose=0, shuffle=False)
        for epoch, stats in enumerate(monitor.history, 1):
            if epoch in args.snapshots or epoch == args.epochs:
                loss = history.history["loss"][epoch - 1]
                print(f"    [{name}] epoch {epoch:>3}  loss {loss:.4f}  "
                      f"test s_mu {stats['s_mu']:.3f} in [{stats['s_mu_lower']:.3f}, "
                      f"{stats['s_mu_upper']:.3f}]  position {stats['s_mu_position']:.3f}",
                      flush=True)
        emb = snaps.embeddings.get(args.epochs)
        if emb is None:
            emb = model.predict(x_te, verbose=0)
        recall = recall_at_k(emb, y_te, ks=(1,))[1]
        final = monitor.history[-1]
        row = {"variant": name, "lambda": lam or 0.0, "epochs": args.epochs,
               "test_s_mu": final["s_mu"], "s_mu_upper": final["s_mu_upper"],
               "s_mu_position": final["s_mu_position"], "r@1": 100 * recall,
               "circle_coverage_%": 100 * angular_coverage(emb),
               "seconds": time.perf_counter() - start}
        results.append(row)
        snapshots[name] = snaps.embeddings
        print(f"    -> {name}: test s_mu {row['test_s_mu']:.3f} (U={row['s_mu_upper']:.3f}), "
              f"R@1 {row['r@1']:.1f}, circle coverage {row['circle_coverage_%']:.0f}%  "
              f"({row['seconds']:.1f}s)", flush=True)

    _common.write_csv(results, os.path.join(out, "circle_embedding.csv"))
    plot(snapshots, y_te, os.path.join(out, "circle_embedding.png"))
    print(f"[{SCRIPT}] total {time.perf_counter() - t0:.0f}s")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
