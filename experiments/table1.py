"""Paper reproduction harness: Table 1 / Fig. 6, 9, 15 of the SVMax paper (Sec. 4.1).

(The teaching version, one short script that reads top to bottom, is
``examples/retrieval.py``; this one adds the sweeps, other datasets, backbones, the
distributed hook, CSV merging, tables and plots.)

Trains an L2-normalized d=128 embedding with a ranking loss (contrastive, hard triplet,
N-pair, angular) with and without an embedding regularizer (spread-out, SVMax, VICReg) over
a grid of learning rates and seeds, following the paper's protocol:

* p x l class-balanced batches per loss (triplet 24 x 6, N-pair/angular 72 x 2, contrastive
  36 x 4; with fewer training classes than p, all classes are used and l grows to keep the
  batch size, except for N-pair/angular whose batches must hold every class exactly twice);
* SGD with momentum 0.9, the learning rate fixed for K/2 iterations then decayed
  polynomially to 1e-7 at iteration K;
* the paper's SVMax lambda per loss (contrastive 1, N-pair 1, triplet 0.1, angular 2);
* evaluation on test classes disjoint from the training classes: NMI, Recall@{1,2,4,8},
  and the mean singular value s_mu of the test embeddings with its bounds.

Outputs (in --out): ``<dataset>_runs.csv`` (one row per run), ``<dataset>_table.csv`` and
``<dataset>_table.md`` (mean +- std over seeds, Delta R@1 against the unregularized run of
the same loss / lr / seed / batch size), ``<dataset>_recall_vs_lr.png`` (paper Fig. 9) and
``<dataset>_test_smu.png`` (test s_mu per training batch size with its upper bound,
paper Fig. 6 / appendix Fig. 15).

Examples::

    python experiments/table1.py                                  # digits, a few minutes
    python experiments/table1.py --dataset fashion_mnist --seeds 0 1 2
    python experiments/table1.py --dataset glyphs    # 200 / 200 CJK characters, Debian fonts
    python experiments/table1.py --losses contrastive --regularizers none svmax \\
        --batch-sizes 72 144 --lrs 0.01
    python experiments/table1.py --dataset cars196 --backbone resnet50 --image-size 224
"""

import argparse
import contextlib
import importlib.util
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import _common  # noqa: E402,I001  (sets TF_CPP_MIN_LOG_LEVEL and the Agg backend first)

SCRIPT = "table1"
# The paper's p (classes per batch) x l (samples per class), b = 144 for every loss.
PAPER_BATCH = {"contrastive": (36, 4), "triplet": (24, 6), "npair": (72, 2), "angular": (72, 2)}
# The paper's SVMax lambda per ranking loss (bounded SVMax, eq. 4).
PAPER_LAMBDA = {"contrastive": 1.0, "triplet": 0.1, "npair": 1.0, "angular": 2.0}
LOSSES = tuple(PAPER_BATCH)
REGULARIZERS = ("none", "spreadout", "svmax", "vicreg")
TFDS_DATASETS = ("cars196", "caltech_birds2011", "stanford_online_products")  # the [tfds] extra
DATASETS = ("digits", "fashion_mnist", "glyphs", *TFDS_DATASETS)
BACKBONES = {
    # name: (constructor, preprocess_input) -- both looked up lazily in keras.applications
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2"),
    "resnet50": ("ResNet50", "resnet"),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet"),
    "inception_v3": ("InceptionV3", "inception_v3"),
}
# Defaults per dataset: iterations K, test subset (None = all), image size for backbones.
DATASET_DEFAULTS = {
    "digits": {"iterations": 300, "test_samples": None, "image_size": 32},
    "fashion_mnist": {"iterations": 600, "test_samples": 5000, "image_size": 32},
    "glyphs": {"iterations": 1000, "test_samples": None, "image_size": 32},
    "cars196": {"iterations": 5000, "test_samples": None, "image_size": 224},
    "caltech_birds2011": {"iterations": 5000, "test_samples": None, "image_size": 224},
    "stanford_online_products": {"iterations": 20000, "test_samples": None, "image_size": 224},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--dataset", choices=DATASETS, default="digits",
                        help="digits: scikit-learn's 8x8 digits, classes 0-4 train / 5-9 test; "
                             "fashion_mnist: Debian's IDX files, classes 0-4 / 5-9; glyphs: "
                             "CJK characters in Debian's CJK fonts (keras_featreg.data."
                             "load_glyphs_split), --glyph-classes / 2 train, the rest test; "
                             "the tfds "
                             "datasets need a network and tensorflow-datasets (the [tfds] extra) "
                             "(default: %(default)s)")
    parser.add_argument("--glyph-classes", type=int, default=None,
                        help="--dataset glyphs: number of characters, half of them training "
                             "classes (default: 400; --quick: 40)")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=None,
                        help="ranking losses (default: all four; --quick: contrastive npair)")
    parser.add_argument("--contrastive-pairs", choices=("all", "balanced"), default="all",
                        help="contrastive loss averaged over all b(b-1)/2 pairs (default) or over "
                             "the paper's balanced pairs: b/2 hardest positive + b/2 hardest "
                             "negative pairs (72 + 72 of a 36 x 4 batch; "
                             "keras_featreg.miners.BalancedPairMiner)")
    parser.add_argument("--regularizers", nargs="+", choices=REGULARIZERS, default=None,
                        help="default: none spreadout svmax")
    parser.add_argument("--lrs", nargs="+", type=float, default=None,
                        help="learning rates (default: 0.01 0.001 0.0001)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds, one run each (default: the --seed value)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="K training iterations per run (lr fixed for K/2, then decayed "
                             "to 1e-7); default per dataset: digits 300, fashion_mnist 600, "
                             "glyphs 1000, "
                             "CUB/CARS 5000, SOP 20000 (the paper's)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[144],
                        help="target batch sizes b (the paper: 144); p x l per loss, see "
                             "batch_layout() (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension d")
    parser.add_argument("--svmax-lambda", type=float, default=None,
                        help="override the paper's per-loss SVMax lambda")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default=None,
                        help="a keras.applications backbone instead of the small CNN")
    parser.add_argument("--weights", choices=("auto", "imagenet", "none"), default="auto",
                        help="backbone weights: auto = ImageNet when downloadable, else random")
    parser.add_argument("--image-size", type=int, default=None,
                        help="backbone input size (default: 32 for digits/fashion_mnist, 224 "
                             "for the tfds datasets)")
    parser.add_argument("--width", type=int, default=32,
                        help="filters of the small CNN's first conv layer (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=256,
                        help="units of the small CNN's hidden Dense layer (default: %(default)s)")
    parser.add_argument("--input-pool", type=int, default=1,
                        help="average-pool the input images by this factor first (small CNN; "
                             "2 turns 28x28 into 14x14, 4x cheaper)")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="stratified subset of the training split (default: all)")
    parser.add_argument("--test-samples", type=int, default=None,
                        help="stratified subset of the test split (default: fashion_mnist "
                             "5000, else all)")
    parser.add_argument("--log-every", type=int, default=100, help="iterations per log line")
    parser.add_argument("--jit-compile", action="store_true",
                        help="force XLA (default: Keras 'auto', i.e. XLA on GPU only)")
    parser.add_argument("--tag", default=None, help="output file prefix (default: dataset)")
    parser.add_argument("--distributed", action="store_true",
                        help="TensorFlow only: train under tf.distribute.MirroredStrategy (all "
                             "visible GPUs, else the CPU) with the regularizer's statistics "
                             "gathered over the global batch (cross_replica=True)")
    parser.add_argument("--merge", nargs="+", metavar="RUNS_CSV", default=None,
                        help="train nothing: merge *_runs.csv files of earlier (e.g. parallel) "
                             "invocations and write the table and plots under --out/--tag")
    _common.add_common_args(parser, default_out=os.path.join("runs", "table1"))
    args = parser.parse_args(argv)
    if (args.dataset in TFDS_DATASETS and args.merge is None
            and importlib.util.find_spec("tensorflow_datasets") is None):
        parser.error(f"--dataset {args.dataset} needs tensorflow-datasets, which is not "
                     'installed: pip install -e ".[tfds]" (or pip install tensorflow-datasets)')

    defaults = DATASET_DEFAULTS[args.dataset]
    if args.weights == "none":
        args.weights = None
    if args.image_size is None:
        args.image_size = defaults["image_size"]
    if args.test_samples is None:
        args.test_samples = defaults["test_samples"]
    if args.quick:
        args.iterations = args.iterations or 4
        args.log_every = 2
        args.test_samples = min(args.test_samples or 300, 300)
        args.train_samples = args.train_samples or 1000
        args.regularizers = args.regularizers or ["none", "svmax"]
        args.lrs = args.lrs or [0.01]
        args.losses = args.losses or ["contrastive", "npair"]
        args.glyph_classes = args.glyph_classes or 40
    args.glyph_classes = args.glyph_classes or 400
    if args.glyph_classes < 2:
        parser.error(f"--glyph-classes must be >= 2, got {args.glyph_classes}")
    args.iterations = args.iterations or defaults["iterations"]
    args.losses = args.losses or list(LOSSES)
    args.regularizers = args.regularizers or ["none", "spreadout", "svmax"]
    args.lrs = args.lrs or [1e-2, 1e-3, 1e-4]
    args.seeds = args.seeds if args.seeds is not None else [args.seed]
    args.tag_given = args.tag is not None
    args.tag = args.tag or args.dataset
    return args


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # --help and bad flags exit here, before TensorFlow is loaded

_common.import_keras()  # TensorFlow and Keras, without TensorFlow's native start-up lines

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_featreg import data as data_lib  # noqa: E402
from keras_featreg import evaluation, metrics  # noqa: E402
from keras_featreg.layers import EmbeddingRegularization  # noqa: E402
from keras_featreg.losses_ranking import (  # noqa: E402
    AngularLoss, ContrastiveLoss, NPairLoss, TripletLoss)
from keras_featreg.regularizers import SVMax, SpreadOut, VICReg  # noqa: E402


# ----------------------------------------------------------------------------- schedule


@keras.saving.register_keras_serializable(package="examples")
class ConstantThenPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The paper's schedule: ``lr`` for ``hold_fraction * K`` steps, then polynomial decay
    (``power``) to ``end_learning_rate`` at step ``K``, constant afterwards."""

    def __init__(self, initial_learning_rate, total_steps, end_learning_rate=1e-7, power=1.0,
                 hold_fraction=0.5):
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = int(total_steps)
        self.end_learning_rate = float(end_learning_rate)
        self.power = float(power)
        self.hold_fraction = float(hold_fraction)

    def __call__(self, step):
        hold = float(int(self.total_steps * self.hold_fraction))
        decay_steps = max(float(self.total_steps) - hold, 1.0)
        t = ops.clip((ops.cast(step, "float32") - hold) / decay_steps, 0.0, 1.0)
        span = self.initial_learning_rate - self.end_learning_rate
        return span * ops.power(1.0 - t, self.power) + self.end_learning_rate

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "hold_fraction": self.hold_fraction,
        }


# --------------------------------------------------------------------------- components


def make_loss(name, contrastive_pairs="all"):
    """The paper's ranking losses and margins (hard triplet mining, as in Table 1).

    ``contrastive_pairs="balanced"``: the contrastive loss on the paper's 72 positive + 72
    negative pairs of a 36 x 4 batch (the hardest of each kind), instead of the mean over all
    pairs, which the many inactive negative pairs dilute (see docs/concepts/losses.md).
    """
    if name == "contrastive":
        if contrastive_pairs == "balanced":
            return ContrastiveLoss(margin=1.0, miner="balanced_pair")
        return ContrastiveLoss(margin=1.0)
    if name == "triplet":
        return TripletLoss(margin=0.2, mining="hard")
    if name == "npair":
        return NPairLoss()
    if name == "angular":
        return AngularLoss(alpha=45.0)
    raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")


def make_regularizer(name, loss_name, svmax_lambda=None):
    """(regularizer or None, lambda, applied_before_normalization)."""
    if name == "none":
        return None, 0.0, False
    if name == "spreadout":  # Zhang et al. 2017, alpha = 1 (the paper's baseline)
        return SpreadOut(1.0), 1.0, False
    if name == "svmax":  # bounded SVMax (eq. 4) on the L2-normalized embedding
        lam = PAPER_LAMBDA[loss_name] if svmax_lambda is None else svmax_lambda
        return SVMax(factor=lam), lam, False
    if name == "vicreg":
        # Variance + covariance on the embedding *before* L2 normalization (on unit rows
        # every dimension's std is ~1/sqrt(d) and the variance hinge could never be met).
        return VICReg(variance_factor=25.0, covariance_factor=1.0), 25.0, True
    raise ValueError(f"unknown regularizer {name!r}; choose from {REGULARIZERS}")


def batch_layout(loss_name, batch_size, num_classes):
    """(p, l) for a loss, a target batch size and the number of training classes.

    The paper's l per loss is kept and p = b / l. When the training split has fewer
    classes than p, every class is used and l grows to keep b, except for N-pair and
    angular, whose batches must hold each class exactly twice (then b = 2 * classes).
    """
    _, l = PAPER_BATCH[loss_name]
    if loss_name in ("npair", "angular"):
        return max(2, min(batch_size // 2, num_classes)), 2
    p = max(2, batch_size // l)
    if p > num_classes:
        p = num_classes
        l = max(l, batch_size // p)
    return p, l


def _small_cnn(x, width, hidden=256, input_pool=1):
    """[AvgPool] then Conv(3x3)+MaxPool blocks until the map is <= 7 pixels, then a hidden
    Dense layer."""
    if input_pool > 1:
        x = keras.layers.AveragePooling2D(input_pool)(x)
    size, block = min(x.shape[1], x.shape[2]), 0
    while size > 7 or block == 0:
        x = keras.layers.Conv2D(width * 2**block, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        size //= 2
        block += 1
    x = keras.layers.Flatten()(x)
    return keras.layers.Dense(hidden, activation="relu")(x)


def _backbone(x, name, weights, image_size):
    """A keras.applications model (no top, average pooling) on resized RGB [0, 255] input."""
    class_name, module_name = BACKBONES[name]
    constructor = getattr(keras.applications, class_name)
    preprocess = getattr(keras.applications, module_name).preprocess_input
    if x.shape[-1] == 1:
        x = keras.layers.Concatenate()([x, x, x])
    if x.shape[1] != image_size or x.shape[2] != image_size:
        x = keras.layers.Resizing(image_size, image_size)(x)
    x = keras.layers.Lambda(preprocess, name="preprocess_input")(x)
    shape = (image_size, image_size, 3)
    net = None
    if weights in ("imagenet", "auto"):
        try:
            net = constructor(include_top=False, weights="imagenet", input_shape=shape,
                              pooling="avg")
            print(f"backbone {name}: ImageNet weights")
        except Exception as err:  # no network / no cached weights
            if weights == "imagenet":
                raise
            print(f"backbone {name}: ImageNet weights unavailable ({type(err).__name__}: "
                  f"{str(err)[:80]}); using random initialization")
    if net is None:
        net = constructor(include_top=False, weights=None, input_shape=shape, pooling="avg")
    return net(x)


def build_embedding_model(input_shape, dim=128, regularizer=None, regularize_before_norm=False,
                          backbone=None, weights="auto", image_size=224, width=32,
                          hidden=256, input_pool=1, input_scale=1.0):
    """Image -> L2-normalized ``dim`` embedding, the regularizer added with ``add_loss``.

    The embedding layer, the normalization and the regularizer compute in float32 under a
    mixed-precision policy.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    if backbone is None:
        if input_scale != 1.0:
            x = keras.layers.Rescaling(input_scale)(x)
        x = _small_cnn(x, width, hidden, input_pool)
    else:
        # keras.applications preprocessing expects [0, 255] RGB.
        x = keras.layers.Rescaling(255.0 * input_scale)(x)
        x = _backbone(x, backbone, weights, image_size)
    emb = keras.layers.Dense(dim, dtype="float32", name="embedding")(x)
    if regularizer is not None and regularize_before_norm:
        emb = EmbeddingRegularization(regularizer, dtype="float32", name="regularizer")(emb)
    emb = keras.layers.UnitNormalization(dtype="float32", name="l2_normalize")(emb)
    if regularizer is not None and not regularize_before_norm:
        emb = EmbeddingRegularization(regularizer, dtype="float32", name="regularizer")(emb)
    return keras.Model(inputs, emb, name="embedding_net")


def build_and_compile(args, loss_name, reg_name, lr, input_shape, input_scale, strategy=None):
    """Builds and compiles one embedding model.

    ------------------------------------------------------------------------------------
    DISTRIBUTED TRAINING HOOK (``--distributed``, added separately): pass a
    ``tf.distribute.Strategy`` as `strategy`; the model, the optimizer and the loss are
    created inside its scope, nothing else in this script needs to change (the global
    batch is the p x l batch of the class-balanced dataset).
    ------------------------------------------------------------------------------------
    """
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        regularizer, lam, before_norm = make_regularizer(reg_name, loss_name, args.svmax_lambda)
        if strategy is not None and regularizer is not None:  # statistics of the global batch
            regularizer = type(regularizer).from_config(
                {**regularizer.get_config(), "cross_replica": True})
        model = build_embedding_model(
            input_shape, dim=args.dim, regularizer=regularizer,
            regularize_before_norm=before_norm, backbone=args.backbone, weights=args.weights,
            image_size=args.image_size, width=args.width, hidden=args.hidden,
            input_pool=args.input_pool, input_scale=input_scale)
        schedule = ConstantThenPolynomialDecay(lr, args.iterations, end_learning_rate=1e-7)
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
        model.compile(optimizer=optimizer, loss=make_loss(loss_name, args.contrastive_pairs),
                      jit_compile=True if args.jit_compile else "auto")
    return model, lam


# ---------------------------------------------------------------------------------- data


def _stratified_subset(x, y, n, seed):
    if n is None or n >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    idx = []
    classes = np.unique(y)
    per_class = max(1, n // len(classes))
    for c in classes:
        members = np.flatnonzero(y == c)
        idx.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    idx = np.sort(np.concatenate(idx))
    return x[idx], y[idx]


def load_data(args):
    """((x_train, y_train), (x_test, y_test), input_scale) with disjoint classes."""
    if args.dataset == "digits":
        (x_tr, y_tr), (x_te, y_te) = data_lib.load_digits_split()
    elif args.dataset == "fashion_mnist":
        (x_tr, y_tr), (x_te, y_te) = data_lib.load_fashion_mnist_split()
    elif args.dataset == "glyphs":
        (x_tr, y_tr), (x_te, y_te) = data_lib.load_glyphs_split(
            num_classes=args.glyph_classes, train_classes=args.glyph_classes // 2,
            image_size=args.image_size)
    else:
        (x_tr, y_tr), (x_te, y_te) = data_lib.load_tfds_split(
            args.dataset, image_size=(args.image_size, args.image_size))
    # uint8 images (tfds) stay uint8 in memory and are rescaled inside the model.
    input_scale = 1.0 / 255.0 if x_tr.dtype == np.uint8 else 1.0
    x_tr, y_tr = _stratified_subset(x_tr, y_tr, args.train_samples, seed=1)
    x_te, y_te = _stratified_subset(x_te, y_te, args.test_samples, seed=2)
    return (x_tr, y_tr), (x_te, y_te), input_scale


# ------------------------------------------------------------------------------ training


class _Progress(keras.callbacks.Callback):
    def __init__(self, steps_per_log, total):
        super().__init__()
        self.steps_per_log, self.total = steps_per_log, total
        self.start = time.perf_counter()
        self.last_loss = float("nan")

    def on_epoch_end(self, epoch, logs=None):
        self.last_loss = float((logs or {}).get("loss", float("nan")))
        step = (epoch + 1) * self.steps_per_log
        lr = self.model.optimizer.learning_rate
        print(f"    it {step:>5}/{self.total}  loss {self.last_loss:.4f}  "
              f"lr {float(ops.convert_to_numpy(lr)):.2e}  "
              f"{time.perf_counter() - self.start:5.1f}s", flush=True)


def train_and_evaluate(args, train, test, input_scale, loss_name, reg_name, lr, seed,
                       batch_size, strategy=None):
    (x_tr, y_tr), (x_te, y_te) = train, test
    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    num_classes = len(np.unique(y_tr))
    p, l = batch_layout(loss_name, batch_size, num_classes)
    model, lam = build_and_compile(args, loss_name, reg_name, lr, x_tr.shape[1:], input_scale,
                                   strategy)
    dataset = data_lib.class_balanced_dataset(x_tr, y_tr, p, l, seed=seed, replace=True)
    steps_per_log = max(1, min(args.log_every, args.iterations))
    epochs = max(1, math.ceil(args.iterations / steps_per_log))
    progress = _Progress(steps_per_log, epochs * steps_per_log)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps_per_log, epochs=epochs, verbose=0, shuffle=False,
              callbacks=[progress, keras.callbacks.TerminateOnNaN()])
    train_seconds = time.perf_counter() - start

    emb = evaluation.embed(model, x_te, batch_size=512, verbose=0)
    row = {
        "dataset": args.dataset, "loss": loss_name, "regularizer": reg_name, "lambda": lam,
        "lr": lr, "seed": seed, "batch_size": p * l, "p": p, "l": l,
        "iterations": args.iterations, "final_loss": progress.last_loss,
    }
    if np.all(np.isfinite(emb)) and math.isfinite(progress.last_loss):
        repeated = len(np.unique(y_te)) < len(y_te)  # MAP@R needs a label that occurs twice
        scores = evaluation.evaluate_retrieval(emb, y_te, ks=(1, 2, 4, 8), map_at_r=repeated)
        stats = metrics.spectrum_statistics(emb)
        row.update({
            "nmi": scores["nmi"], "map@r": 100.0 * scores.get("map@r", float("nan")),
            **{f"r@{k}": 100.0 * scores[f"recall@{k}"] for k in (1, 2, 4, 8)},
            "test_s_mu": stats["s_mu"], "test_s_mu_lower": stats["s_mu_lower"],
            "test_s_mu_upper": stats["s_mu_upper"],
            "collapsed_fraction": stats["collapsed_fraction"], "diverged": 0,
        })
    else:  # NaN loss: a degenerate run (reported, not hidden)
        row.update({"nmi": float("nan"), "map@r": float("nan"),
                    **{f"r@{k}": float("nan") for k in (1, 2, 4, 8)},
                    "test_s_mu": float("nan"), "test_s_mu_lower": float("nan"),
                    "test_s_mu_upper": float("nan"), "collapsed_fraction": float("nan"),
                    "diverged": 1})
    row["train_seconds"] = train_seconds
    row["seconds"] = time.perf_counter() - start
    return row


# ------------------------------------------------------------------------------- results


def add_deltas(rows):
    """Delta R@1 against the unregularized run with the same loss, lr, seed and batch."""
    base = {(r["loss"], r["lr"], r["seed"], r["batch_size"]): r["r@1"]
            for r in rows if r["regularizer"] == "none"}
    for r in rows:
        ref = base.get((r["loss"], r["lr"], r["seed"], r["batch_size"]))
        r["delta_r@1"] = float("nan") if ref is None or r["regularizer"] == "none" else (
            r["r@1"] - ref)
    return rows


def summarize(rows):
    """Mean and std over seeds per (loss, regularizer, lr, batch size)."""
    groups = {}
    for r in rows:
        key = (r["loss"], r["regularizer"], r["lr"], r["batch_size"])
        groups.setdefault(key, []).append(r)
    order = {n: i for i, n in enumerate(LOSSES)}
    reg_order = {n: i for i, n in enumerate(REGULARIZERS)}
    table = []
    for key in sorted(groups, key=lambda k: (order[k[0]], -k[2], k[3], reg_order[k[1]])):
        runs = groups[key]
        out = {"dataset": runs[0]["dataset"], "loss": key[0], "regularizer": key[1],
               "lambda": runs[0]["lambda"], "lr": key[2], "batch_size": key[3],
               "seeds": len(runs), "diverged": sum(r["diverged"] for r in runs)}
        for metric in ("nmi", "r@1", "r@8", "delta_r@1", "test_s_mu"):
            mean, std = _common.mean_std(r[metric] for r in runs)
            out[f"{metric}_mean"], out[f"{metric}_std"] = mean, std
        out["test_s_mu_upper"] = _common.mean_std(r["test_s_mu_upper"] for r in runs)[0]
        table.append(out)
    return table


def _pm(mean, std, digits, runs=2):
    if not math.isfinite(mean):
        return "-"
    if runs <= 1:  # one seed: no spread to report
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(table):
    names = {"none": "vanilla", "spreadout": "spread-out", "svmax": "SVMax", "vicreg": "VICReg"}
    lines = ["| loss | regularizer (λ) | lr | b | NMI | R@1 (%) | R@8 (%) | ΔR@1 | test s_μ (U) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        reg = names[t["regularizer"]]
        if t["regularizer"] != "none":
            reg += f" ({t['lambda']:g})"
        div = f" ({t['diverged']} diverged)" if t["diverged"] else ""
        n = t["seeds"]
        lines.append(
            f"| {t['loss']} | {reg}{div} | {t['lr']:g} | {t['batch_size']} | "
            f"{_pm(t['nmi_mean'], t['nmi_std'], 3, n)} | "
            f"{_pm(t['r@1_mean'], t['r@1_std'], 1, n)} | "
            f"{_pm(t['r@8_mean'], t['r@8_std'], 1, n)} | "
            f"{_pm(t['delta_r@1_mean'], t['delta_r@1_std'], 1, n)} | "
            f"{_pm(t['test_s_mu_mean'], t['test_s_mu_std'], 2, n)} ({t['test_s_mu_upper']:.2f}) |")
    return "\n".join(lines) + "\n"


COLORS = {"none": "k", "spreadout": "tab:blue", "svmax": "tab:red", "vicreg": "tab:green"}
STYLES = ["-", "--", ":", "-."]


def _loss_axes(table):
    plt = _common.pyplot()
    losses = [n for n in LOSSES if any(t["loss"] == n for t in table)]
    fig, axes = plt.subplots(1, len(losses), figsize=(max(10.0, 4.0 * len(losses)), 4.2),
                             squeeze=False)
    return fig, list(zip(axes[0], losses))


def _errorbar(ax, pts, **kwargs):
    xs, means, stds = (np.array(v, dtype=float) for v in zip(*sorted(pts)))
    ax.errorbar(xs, means, yerr=stds, marker="o", ms=5, capsize=3, **kwargs)


def plot_recall_vs_lr(table, path):
    """R@1 (mean +- std over seeds) against the learning rate, per loss (paper Fig. 9)."""
    fig, axes = _loss_axes(table)
    for ax, loss in axes:
        rows = [t for t in table if t["loss"] == loss]
        sizes = sorted({t["batch_size"] for t in rows}, reverse=True)
        for reg in REGULARIZERS:
            for i, b in enumerate(sizes):
                pts = [(t["lr"], t["r@1_mean"], t["r@1_std"]) for t in rows
                       if t["regularizer"] == reg and t["batch_size"] == b]
                if pts:
                    _errorbar(ax, pts, color=COLORS[reg], ls=STYLES[i % len(STYLES)],
                              label=reg if len(sizes) == 1 else f"{reg} b={b}")
        ax.set_xscale("log")
        ax.set_title(f"{loss} loss (b={'/'.join(map(str, sizes))}): R@1 vs lr", fontsize=12)
        ax.set_xlabel("learning rate", fontsize=11)
        ax.set_ylabel("R@1 (%), test classes", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=10)
    fig.tight_layout()
    return _common.save_figure(fig, path)


def plot_test_smu(table, path):
    """s_mu of the test embeddings with/without regularizer, and its bounds (paper Fig. 6 /
    appendix Fig. 15): against the training batch size when several were run for a loss,
    else against the learning rate."""
    fig, axes = _loss_axes(table)
    for ax, loss in axes:
        rows = [t for t in table if t["loss"] == loss]
        sizes = sorted({t["batch_size"] for t in rows})
        lrs = sorted({t["lr"] for t in rows}, reverse=True)
        by_batch = len(sizes) > 1
        for reg in REGULARIZERS:
            for i, group in enumerate(lrs if by_batch else [None]):
                pts = [((t["batch_size"] if by_batch else t["lr"]), t["test_s_mu_mean"],
                        t["test_s_mu_std"]) for t in rows
                       if t["regularizer"] == reg and (group is None or t["lr"] == group)]
                if pts:
                    _errorbar(ax, pts, color=COLORS[reg], ls=STYLES[i % len(STYLES)],
                              label=reg if not by_batch or len(lrs) == 1 else f"{reg} lr={group:g}")
        upper = np.nanmax([t["test_s_mu_upper"] for t in rows])
        ax.axhline(upper, color="red", lw=1, label=f"upper bound U={upper:.2f}")
        if by_batch:
            ax.set_xticks(sizes)
            ax.set_xlabel("training batch size b", fontsize=11)
            ax.set_title(f"{loss} loss: test s_μ vs b", fontsize=12)
        else:
            ax.set_xscale("log")
            ax.set_xlabel("learning rate", fontsize=11)
            ax.set_title(f"{loss} loss (b={sizes[0]}): test s_μ", fontsize=12)
        ax.set_ylim(0, upper * 1.08)
        ax.set_ylabel("s_μ of the test embeddings", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=10, loc="lower left")
    fig.tight_layout()
    return _common.save_figure(fig, path)


# ---------------------------------------------------------------------------------- main


def read_runs(paths):
    """Rows of earlier ``*_runs.csv`` files, numbers converted back."""
    import csv

    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key in ("dataset", "loss", "regularizer"):
                        continue
                    number = float(value) if value not in ("", None) else float("nan")
                    row[key] = int(number) if key in _INT_KEYS and math.isfinite(number) else number
                rows.append(row)
    return rows


_INT_KEYS = ("seed", "batch_size", "p", "l", "iterations", "diverged")


def write_results(rows, prefix):
    add_deltas(rows)
    table = summarize(rows)
    _common.write_csv(rows, prefix + "_runs.csv")
    _common.write_csv(table, prefix + "_table.csv")
    md = markdown_table(table)
    with open(prefix + "_table.md", "w") as f:
        f.write(md)
    print("\n" + md)
    plot_recall_vs_lr(table, prefix + "_recall_vs_lr.png")
    plot_test_smu(table, prefix + "_test_smu.png")
    print(f"[{SCRIPT}] wrote {prefix}_runs.csv, {prefix}_table.csv, {prefix}_table.md")
    return table


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        os.makedirs(args.out, exist_ok=True)
        rows = read_runs(args.merge)
        tag = args.tag if args.tag_given else rows[0]["dataset"]
        write_results(rows, os.path.join(args.out, tag))
        return rows
    out = _common.setup(args, SCRIPT)
    _common.mixed_precision_note(args)
    strategy = None  # DISTRIBUTED TRAINING HOOK: --distributed sets a tf.distribute strategy
    if args.distributed:
        if keras.backend.backend() != "tensorflow":
            raise SystemExit("--distributed needs KERAS_BACKEND=tensorflow (on JAX use "
                             "keras.distribution.DataParallel: statistics are global there)")
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        print(f"[{SCRIPT}] MirroredStrategy over {strategy.num_replicas_in_sync} replica(s); "
              "the batch size is the global batch")

    t0 = time.perf_counter()
    train, test, input_scale = load_data(args)
    print(f"[{SCRIPT}] {args.dataset}: train {len(train[1])} images of classes "
          f"{np.unique(train[1]).tolist()[:10]}{'...' if len(np.unique(train[1])) > 10 else ''}, "
          f"test {len(test[1])} images of {len(np.unique(test[1]))} disjoint classes, "
          f"input {train[0].shape[1:]} ({time.perf_counter() - t0:.1f}s)")
    model_desc = args.backbone or (
        f"small CNN (width {args.width}, hidden {args.hidden}, input pool {args.input_pool})")
    print(f"[{SCRIPT}] model: {model_desc} -> Dense({args.dim}) -> L2 norm; SGD momentum 0.9, "
          f"K={args.iterations} (lr fixed K/2, then polynomial decay to 1e-7)")

    grid = [(loss, b, lr, seed, reg) for loss in args.losses for b in args.batch_sizes
            for lr in args.lrs for seed in args.seeds for reg in args.regularizers]
    rows = []
    for i, (loss, b, lr, seed, reg) in enumerate(grid, 1):
        p, l = batch_layout(loss, b, len(np.unique(train[1])))
        lam = make_regularizer(reg, loss, args.svmax_lambda)[1]
        print(f"[{i}/{len(grid)}] {loss} + {reg}{f' (lambda={lam:g})' if lam else ''}  "
              f"lr={lr:g} seed={seed} batch {p}x{l}={p * l}", flush=True)
        row = train_and_evaluate(args, train, test, input_scale, loss, reg, lr, seed, b,
                                 strategy)
        rows.append(row)
        if row["diverged"]:
            print("    -> diverged (NaN loss)")
        else:
            print(f"    -> NMI {row['nmi']:.3f}  R@1 {row['r@1']:.2f}  R@8 {row['r@8']:.2f}  "
                  f"test s_mu {row['test_s_mu']:.3f} (U={row['test_s_mu_upper']:.3f})  "
                  f"{row['seconds']:.1f}s", flush=True)

    write_results(rows, os.path.join(out, args.tag))
    print(f"[{SCRIPT}] total {time.perf_counter() - t0:.0f}s")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
