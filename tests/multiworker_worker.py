"""A real multi-worker run, started by tests/test_multiworker.py (see docs/guides/multi-worker.md).

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:P0", "127.0.0.1:P1"]},
                "task": {"type": "worker", "index": I}}' \\
        python tests/multiworker_worker.py worker OUT.npz     # one process per worker
    python tests/multiworker_worker.py single OUT.npz         # the one-device reference

Each worker process holds one CPU replica of a ``tf.distribute.MultiWorkerMirroredStrategy``
(collectives over gRPC on the loopback interface).  The model has ``SVMax(cross_replica=True)``
as activity regularizer of its hidden layer and is compiled with
``TripletLoss(cross_replica=True)``; ``model.fit`` trains it for ``STEPS`` steps on global
batches of ``GLOBAL_BATCH`` rows (``GLOBAL_BATCH / 2`` per worker).  ``single`` trains the
same model, from the same weights, on the same global batches on one device.  Each process
writes the final weights and the reported per-epoch losses to ``OUT.npz``.
"""

import os
import sys

MODE, OUT = sys.argv[1], sys.argv[2]
STEPS, GLOBAL_BATCH, D_IN, DIM, CLASSES = 4, 32, 8, 16, 8
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if MODE == "worker":  # must precede any other TensorFlow op
    STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()
    assert STRATEGY.num_replicas_in_sync == 2, STRATEGY.num_replicas_in_sync
else:
    STRATEGY = tf.distribute.get_strategy()  # default strategy: one device

import keras  # noqa: E402

from keras_featreg.losses import TripletLoss  # noqa: E402
from keras_featreg.regularizers import SVMax  # noqa: E402


def data():
    """STEPS global batches: inputs, and CLASSES x 4 labels shuffled within each batch."""
    rng = np.random.default_rng(2024)
    x = rng.standard_normal((STEPS * GLOBAL_BATCH, D_IN)).astype("float32")
    per_class = GLOBAL_BATCH // CLASSES
    y = np.concatenate([rng.permutation(np.repeat(np.arange(CLASSES), per_class))
                        for _ in range(STEPS)]).astype("int32")
    return x, y


def initial_weights():
    """Fixed weights from numpy, the same in every process."""
    rng = np.random.default_rng(7)
    return [rng.normal(0.0, 0.5, (D_IN, DIM)).astype("float32"), np.zeros(DIM, "float32"),
            rng.normal(0.0, 0.3, (DIM, DIM)).astype("float32"), np.zeros(DIM, "float32")]


def build_model():
    inputs = keras.Input((D_IN,))
    hidden = keras.layers.Dense(DIM, activation="tanh",
                                activity_regularizer=SVMax(0.5, cross_replica=True))(inputs)
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(DIM)(hidden))
    model = keras.Model(inputs, outputs)
    model.set_weights(initial_weights())
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=TripletLoss(margin=0.2, mining="semi_hard", cross_replica=True))
    return model


def multi_worker_fit_workarounds(model, local_batch):
    """Two workarounds that Keras 3 (checked up to 3.15) needs to ``fit`` on several workers.

    1. ``fit`` first builds the compiled loss and metrics from one batch through
       ``strategy.reduce("MEAN", (x, y))`` on a tuple of ``PerReplica`` values, which
       ``MultiWorkerMirroredStrategy`` rejects ("Attempt to convert a value (PerReplica...)
       to a Tensor").  Building from the shapes of one local batch is what that step does.
    2. Each step's logs are reduced with ``strategy.reduce("MEAN", v, axis=0)`` on every
       worker, which fails on scalars ("Invalid reduction dimension 0 for input with 0
       dimensions", tensorflow/tensorflow#72388).  Logs of shape ``(1,)`` reduce to the mean
       over replicas, a scalar again.
    """
    with STRATEGY.scope():
        model._symbolic_build(data_batch=local_batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    train_step = model.train_step
    model.train_step = lambda data: {
        name: keras.ops.reshape(value, (1,)) for name, value in train_step(data).items()}


def main():
    x, y = data()
    # Global batches; MultiWorkerMirroredStrategy splits each into per-replica halves
    # (worker i gets rows [i * 16, (i + 1) * 16) of every batch: DATA auto-sharding).
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    with STRATEGY.scope():
        model = build_model()
    if MODE == "worker":
        multi_worker_fit_workarounds(model, (x[: GLOBAL_BATCH // 2], y[: GLOBAL_BATCH // 2]))
    # One epoch per step: the history holds each step's reported loss.
    history = model.fit(dataset.repeat(), steps_per_epoch=1, epochs=STEPS, verbose=0)
    weights = model.get_weights()
    np.savez(OUT, losses=np.asarray(history.history["loss"], np.float64),
             replicas=STRATEGY.num_replicas_in_sync,
             **{f"w{i}": w for i, w in enumerate(weights)},
             **{f"init{i}": w for i, w in enumerate(initial_weights())})
    print("DONE", MODE, flush=True)


if __name__ == "__main__":
    main()
