"""The private base of the losses: validation, the Keras contract, and parts composition.

* :class:`BatchLoss` -- a ``keras.losses.Loss`` whose value is a statistic of the whole
  batch (every ranking loss, VICReg, Barlow Twins): labels are not cast to float,
  ``sample_weight`` and any ``reduction`` but Keras's default are refused with a clear
  error (the averaging is the loss's own, or its ``reducer``'s), the value is scaled
  for ``tf.distribute`` replicas like any Keras loss.
* :class:`MetricLoss` -- a :class:`BatchLoss` on ``(labels, embeddings)`` built from a
  :mod:`~keras_featreg.distances` object, an optional :mod:`~keras_featreg.miners` object
  and a :mod:`~keras_featreg.reducers` object. A subclass implements
  :meth:`MetricLoss.compute_loss` on the matrix between the batch and its references
  (the batch itself, or a :class:`~keras_featreg.losses.CrossBatchMemory`).
"""

import re

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg import distances as distances_lib
from keras_featreg import miners as miners_lib
from keras_featreg import reducers as reducers_lib
from keras_featreg._utils import PACKAGE  # noqa: F401  (the families register with it)
from keras_featreg.ops.labels import check_labels, pair_masks

KERAS_DEFAULT_REDUCTION = "sum_over_batch_size"


def check_batch_size(batch_size):
    """The batch size of a ``bounds(batch_size)`` call: an integer >= 2."""
    return _utils.check_int("batch_size", batch_size, minimum=2)


def embeddings_of(y_pred, name="y_pred"):
    """`y_pred` as a ``(b, d)`` float tensor (half precision computed in float32)."""
    return _utils.as_float_tensor(y_pred, name=name, min_rank=2, max_rank=2)


def inputs(y_true, y_pred, cross_replica=False):
    """Validated ``(labels (b,), embeddings (b, d))`` in the compute dtype.

    The input contract of :func:`keras_featreg.ops.labels.check_labels`: integer-valued
    labels, one per embedding, a non-empty batch (a violation known only at run time
    makes the embeddings, hence the loss, NaN).

    ``cross_replica=True``: inside a replica of a multi-replica ``tf.distribute`` strategy,
    the labels and embeddings of all replicas, concatenated in replica order (the global
    batch); unchanged elsewhere.  See :func:`keras_featreg.backend.gather_replicas`.
    """
    labels, embeddings = check_labels(y_true, embeddings_of(y_pred))
    if cross_replica:
        # Two all-gathers: a batched one packs its inputs together and needs a single
        # dtype and device memory kind (TensorFlow keeps int32 tensors in host memory).
        labels = _backend.gather_replicas(labels)
        embeddings = _backend.gather_replicas(embeddings)
    return labels, embeddings


def _snake(name):
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


# ------------------------------------------------------------------------------ classes


class BatchLoss(keras.losses.Loss):
    """Base of the batch-level losses: the Keras contract where the value is a batch statistic.

    ``keras.losses.Loss.__call__`` would cast ``y_pred`` *and the labels* to the loss
    dtype before ``call``: an integer ``y_pred`` would pass silently and integer labels
    above 2**24 would collide in float32. The batch losses already return a scalar, so
    there is nothing to reduce or weight: ``__call__`` validates, calls ``call`` on the
    inputs as given and casts the result to the loss dtype.

    The arguments every loss of the library takes (through ``**kwargs`` of its
    constructor; documented here once):

    Args:
        cross_replica: bool. Under a ``tf.distribute`` strategy, gather the inputs of all
            replicas and compute the loss (mining included) over the global batch; each
            replica receives the gradient of its own rows. Like every Keras loss, the
            value returned inside a replica is divided by the number of replicas, so one
            ``model.fit`` step and the reported loss equal a single-device step on the
            global batch. Defaults to `False` (each replica computes on its own slice).
            No-op outside a strategy and on JAX, whose ``DataParallel`` step already sees
            the global batch. See ``docs/guides/multi-worker.md``.
        reduction: only Keras's default ``"sum_over_batch_size"`` is accepted (the value
            is one scalar for the batch; a loss built from parts chooses its averaging
            with ``reducer=``). Anything else raises ``ValueError`` rather than being
            ignored; ``sample_weight`` is refused the same way.
        name: name of the loss. Defaults to the class name in snake case
            (``"triplet_loss"``).
        dtype: dtype of the returned loss. Defaults to `keras.backend.floatx()`. (The
            computation runs in float32, or float64 for float64 inputs.)
    """

    default_name = None
    config_keys = ()  # the subclass's own constructor arguments, saved by get_config

    def __init__(self, cross_replica=False, reduction=KERAS_DEFAULT_REDUCTION, name=None,
                 dtype=None):
        if reduction != KERAS_DEFAULT_REDUCTION:
            raise ValueError(
                f"{type(self).__name__} computes one value for the whole batch (pairs, "
                "triplets or batch statistics), so a Keras `reduction` does not apply; "
                "choose the averaging with `reducer=` where the loss has one "
                f"('mean', 'mean_nonzero', 'sum', 'per_anchor_mean'). Expected: "
                f"reduction={KERAS_DEFAULT_REDUCTION!r} (the default). "
                f"Received: reduction={reduction!r}"
            )
        if name is None:
            name = self.default_name or _snake(type(self).__name__)
        elif not isinstance(name, str):
            raise ValueError(f"`name` must be a string. Received: name={name!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.cross_replica = _utils.check_bool("cross_replica", cross_replica)

    def get_config(self):
        """Keras's config, ``cross_replica`` and every attribute named in ``config_keys``
        along the class hierarchy (the constructor arguments of the same names)."""
        config = super().get_config()
        config["cross_replica"] = self.cross_replica
        for cls in reversed(type(self).__mro__):
            for key in vars(cls).get("config_keys", ()):
                config[key] = getattr(self, key)
        return config

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} is a batch-level loss and does not support "
                "`sample_weight` (or `class_weight`). Received: sample_weight="
                f"{type(sample_weight).__name__} of shape {tuple(getattr(sample_weight, 'shape', ()))}"
            )
        with keras.name_scope(self.name):
            # Keras divides each replica's loss by the number of replicas (the replicas'
            # gradients are then summed); a loss that returns a scalar must do it itself.
            value = ops.cast(self.call(y_true, y_pred), self.dtype)
            return _backend.scale_loss_for_replicas(value)

    def bounds(self, batch_size):
        """(lower, upper) of the loss for L2-normalized embeddings, or None when unbounded."""
        return None


def _serialize_part(obj, name_of):
    name = name_of(obj)
    if obj is None or isinstance(name, str):
        return name
    return keras.saving.serialize_keras_object(obj)


class MetricLoss(BatchLoss):
    """A loss on ``(labels, embeddings)`` composed of a distance, a miner and a reducer.

    ``call`` validates the inputs (gathering the global batch with ``cross_replica``),
    computes ``matrix = distance(embeddings, references)``, the positive/negative pair
    masks, applies the miner when there is one, and hands everything to
    :meth:`compute_loss`. Non-finite embeddings give NaN.

    Subclass contract (see the "how to add a loss" guide): set ``default_distance``,
    ``default_reducer`` and ``miner_output`` (``"pairs"``, ``"triplets"`` or None when
    the loss takes no miner), take the loss's own arguments in ``__init__`` (stored as
    attributes of the same names, listed in ``config_keys``) and pass ``**kwargs`` on to
    this base, and implement ``compute_loss(self, matrix, positive, negative, mined)``
    returning a scalar.

    The arguments of every loss built from parts (and those of :class:`BatchLoss`:
    ``cross_replica``, ``reduction``, ``name``, ``dtype``):

    Args:
        distance: a :mod:`keras_featreg.distances` name or object. Defaults to the loss's
            ``default_distance``.
        miner: optional miner (:mod:`keras_featreg.miners`) of the kind the loss takes
            (``miner_output``): its pairs restrict the loss's pairs, its triplets are the
            loss's triplets. Default None: every pair.
        reducer: how the loss's terms are averaged (:mod:`keras_featreg.reducers`).
            Defaults to the loss's ``default_reducer``.
    """

    default_distance = "euclidean"
    default_reducer = "mean"
    miner_output = "pairs"
    orientation = None  # "distance" (smaller = closer) or "similarity": what the formula needs

    def __init__(self, distance=None, miner=None, reducer=None, miner_arg="miner", **kwargs):
        super().__init__(**kwargs)
        self.distance = distances_lib.get(self.default_distance if distance is None else distance)
        if self.orientation == "distance" and self.distance.is_inverted:
            raise ValueError(
                f"{type(self).__name__} needs a distance (smaller = closer): 'euclidean', "
                "'squared_euclidean' or 'cosine' (1 - cos), not a similarity. "
                f"Received: distance={distance!r}"
            )
        if self.orientation == "similarity" and not self.distance.is_inverted:
            raise ValueError(
                f"{type(self).__name__} needs a similarity (larger = closer): "
                f"'cosine_similarity' or 'dot_product'. Received: distance={distance!r}"
            )
        self.miner = miners_lib.get(miner, arg=miner_arg)
        if self.miner is not None:
            if self.miner_output is None:
                raise ValueError(
                    f"{type(self).__name__} does not take a miner. Received: miner={miner!r}")
            output = self.miner.output
            if output not in ("unknown", self.miner_output):
                raise ValueError(
                    f"{type(self).__name__} needs a {self.miner_output[:-1]} miner; "
                    f"{type(self.miner).__name__} mines {output}. Received: {miner_arg}={miner!r}"
                )
        self.reducer = reducers_lib.get(self.default_reducer if reducer is None else reducer)

    # ----------------------------------------------------------------- the computation

    def call(self, y_true, y_pred):
        labels, embeddings = inputs(y_true, y_pred, self.cross_replica)
        return self.compute(labels, embeddings)

    def compute(self, labels, embeddings, ref_labels=None, ref_embeddings=None,
                same_sample=None, ref_valid=None, pair_mask=None):
        """The loss of a batch against references (the batch itself by default).

        Args:
            labels: ``(b,)`` labels; embeddings: ``(b, d)``.
            ref_labels, ref_embeddings: ``(m,)`` and ``(m, d)`` references, or None.
            same_sample: ``(b, m)`` bool, True where a reference *is* the batch sample
                (excluded from the positive pairs); default: the diagonal when the
                references are the batch, nothing otherwise.
            ref_valid: ``(m,)`` bool, False for reference slots to ignore (an unfilled
                memory).
            pair_mask: ``(b, m)`` bool, False for pairs to drop before the loss's own
                miner (e.g. a :class:`~keras_featreg.losses.CrossBatchMemory` miner).
        """
        if ref_embeddings is None:
            matrix = self.distance(embeddings)
            positive, negative = pair_masks(labels)
        else:
            matrix = self.distance(embeddings, ref_embeddings)
            if same_sample is None:
                same_sample = ops.zeros(ops.shape(matrix), "bool")
            positive, negative = pair_masks(labels, ref_labels, same_sample)
        if ref_valid is not None:
            valid = ops.expand_dims(ref_valid, 0)
            positive, negative = ops.logical_and(positive, valid), ops.logical_and(negative, valid)
        if pair_mask is not None:
            positive = ops.logical_and(positive, pair_mask)
            negative = ops.logical_and(negative, pair_mask)
        mined = None
        if self.miner is not None and not self._mines_itself():
            mined = self.miner(matrix, labels, ref_labels, masks=(positive, negative),
                               distance=self.distance)
            if isinstance(mined, miners_lib.MinedPairs):
                positive = ops.logical_and(positive, mined.positive)
                negative = ops.logical_and(negative, mined.negative)
        value = self.compute_loss(matrix, positive, negative, mined)
        value = _utils.propagate_nonfinite(value, embeddings)
        if ref_embeddings is not None:
            value = _utils.propagate_nonfinite(value, ref_embeddings)
        return value

    def compute_loss(self, matrix, positive, negative, mined):
        raise NotImplementedError

    def _mines_itself(self):
        """True when the loss applies its miner itself (never building its output)."""
        return False

    # ------------------------------------------------------------------ configuration

    def get_config(self):
        config = super().get_config()
        config.update({
            "distance": _serialize_part(self.distance, distances_lib.name_of),
            "miner": _serialize_part(self.miner, miners_lib.name_of),
            "reducer": _serialize_part(self.reducer, reducers_lib.name_of),
        })
        return config
