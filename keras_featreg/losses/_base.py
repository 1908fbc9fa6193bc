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

import numbers

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg import distances as distances_lib
from keras_featreg import miners as miners_lib
from keras_featreg import mining as mining_lib
from keras_featreg import reducers as reducers_lib

PACKAGE = "keras_featreg"
KERAS_DEFAULT_REDUCTION = "sum_over_batch_size"

# --------------------------------------------------------------------------- validation


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return value


def check_margin(margin, name="margin"):
    return _utils.check_number(name, margin, minimum=0.0)


def check_positive(name, value):
    return _utils.check_number(name, value, minimum=0.0, strict=True)


def check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 2:
        raise ValueError(
            f"`batch_size` must be an integer >= 2. Received: batch_size={batch_size!r}"
        )
    return int(batch_size)


def embeddings_of(y_pred, name="y_pred"):
    return _utils.as_float_tensor(y_pred, name=name, min_rank=2, max_rank=2)


def inputs(y_true, y_pred, cross_replica=False):
    """Validated ``(labels (b,), embeddings (b, d))`` in the compute dtype.

    ``cross_replica=True``: inside a replica of a multi-replica ``tf.distribute`` strategy,
    the labels and embeddings of all replicas, concatenated in replica order (the global
    batch); unchanged elsewhere.  See :func:`keras_featreg.backend.gather_replicas`.
    """
    embeddings = embeddings_of(y_pred)
    labels = mining_lib.labels_vector(y_true, name="y_true")
    n_labels, n_embeddings = labels.shape[0], embeddings.shape[0]
    if n_labels is not None and n_embeddings is not None and n_labels != n_embeddings:
        raise ValueError(
            "`y_true` and `y_pred` must have the same batch size. Received: "
            f"y_true.shape={tuple(ops.shape(y_true))}, y_pred.shape={tuple(embeddings.shape)}"
        )
    if cross_replica:
        labels, embeddings = gather_replicas(labels, embeddings)
    return labels, embeddings


def gather_replicas(labels, embeddings):
    """Labels and embeddings of all replicas (no-op outside a multi-replica ``tf.distribute``).

    Two all-gathers: a batched one packs its inputs together and needs a single dtype and
    device memory kind (TensorFlow keeps int32 tensors in host memory).
    """
    return _backend.gather_replicas(labels), _backend.gather_replicas(embeddings)


def masked_mean(values, mask):
    """Mean of `values` over `mask` (broadcast), 0 when the mask is empty."""
    return reducers_lib.MeanReducer()(values, mask)


# ------------------------------------------------------------------------------ classes


class BatchLoss(keras.losses.Loss):
    """Base of the batch-level losses: the Keras contract where the value is a batch statistic.

    ``keras.losses.Loss.__call__`` would cast ``y_pred`` *and the labels* to the loss
    dtype before ``call``: an integer ``y_pred`` would pass silently and integer labels
    above 2**24 would collide in float32. The batch losses already return a scalar, so
    there is nothing to reduce or weight: ``__call__`` validates, calls ``call`` on the
    inputs as given and casts the result to the loss dtype.

    ``reduction``: only Keras's default ``"sum_over_batch_size"`` is accepted (the value
    is one scalar for the batch; a loss built from parts chooses its averaging with
    ``reducer=``). Anything else raises ``ValueError`` rather than being ignored.
    """

    def __init__(self, reduction=KERAS_DEFAULT_REDUCTION, name=None, dtype=None):
        if reduction != KERAS_DEFAULT_REDUCTION:
            raise ValueError(
                f"{type(self).__name__} computes one value for the whole batch (pairs, "
                "triplets or batch statistics), so a Keras `reduction` does not apply; "
                "choose the averaging with `reducer=` where the loss has one "
                f"('mean', 'mean_nonzero', 'sum', 'per_anchor_mean'). Expected: "
                f"reduction={KERAS_DEFAULT_REDUCTION!r} (the default). "
                f"Received: reduction={reduction!r}"
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)

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
    the loss takes no miner), implement ``compute_loss(self, matrix, positive,
    negative, mined)`` returning a scalar, and add the loss's own arguments to
    ``get_config``.
    """

    default_distance = "euclidean"
    default_reducer = "mean"
    miner_output = "pairs"

    def __init__(self, distance=None, miner=None, reducer=None, cross_replica=False,
                 reduction=KERAS_DEFAULT_REDUCTION, name=None, dtype=None, miner_arg="miner"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.distance = distances_lib.get(self.default_distance if distance is None else distance)
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
        self.cross_replica = check_bool("cross_replica", cross_replica)

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
            positive, negative = miners_lib.reference_masks(labels)
        else:
            matrix = self.distance(embeddings, ref_embeddings)
            if same_sample is None:
                same_sample = ops.zeros(ops.shape(matrix), "bool")
            positive, negative = miners_lib.reference_masks(labels, ref_labels, same_sample)
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
            "cross_replica": self.cross_replica,
        })
        return config
