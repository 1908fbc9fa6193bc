"""The SVMax paper's Table 1 protocol (Sec. 4.1), shared by the studies: the ranking losses
and their margins, the regularizers and the paper's lambda per loss, the p x l batch layout.

Importing it does not import Keras (``--help`` stays fast); :func:`make_loss` and
:func:`make_regularizer` import ``keras_featreg`` when called.
"""

# The paper's p (classes per batch) x l (samples per class), b = 144 for every loss.
PAPER_BATCH = {"contrastive": (36, 4), "triplet": (24, 6), "npair": (72, 2), "angular": (72, 2)}
# The paper's SVMax lambda per ranking loss (bounded SVMax, eq. 4).
PAPER_LAMBDA = {"contrastive": 1.0, "triplet": 0.1, "npair": 1.0, "angular": 2.0}
LOSSES = tuple(PAPER_BATCH)
REGULARIZERS = ("none", "spreadout", "svmax", "vicreg")
# The command-line loss names -> keras_featreg.losses.get arguments: the paper's margins, hard
# triplet mining (as in Table 1); the contrastive loss over all pairs (see make_loss).
LOSS_ARGS = {
    "contrastive": {"margin": 1.0},
    "triplet": {"margin": 0.2, "mining": "hard"},
    "npair": {},
    "angular": {"alpha": 45.0},
}
BACKBONES = {
    # name: (constructor, preprocess_input) -- both looked up lazily in keras.applications
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2"),
    "resnet50": ("ResNet50", "resnet"),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet"),
    "inception_v3": ("InceptionV3", "inception_v3"),
}


def loss_args(name, contrastive_pairs="all"):
    """``keras_featreg.losses.get`` arguments ``(name, kwargs)`` of a command-line loss name.

    ``contrastive_pairs="balanced"``: the contrastive loss on the paper's 72 positive + 72
    negative pairs of a 36 x 4 batch (the hardest of each kind), instead of the mean over all
    pairs, which the many inactive negative pairs dilute (see docs/concepts/losses.md).
    """
    if name not in LOSS_ARGS:
        raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")
    kwargs = dict(LOSS_ARGS[name])
    if name == "contrastive" and contrastive_pairs == "balanced":
        kwargs["miner"] = "balanced_pair"
    return name, kwargs


def make_loss(name, contrastive_pairs="all"):
    """The paper's ranking loss `name`, from ``keras_featreg.losses.get``."""
    from keras_featreg import losses

    identifier, kwargs = loss_args(name, contrastive_pairs)
    return losses.get(identifier, **kwargs)


def make_regularizer(name, loss_name, svmax_lambda=None):
    """(regularizer or None, lambda, applied_before_normalization)."""
    from keras_featreg.regularizers import SVMax, SpreadOut, VICReg

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
