"""Metric learning on digits: four ranking losses, with and without SVMax (paper Sec. 4.1).

Reads top to bottom: scikit-learn's 8x8 digits (no download; classes 0-4 train, 5-9 test:
retrieval on classes the network never saw) in class-balanced p x l batches; a small CNN ->
Dense(128) -> L2 normalization -> the regularizer (SVMax, or the spread-out baseline);
``compile`` with a ranking loss and ``fit``, with the library's callbacks logging Recall@K
and NMI (``RetrievalEvaluation``) and the test s_mu (``SpectrumMonitor``) into the History;
then a table of NMI / R@1 / R@8 per run and a figure. The paper's full harness (seeds,
batch-size sweeps, other datasets, backbones, CSV merging) is ``experiments/table1.py``.
"""

import argparse
import os
import sys
import time

import _common  # noqa: I001  (sets TF_CPP_MIN_LOG_LEVEL and the Agg backend first)

LOSSES = ("contrastive", "triplet", "npair", "angular")
REGULARIZERS = ("none", "spreadout", "svmax")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--regularizers", nargs="+", choices=REGULARIZERS,
                        default=list(REGULARIZERS))
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-2, 1e-3, 1e-4])
    parser.add_argument("--iterations", type=int, default=300, help="training steps K per run")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between s_mu logs")
    _common.add_common_args(parser, default_out=os.path.join("runs", "retrieval"))
    args = parser.parse_args(argv)
    if args.quick:  # a smoke test: two losses, one lr, four steps
        args.iterations, args.eval_every, args.lrs = 4, 2, args.lrs[:1]
        if args.losses == list(LOSSES):
            args.losses = ["contrastive", "npair"]
        args.regularizers = ["none", "svmax"]
    return args


if __name__ == "__main__":
    ARGS = parse_args(sys.argv[1:])  # --help and bad flags exit here, before Keras loads
    _common.import_keras()  # TensorFlow (for tf.data) and Keras, without native log lines

import keras  # noqa: E402
from keras import ops  # noqa: E402

from keras_featreg import EmbeddingRegularization, SpreadOut, SVMax  # noqa: E402
from keras_featreg.data import class_balanced_dataset, load_digits_split  # noqa: E402
from keras_featreg.callbacks import RetrievalEvaluation  # noqa: E402
from keras_featreg.losses import AngularLoss, ContrastiveLoss, NPairLoss, TripletLoss  # noqa: E402
from keras_featreg.callbacks import SpectrumMonitor  # noqa: E402

# The paper's losses and margins, and its SVMax lambda per loss. With 5 training classes a
# batch holds all of them: 5 x 28 = 140 (the paper's b = 144) for contrastive and triplet;
# N-pair and angular need each class exactly twice, so 5 x 2 = 10.
MAKE_LOSS = {"contrastive": lambda: ContrastiveLoss(margin=1.0),
             "triplet": lambda: TripletLoss(margin=0.2, mining="hard"),
             "npair": NPairLoss, "angular": lambda: AngularLoss(alpha=45.0)}
SVMAX_LAMBDA = {"contrastive": 1.0, "triplet": 0.1, "npair": 1.0, "angular": 2.0}
BATCH = {"contrastive": (5, 28), "triplet": (5, 28), "npair": (5, 2), "angular": (5, 2)}


class HoldThenDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The paper's schedule: `lr` for K/2 steps, then a linear decay to 1e-7 at step K."""

    def __init__(self, lr, total_steps):
        self.lr, self.half = lr, max(1, total_steps // 2)

    def __call__(self, step):
        t = ops.clip(ops.cast(step, "float32") / self.half - 1.0, 0.0, 1.0)
        return (self.lr - 1e-7) * (1.0 - t) + 1e-7


def build_model(regularizer, input_shape):
    """Small CNN -> 128-d embedding -> unit length -> regularizer (float32 throughout)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Dense(256, activation="relu")(keras.layers.Flatten()(x))
    emb = keras.layers.Dense(128, dtype="float32")(x)
    emb = keras.layers.UnitNormalization(dtype="float32")(emb)
    if regularizer is not None:
        emb = EmbeddingRegularization(regularizer, dtype="float32")(emb)
    return keras.Model(inputs, emb)


def train(args, loss, reg, lr, train_data, test_data):
    keras.utils.clear_session()  # one run; returns its History dict (an entry per evaluation)
    keras.utils.set_random_seed(args.seed)
    regularizer = {"none": None, "spreadout": SpreadOut(1.0),
                   "svmax": SVMax(factor=SVMAX_LAMBDA[loss])}[reg]
    model = build_model(regularizer, train_data[0].shape[1:])
    model.compile(optimizer=keras.optimizers.SGD(HoldThenDecay(lr, args.iterations), momentum=0.9),
                  loss=MAKE_LOSS[loss]())
    batches = class_balanced_dataset(*train_data, *BATCH[loss], seed=args.seed, replace=True)
    epochs = max(1, args.iterations // args.eval_every)
    callbacks = [  # Recall@K and NMI after the last epoch (every=1: after each), s_mu each epoch
        RetrievalEvaluation(*test_data, ks=(1, 8), map_at_r=False, prefix="test_", every=epochs),
        SpectrumMonitor(test_data[0], prefix="test_"), keras.callbacks.TerminateOnNaN()]
    history = model.fit(batches, steps_per_epoch=args.eval_every, epochs=epochs,
                        callbacks=callbacks, shuffle=False, verbose=0)
    return history.history


def plot(args, runs, path):
    """Top row: final R@1 against the lr (paper Fig. 9). Bottom: test s_mu during training."""
    fig, axes = _common.pyplot().subplots(2, len(args.losses), squeeze=False,
                                          figsize=(max(10, 4 * len(args.losses)), 8))
    for col, loss in enumerate(args.losses):
        top, bottom = axes[0][col], axes[1][col]
        for reg in args.regularizers:
            lrs = [lr for lr in args.lrs if (loss, reg, lr) in runs]
            top.plot(lrs, [100 * runs[loss, reg, lr]["test_recall@1"][-1] for lr in lrs],
                     marker="o", label=reg)
            h = runs[loss, reg, args.lrs[0]]
            steps = [args.eval_every * (i + 1) for i in range(len(h["test_s_mu"]))]
            bottom.plot(steps, h["test_s_mu"], marker="o", label=reg)
        upper = h["test_s_mu_upper"][-1]
        bottom.axhline(upper, color="0.5", ls="--", label=f"upper bound U = {upper:.2f}")
        top.set(xscale="log", title=f"{loss}: R@1 on test classes", xlabel="learning rate",
                ylabel="R@1 (%)")
        bottom.set(title=f"{loss}: test s_μ (lr {args.lrs[0]:g})", xlabel="training step",
                   ylabel="s_μ of test embeddings", ylim=(0, None))
        for ax in (top, bottom):
            ax.legend(fontsize=10)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    _common.save_figure(fig, path)


def main(args):
    out = _common.setup(args, "retrieval")
    train_data, test_data = load_digits_split()
    print(f"digits: {len(train_data[1])} training images (classes 0-4), "
          f"{len(test_data[1])} test images (classes 5-9)")
    runs, rows, start = {}, [], time.perf_counter()
    grid = [(loss, reg, lr) for loss in args.losses for lr in args.lrs for reg in args.regularizers]
    for i, (loss, reg, lr) in enumerate(grid, 1):
        t0 = time.perf_counter()
        h = runs[loss, reg, lr] = train(args, loss, reg, lr, train_data, test_data)
        row = {"loss": loss, "regularizer": reg, "lr": lr, "nmi": h["test_nmi"][-1],
               "r@1": 100 * h["test_recall@1"][-1], "r@8": 100 * h["test_recall@8"][-1],
               "test_s_mu": h["test_s_mu"][-1], "test_s_mu_upper": h["test_s_mu_upper"][-1]}
        rows.append(row)
        print(f"[{i}/{len(grid)}] {loss:<11} + {reg:<9} lr {lr:<6g} -> NMI {row['nmi']:.3f}  "
              f"R@1 {row['r@1']:.2f}  R@8 {row['r@8']:.2f}  test s_mu {row['test_s_mu']:.2f}  "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)

    print("\n| loss | regularizer | lr | NMI | R@1 (%) | R@8 (%) | test s_μ (U) |\n" + "|---" * 7
          + "|")
    for r in rows:
        print(f"| {r['loss']} | {r['regularizer']} | {r['lr']:g} | {r['nmi']:.3f} | {r['r@1']:.1f} "
              f"| {r['r@8']:.1f} | {r['test_s_mu']:.2f} ({r['test_s_mu_upper']:.2f}) |")
    _common.write_csv(rows, os.path.join(out, "retrieval_digits.csv"))
    plot(args, runs, os.path.join(out, "retrieval_digits.png"))
    print(f"total {time.perf_counter() - start:.0f}s")
    return rows


if __name__ == "__main__":
    main(ARGS)
