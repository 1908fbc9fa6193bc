"""The one backend-specific module of keras-featreg.

Everything that differs between Keras backends lives here, small and isolated:

* :func:`in_xla_context`: whether the code being traced will be compiled by XLA on the
  TensorFlow backend (``jit_compile=True``, or Keras's ``"auto"`` on a GPU). TensorFlow's
  XLA lowering of SVD/eigh is a slow Jacobi iteration, so the spectral primitives switch
  to matmul-only iterations there. JAX lowers SVD/eigh to LAPACK (CPU) or cuSOLVER (GPU)
  even under ``jit``, so it never needs the switch.
* :func:`keras_divides_activity_regularizers`: Keras >= 3.14 divides whatever an
  ``activity_regularizer`` returns by the batch size; earlier Keras 3 releases do not.
* Cross-replica gathering for distributed training (see :mod:`keras_featreg.distribute`).
"""

import functools

import keras


def backend_name():
    return keras.backend.backend()


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
