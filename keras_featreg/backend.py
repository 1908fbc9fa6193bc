"""The one backend-specific module of keras-featreg.

Everything that differs between Keras backends lives here, small and isolated:

* :func:`in_xla_context`: whether the code being traced will be compiled by XLA on the
  TensorFlow backend (``jit_compile=True``, or Keras's ``"auto"`` on a GPU). TensorFlow's
  XLA lowering of SVD/eigh is a slow Jacobi iteration, so the spectral primitives switch
  to matmul-only iterations there. JAX lowers SVD/eigh to LAPACK (CPU) or cuSOLVER (GPU)
  even under ``jit``.
* :func:`lapack_threads_compete`: whether a LAPACK decomposition inside a training step slows
  the rest of the step (JAX on CPU), so that matmul-only iterations are cheaper overall.
* :func:`take_rows`: ``take_along_axis(x, index, axis=1)`` for ``(b, m)`` tensors, which
  Keras's TensorFlow backend builds from index grids (three times slower than
  ``tf.gather(..., batch_dims=1)`` without XLA; the sorted triplet mining calls it a few
  dozen times a step).
* :func:`searchsorted_rows`: a native batched ``searchsorted`` where it is the fastest
  (TensorFlow without XLA), else None (the caller runs its own binary search).
* :func:`keras_divides_activity_regularizers`: Keras >= 3.14 divides whatever an
  ``activity_regularizer`` returns by the batch size; earlier Keras 3 releases do not.
* :func:`top_k`: ``keras.ops.top_k``, except while JAX traces with symbolic (shape-
  polymorphic) dimensions, as ``model.export()`` does: JAX 0.10 serializes ``lax.top_k``
  as a StableHLO composite that TensorFlow 2.21 cannot read back, so the exported
  function uses ``k`` rounds of ``argmax`` instead (same values and indices).
* Distributed training: :func:`gather_replicas`, :func:`num_replicas_in_sync`,
  :func:`scale_loss_for_replicas` and :func:`make_losses_replica_local` (``tf.distribute``
  replica contexts; no-ops elsewhere, see "Distributed training" below).
"""

import functools
import numbers
import os
import threading

import keras


def backend_name():
    return keras.backend.backend()


def take_rows(x, index):
    """``out[a, j] = x[a, index[a, j]]`` for 2-D `x` and integer `index` (differentiable in `x`)."""
    if backend_name() == "tensorflow":
        import tensorflow as tf

        return tf.gather(x, index, batch_dims=1)
    return keras.ops.take_along_axis(x, index, axis=1)


def is_concrete(x):
    """True when the value of `x` can be read now (NumPy, an eager tensor), False for a
    symbolic one (a ``tf.function`` graph tensor, a JAX tracer, a ``KerasTensor``)."""
    if isinstance(x, keras.KerasTensor):
        return False
    name = backend_name()
    if name == "tensorflow":
        import tensorflow as tf

        return not tf.is_tensor(x) or not tf.is_symbolic_tensor(x)
    if name == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    return True


def has_native_row_search():
    """True where :func:`searchsorted_rows` has a native kernel: TensorFlow, not under XLA."""
    return backend_name() == "tensorflow" and not in_xla_context()


def searchsorted_rows(sorted_rows, queries, side):
    """Row-wise ``searchsorted`` (``int32``, ``side`` "left" or "right") with
    TensorFlow's native kernel when not compiling with XLA; None elsewhere (XLA lowers
    ``tf.searchsorted`` to a slow loop; JAX's is one-dimensional)."""
    if not has_native_row_search():
        return None
    import tensorflow as tf

    return tf.searchsorted(sorted_rows, queries, side=side, out_type=tf.int32)


def in_xla_context():
    """True while tracing a TensorFlow function that XLA will compile."""
    if backend_name() != "tensorflow":
        return False
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - private TF module moved
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


@functools.lru_cache(maxsize=None)
def lapack_threads_compete():
    """True on the JAX backend with a CPU default device, unless OpenBLAS is single-threaded.

    jaxlib runs ``eigh``/``svd`` on CPU through scipy's OpenBLAS, whose worker threads keep
    spinning after each call and take the cores from XLA's own thread pool, which runs the
    rest of the step.  Measured on 2 cores (conv net, b = 144, d = 128,
    ``benchmarks/bench_train_step.py``, ``results/bench_train_step_jax.txt``): SVMax with the
    Gram eigh cost +30.9 % of the step, the matmul-only Newton-Schulz path +9.1 %, and the
    Gram eigh with ``OPENBLAS_NUM_THREADS=1`` +4.5 %.  So the first of
    ``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS``, ``OMP_NUM_THREADS`` that is set (the order
    in which OpenBLAS reads them) equal to 1 makes this False.  Read once, at first use.
    """
    if backend_name() != "jax":
        return False
    for name in _BLAS_THREAD_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            if value == "1":
                return False
            break
    import jax

    return jax.default_backend() == "cpu"


def _parse_version(text):
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@functools.lru_cache(maxsize=None)
def keras_divides_activity_regularizers():
    """True when ``Layer.__call__`` divides activity-regularizer values by the batch size.

    Introduced in Keras 3.14 (``keras/src/layers/layer.py``: ``loss = ops.divide_no_nan(
    loss, batch_size)``); Keras 3.0-3.13 add the value unchanged.
    """
    return _parse_version(keras.version()) >= (3, 14, 0)


def has_symbolic_shape(x):
    """True while JAX traces `x` with a symbolic dimension (``jax.export`` shape polymorphism).

    Keras's ``model.export()`` on JAX converts the model with ``jax2tf`` and a symbolic batch
    dimension (``"batch"``): ``x.shape[0]`` is then an expression that is neither None nor an
    int.  Always False on the other backends (unknown TensorFlow dimensions are None).
    """
    if backend_name() != "jax":
        return False
    return not all(isinstance(dim, numbers.Integral) for dim in x.shape)


def top_k(x, k, sorted=True):
    """``keras.ops.top_k(x, k, sorted)``: the ``k`` largest entries along the last axis.

    Returns ``(values, indices)``.  Identical to ``keras.ops.top_k`` except
    while JAX traces `x` with a symbolic dimension (:func:`has_symbolic_shape`, i.e. inside
    ``model.export()``): JAX 0.10 lowers ``lax.top_k`` to ``chlo.top_k``, which it
    serializes as a StableHLO composite (``vhlo.composite_v2``, StableHLO >= 1.14) that
    TensorFlow 2.21's XLA (StableHLO 1.13) cannot deserialize, so the SavedModel fails when
    called ("unregistered operation 'vhlo.composite_v2'").  There the ``k`` largest entries
    are found by ``k`` rounds of max/argmax over the entries not yet taken (reductions that
    every StableHLO reader knows): the same values and indices, sorted, ties in index order
    (as ``lax.top_k``), NaN ranked above every number, int32 indices.  Each round is a few passes over
    `x`: about ``5 k`` element operations per entry instead of a native top-k's
    ``O(log k)``, which for a distance matrix is of the order of its ``O(d)`` matmul.
    A fully static export signature keeps ``lax.top_k`` and needs a TensorFlow that reads
    JAX's StableHLO.
    """
    if not has_symbolic_shape(x) or "float" not in keras.backend.standardize_dtype(x.dtype):
        return keras.ops.top_k(x, k=k, sorted=sorted)
    return _top_k_by_rounds(x, int(k))


def _top_k_by_rounds(x, k):
    ops = keras.ops
    columns = ops.arange(ops.shape(x)[-1], dtype="int32")
    taken = ops.zeros_like(x, dtype="bool")
    lowest = ops.full_like(x, float("-inf"))
    values, indices = [], []
    for _ in range(k):
        free = ops.logical_not(taken)
        masked = ops.where(taken, lowest, x)
        best = ops.max(masked, axis=-1, keepdims=True)  # NaN if a free entry is NaN
        hit = ops.logical_or(ops.equal(masked, best),
                             ops.logical_and(ops.isnan(x), ops.isnan(best)))
        hit = ops.logical_and(hit, free)  # a taken -inf never matches a free -inf maximum
        index = ops.cast(ops.argmax(ops.cast(hit, "int32"), axis=-1), "int32")  # first hit
        index = ops.expand_dims(index, -1)
        values.append(ops.take_along_axis(x, index, axis=-1))
        indices.append(index)
        taken = ops.logical_or(taken, ops.equal(columns, index))
    return ops.concatenate(values, axis=-1), ops.concatenate(indices, axis=-1)


# ---- Distributed training ------------------------------------------------------------
#
# TensorFlow (``tf.distribute``: MirroredStrategy, MultiWorkerMirroredStrategy, TPUStrategy):
# inside ``strategy.run`` each replica traces the step on its own slice of the global batch.
# ``gather_replicas`` all-gathers the slices (replica order) so that a batch statistic is
# computed on the global batch.  TensorFlow's all-gather gradient sums the upstream gradients
# of all replicas, then hands each replica the rows of its own slice; Keras divides every
# replica's loss by the number of replicas (``scale_loss_for_distribution``) and sums the
# replicas' weight gradients, so a gathered penalty ``P`` added to the loss gives replica
# ``r`` the gradient ``dP/dX_r`` and the weights ``dP/dw``: the single-device step.
#
# JAX (``keras.distribution.DataParallel``): the train step is one ``jit`` over the global,
# batch-sharded array; a batch statistic is already global (XLA inserts the collectives),
# so every function here is a no-op.  The same holds on one device of any backend.


def _replica_context():
    """The ``tf.distribute`` replica context when this code runs as one of several replicas."""
    if backend_name() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None  # cross-replica context, default strategy, or a single replica
    return context


def num_replicas_in_sync():
    """Number of replicas the current step is split over (1 outside ``strategy.run``)."""
    context = _replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def scale_loss_for_replicas(value):
    """``value / num_replicas_in_sync()``: Keras's per-replica loss convention.

    Keras scales each replica's compiled loss and ``add_loss`` values this way (the replicas'
    gradients are then summed).  A :class:`keras.losses.Loss` subclass that returns a scalar
    from ``__call__`` must do it itself.
    """
    replicas = num_replicas_in_sync()
    return value if replicas == 1 else value * (1.0 / replicas)


def gather_replicas(x):
    """Concatenates the replicas' ``x`` (or list of tensors) along axis 0, in replica order.

    Returns ``x`` unchanged outside a multi-replica ``tf.distribute`` replica context (one
    device, the JAX backend).  Gradients: each replica receives the sum over replicas of the
    upstream gradient, restricted to its own rows (see the section comment above).
    """
    context = _replica_context()
    if context is None:
        return x
    _protect_current_call_losses()
    if isinstance(x, (list, tuple)):
        return type(x)(context.all_gather(list(x), axis=0))
    return context.all_gather(x, axis=0)


# ---- The add_loss trap ------------------------------------------------------------------
#
# MirroredStrategy runs the replicas of a step as Python threads (``mirrored_run``), one at
# a time, switching at every ``merge_call``, and an all-gather is a merge_call.  Keras 3
# keeps ``add_loss`` values (activity regularizers included) in ``Layer._losses``, a plain
# list attribute of the layer object that all replica threads share; each top-level call
# clears it (``Layer._get_call_context -> _clear_losses``) and ``compute_loss`` reads it
# (``Layer.losses``).  With a collective inside a layer call the order becomes:
# replica 0 clears, pauses at the gather; replica 1 clears, pauses; replica 0 appends p0 and
# reads [p0]; replica 1 appends p1 and reads [p0, p1].  With 2 replicas the loss becomes
# ``MSE + 1.5 P``.  The fix: before the first collective, every layer of the call being
# traced gets a ``_losses`` that keeps one list per replica.


def _replica_key():
    context = _replica_context()
    if context is None:
        return None
    import tensorflow as tf

    replica_id = tf.get_static_value(context.replica_id_in_sync_group)
    return None if replica_id is None else int(replica_id)


class ReplicaLocalLosses:
    """Drop-in for ``Layer._losses`` with one list per replica (by replica id in sync)."""

    def __init__(self, initial=()):
        self._lists = {}
        self._own().extend(initial)

    def _own(self):
        return self._lists.setdefault(_replica_key(), [])

    def extend(self, values):
        self._own().extend(values)

    def append(self, value):
        self._own().append(value)

    def clear(self):
        self._own().clear()

    def __getitem__(self, index):
        return self._own()[index]

    def __iter__(self):
        return iter(list(self._own()))

    def __len__(self):
        return len(self._own())

    def __repr__(self):
        return f"ReplicaLocalLosses({self._own()!r})"

    def __reduce__(self):  # transient state: copies start empty
        return (ReplicaLocalLosses, ())


def make_losses_replica_local(layer):
    """Gives ``layer`` and all its sublayers replica-local ``add_loss`` storage.

    Called automatically before the first cross-replica gather of a layer call.  Call it
    yourself (once, on the model) when a collective runs *outside* the model call while the
    model has ``add_loss``/activity-regularizer losses, e.g. ``compile(loss=VICRegLoss(
    cross_replica=True))`` with regularized layers that do not gather.
    """
    for sublayer in layer._flatten_layers(include_self=True, recursive=True):
        current = sublayer.__dict__.get("_losses")
        if current is not None and not isinstance(current, ReplicaLocalLosses):
            # object.__setattr__: Keras's tracker would wrap a list-like into a TrackedList.
            object.__setattr__(sublayer, "_losses", ReplicaLocalLosses(list(current)))
    return layer


_install_lock = threading.Lock()


def _protect_current_call_losses():
    import tensorflow as tf

    if len(getattr(tf.distribute.get_strategy().extended, "worker_devices", ())) < 2:
        return  # one local replica: no replica threads, nothing shared
    try:
        from keras.src.backend.common import global_state

        call_context = global_state.get_global_attribute("current_call_ctx")
    except ImportError:  # pragma: no cover - Keras internals moved
        call_context = None
    entry_layer = getattr(call_context, "entry_layer", None)
    if entry_layer is not None:
        with _install_lock:
            make_losses_replica_local(entry_layer)
