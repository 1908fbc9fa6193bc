"""Cross-batch memory (XBM, Wang, Zhang, Huang & Scott, CVPR 2020) for pair and triplet losses.

The memory is model state: an :class:`EmbeddingMemory` layer (identity on its input) owns
the ring buffer as non-trainable variables, and :class:`CrossBatchMemory` reads and
assigns them while computing the loss. Keras's trainers carry non-trainable variables
updated inside ``compute_loss`` (TensorFlow: plain assignments inside the train
function; JAX: ``Trainer.stateless_compute_loss`` collects them), so the memory fills up
under ``model.fit`` on both backends, with ``jit_compile`` True or False.
"""

import weakref

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import miners as miners_lib
from keras_featreg.layers import _MEMORIES, EmbeddingMemory
from keras_featreg.losses._base import PACKAGE, BatchLoss, MetricLoss, embeddings_of
from keras_featreg.ops.labels import check_labels, pair_masks

def _stateless_scope():
    try:
        from keras.src.backend.common.stateless_scope import get_stateless_scope
    except ImportError:  # pragma: no cover - a Keras without the private module
        return None
    return get_stateless_scope()


def _check_wrapped(loss):
    if isinstance(loss, dict):
        loss = keras.saving.deserialize_keras_object(loss)
    if (not isinstance(loss, MetricLoss) or loss.miner_output not in ("pairs", "triplets")
            or type(loss).call is not MetricLoss.call):
        raise ValueError(
            "`loss` must be a keras_featreg pair or triplet loss computed from the distance "
            "matrix (a MetricLoss such as ContrastiveLoss or TripletLoss). Received: "
            f"loss={loss!r}")
    if loss.cross_replica:
        raise ValueError("CrossBatchMemory does not support `cross_replica` losses (the "
                         "memory is per model, not per replica). Received: "
                         f"loss={type(loss).__name__}(cross_replica=True)")
    return loss


@keras.saving.register_keras_serializable(package=PACKAGE)
class CrossBatchMemory(BatchLoss):
    """Cross-batch memory (XBM, Wang et al., CVPR 2020) around a pair or triplet loss.

    Every call (pytorch-metric-learning's ``CrossBatchMemory`` semantics): (1) the batch
    is written, detached, into the ring buffer at slots ``q, q + 1, ...`` (mod
    ``memory_size``); (2) the references are the filled slots (memory and current batch);
    (3) the wrapped `loss` runs on the ``(b, m)`` matrix between the batch rows (anchors)
    and the references: positive pairs share a label, the pair of a row with its own slot
    is removed, negatives differ in label; (4) the gradient reaches the current batch
    through the anchor side only (the memory is detached)::

        loss_xbm(X, y) = loss.compute(y, X, ref = memory U {X, y} (detached))

    The memory lives in the model: an :class:`EmbeddingMemory` layer created by the loss
    as ``xbm.memory`` that you place after the embedding layer. ``model.fit`` then carries
    it on TensorFlow and JAX (``jit_compile`` True or False), and it is saved with the
    model. Limitations: ``evaluate``/``predict`` calls of the loss also push into the
    memory (as in pytorch-metric-learning); no ``tf.distribute`` multi-replica support;
    a loss restored from a ``.keras`` file finds its layer by name among the
    :class:`EmbeddingMemory` layers built in this process (the last built of that name);
    batch size must not exceed ``memory_size``; labels are stored as int32.

    Args:
        loss: the wrapped loss: :class:`~keras_featreg.losses.ContrastiveLoss`,
            :class:`~keras_featreg.losses.TripletLoss` (any miner) or another
            ``MetricLoss`` on pairs or triplets (not N-pair/angular).
        embedding_size: dimension of the embeddings.
        memory_size: number of memory slots (>= batch size). Defaults to `1024`.
        miner: optional pair miner (:mod:`keras_featreg.miners`) applied to the
            batch-memory pairs before the wrapped loss (intersected with its own miner).
        memory_name: name of an existing :class:`EmbeddingMemory` to use instead of a new
            one (set by deserialization).
        **kwargs: ``reduction``, ``name``, ``dtype``: see
            :class:`~keras_featreg.losses.BatchLoss` (``cross_replica=True`` is refused).

    Example:

    >>> import keras, numpy as np
    >>> from keras_featreg.losses import ContrastiveLoss, CrossBatchMemory
    >>> xbm = CrossBatchMemory(ContrastiveLoss(), embedding_size=2, memory_size=8)
    >>> inputs = keras.Input((3,))
    >>> emb = xbm.memory(keras.layers.Dense(2)(inputs))
    >>> model = keras.Model(inputs, emb)
    >>> model.compile("sgd", loss=xbm)
    >>> x, y = np.ones((4, 3), "float32"), np.array([0, 0, 1, 1])
    >>> _ = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    >>> int(xbm.memory.count.numpy() if hasattr(xbm.memory.count, "numpy") else xbm.memory.count)
    8
    """

    def __init__(self, loss, embedding_size, memory_size=1024, miner=None, memory_name=None,
                 **kwargs):
        super().__init__(**kwargs)
        if self.cross_replica:
            raise ValueError("CrossBatchMemory does not support tf.distribute replicas. "
                             "Received: cross_replica=True")
        self.loss = _check_wrapped(loss)
        self.embedding_size = _utils.check_int("embedding_size", embedding_size)
        self.memory_size = _utils.check_int("memory_size", memory_size)
        self.miner = miners_lib.get(miner)
        if self.miner is not None and self.miner.output not in ("pairs", "unknown"):
            raise ValueError(
                "CrossBatchMemory's `miner` must be a pair miner (its pairs restrict the "
                f"batch-memory pairs). Received: miner={miner!r}")
        if memory_name is None:
            self._memory = EmbeddingMemory(self.memory_size, self.embedding_size)
            self.memory_name = self._memory.name
        else:
            if not isinstance(memory_name, str):
                raise ValueError(
                    f"`memory_name` must be a layer name. Received: memory_name={memory_name!r}")
            self._memory = None
            self.memory_name = memory_name

    @property
    def memory(self):
        """The :class:`EmbeddingMemory` layer to place in the model."""
        if self._memory is None:
            layer = _MEMORIES.get(self.memory_name)
            if layer is None:
                raise ValueError(
                    f"CrossBatchMemory {self.name!r} found no built EmbeddingMemory named "
                    f"{self.memory_name!r}: load or build the model that holds it first.")
            self._memory = layer
        return self._memory

    def _checked_memory(self):
        memory = self.memory
        if not memory.built:
            raise ValueError(
                f"The memory of CrossBatchMemory {self.name!r} is not part of a model: add "
                "`xbm.memory` after the embedding layer (`outputs = xbm.memory(embeddings)`) "
                "so that the memory is model state.")
        if (memory.memory_size, memory.embedding_size) != (self.memory_size, self.embedding_size):
            raise ValueError(
                f"EmbeddingMemory {memory.name!r} has memory_size={memory.memory_size}, "
                f"embedding_size={memory.embedding_size}; CrossBatchMemory expects "
                f"memory_size={self.memory_size}, embedding_size={self.embedding_size}.")
        # JAX's trainer maps the model's variables in a StatelessScope: a memory that is
        # not in the model would be read and "updated" without ever being written back.
        # (Symbolic passes use a scope with an empty mapping.)
        scope = _stateless_scope()
        if (scope is not None and getattr(scope, "state_mapping", None)
                and scope.get_current_value(memory.embeddings) is None):
            raise ValueError(
                f"The memory of CrossBatchMemory {self.name!r} ({memory.name!r}) is not a "
                "layer of the model being trained: add `xbm.memory` after the embedding "
                "layer (`outputs = xbm.memory(embeddings)`).")
        return memory

    def call(self, y_true, y_pred):
        labels, embeddings = check_labels(y_true, embeddings_of(y_pred))
        labels = ops.cast(labels, "int32")
        b = embeddings.shape[0]
        if b is not None and int(b) > self.memory_size:
            raise ValueError(
                f"The batch size must not exceed `memory_size` ({self.memory_size}). "
                f"Received: y_pred.shape={tuple(embeddings.shape)}")
        if embeddings.shape[-1] is not None and int(embeddings.shape[-1]) != self.embedding_size:
            raise ValueError(
                f"`y_pred` must have {self.embedding_size} columns (embedding_size). "
                f"Received: y_pred.shape={tuple(embeddings.shape)}")
        memory = self._checked_memory()
        m = self.memory_size
        n = ops.shape(embeddings)[0]
        position = ops.convert_to_tensor(memory.position)
        count = ops.convert_to_tensor(memory.count)
        slots = ops.mod(position + ops.arange(n, dtype="int32"), m)
        detached = ops.stop_gradient(embeddings)
        mem_emb = ops.scatter_update(ops.convert_to_tensor(memory.embeddings),
                                     ops.expand_dims(slots, 1),
                                     ops.cast(detached, memory.embeddings.dtype))
        mem_lab = ops.scatter_update(ops.convert_to_tensor(memory.labels),
                                     ops.expand_dims(slots, 1), labels)
        n32 = ops.cast(n, "int32")
        new_count = ops.minimum(count + n32, m)
        memory.embeddings.assign(mem_emb)
        memory.labels.assign(mem_lab)
        memory.position.assign(ops.mod(position + n32, m))
        memory.count.assign(new_count)

        index = ops.arange(m, dtype="int32")
        ref_valid = ops.less(index, new_count)
        same_sample = ops.equal(ops.expand_dims(slots, 1), ops.expand_dims(index, 0))
        ref_emb = ops.stop_gradient(ops.cast(mem_emb, embeddings.dtype))
        pair_mask = None
        if self.miner is not None:
            matrix = self.loss.distance(embeddings, ref_emb)
            positive, negative = pair_masks(labels, mem_lab, same_sample)
            valid = ops.expand_dims(ref_valid, 0)
            positive = ops.logical_and(positive, valid)
            negative = ops.logical_and(negative, valid)
            mined = self.miner(matrix, labels, mem_lab, masks=(positive, negative),
                               distance=self.loss.distance)
            pair_mask = ops.logical_or(ops.logical_and(positive, mined.positive),
                                       ops.logical_and(negative, mined.negative))
        value = self.loss.compute(labels, embeddings, ref_labels=mem_lab, ref_embeddings=ref_emb,
                                  same_sample=same_sample, ref_valid=ref_valid,
                                  pair_mask=pair_mask)
        return value

    def bounds(self, batch_size):
        """The wrapped loss's bounds (a mean of the same per-pair/triplet terms)."""
        return self.loss.bounds(batch_size)

    def get_config(self):
        return {
            "name": self.name,
            "loss": keras.saving.serialize_keras_object(self.loss),
            "embedding_size": self.embedding_size,
            "memory_size": self.memory_size,
            "miner": (None if self.miner is None
                      else miners_lib.name_of(self.miner) if isinstance(miners_lib.name_of(self.miner), str)
                      else keras.saving.serialize_keras_object(self.miner)),
            "memory_name": self.memory_name,
        }
