"""Every loss of keras_featreg.losses with the SVMax and VICReg regularizers (issue 13, item 4).

For each loss class: one model with a VICReg activity regularizer on a hidden layer and an
SVMax activity regularizer on the embedding layer trains with ``model.fit`` (finite loss,
the regularizers' penalties in ``model.losses``, the weights move); ``bounds(batch_size)``
exists and, where it returns a range, the loss of random unit-norm embeddings lies in it.
A loss added to ``keras_featreg.losses`` without an entry here fails
``test_every_loss_is_covered``.
"""

import keras
import numpy as np
import pytest

from keras_featreg import SVMax, VICReg, losses

B, D, C = 16, 8, 6  # batch, embedding size, classes of the proxy losses


def _labels(kind):
    if kind == "npair":
        return np.tile(np.arange(B // 2), 2)
    if kind == "proxy":
        return np.arange(B) % C
    return np.repeat(np.arange(B // 4), 4)


FACTORIES = {
    "TripletLoss": ("pairs", lambda: losses.TripletLoss()),
    "ContrastiveLoss": ("pairs", lambda: losses.ContrastiveLoss(miner="balanced_pair")),
    "NPairLoss": ("npair", lambda: losses.NPairLoss()),
    "AngularLoss": ("npair", lambda: losses.AngularLoss()),
    "MultiSimilarityLoss": ("pairs", lambda: losses.MultiSimilarityLoss(miner="multi_similarity")),
    "SupConLoss": ("pairs", lambda: losses.SupConLoss()),
    "NTXentLoss": ("pairs", lambda: losses.NTXentLoss()),
    "LiftedStructureLoss": ("pairs", lambda: losses.LiftedStructureLoss()),
    "GeneralizedLiftedStructureLoss": ("pairs", lambda: losses.GeneralizedLiftedStructureLoss()),
    "ProxyAnchorLoss": ("proxy", lambda: losses.ProxyAnchorLoss(num_classes=C, embedding_size=D)),
    "ArcFaceLoss": ("proxy", lambda: losses.ArcFaceLoss(num_classes=C, embedding_size=D, scale=16)),
    "CircleLoss": ("pairs", lambda: losses.CircleLoss()),
    "CosFaceLoss": ("proxy", lambda: losses.CosFaceLoss(num_classes=C, embedding_size=D, scale=16)),
    "CrossBatchMemory": ("memory", lambda: losses.CrossBatchMemory(
        losses.ContrastiveLoss(), embedding_size=D, memory_size=2 * B)),
    "VICRegLoss": ("views", lambda: losses.VICRegLoss()),
    "BarlowTwinsLoss": ("views", lambda: losses.BarlowTwinsLoss()),
}


# Losses without a finite range on unit-norm embeddings (name: why), besides two-view ones.
UNBOUNDED = {}


def test_every_loss_is_covered():
    ours = [cls for cls in losses._CLASSES if cls.__module__.startswith("keras_featreg.")]
    assert sorted(cls.__name__ for cls in ours) == sorted(FACTORIES)  # (not user-registered ones)


def _model(kind, loss):
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu", activity_regularizer=VICReg())(inputs)
    embedding = keras.layers.Dense(D, activity_regularizer=SVMax(1.0))(hidden)
    if kind == "views":
        return keras.Model(inputs, embedding)
    outputs = keras.layers.UnitNormalization()(embedding)
    if kind == "proxy":
        outputs = loss.head()(outputs)
    elif kind == "memory":
        outputs = loss.memory(outputs)
    return keras.Model(inputs, outputs)


def _diagnosis(model, loss, x, y):
    """Which part is non-finite after a fit that gave a NaN loss (for the failure message)."""
    numpy = keras.ops.convert_to_numpy
    finite = lambda a: bool(np.all(np.isfinite(numpy(a))))  # noqa: E731
    out = model(x)
    embedding = numpy(keras.Model(model.inputs[0], model.layers[2].output)(x))
    return {
        "finite weights": {w.path: finite(w) for w in model.trainable_weights},
        "loss": float(numpy(loss(y, out))),
        "penalties": [float(numpy(p)) for p in model.losses],
        "embedding finite": finite(embedding),
        "singular values (float64)": np.linalg.svd(embedding.astype("float64"),
                                                   compute_uv=False).round(4).tolist()
        if finite(embedding) else None,
    }


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_every_loss_trains_with_svmax_and_vicreg(name):
    keras.utils.set_random_seed(7)  # the same initial weights on every run
    kind, make = FACTORIES[name]
    loss = make()
    model = _model(kind, loss)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, 12)).astype("float32")
    y = rng.normal(size=(B, D)).astype("float32") if kind == "views" else _labels(kind)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    if not all(np.isfinite(history.history["loss"])):
        pytest.fail(f"{history.history} {_diagnosis(model, loss, x, y)}")
    model(x)
    assert len(model.losses) == 2 and all(float(p) > 0 for p in model.losses)
    moved = [not np.allclose(a, np.array(w)) for a, w in zip(before, model.trainable_weights)]
    assert all(moved[:4]), moved  # both regularized layers' kernels and biases


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_bounds_exist_and_hold_on_unit_embeddings(name):
    kind, make = FACTORIES[name]
    loss = make()
    bounds = loss.bounds(B)
    if bounds is None:
        assert kind in ("views",) or name in UNBOUNDED, f"{name} has no bounds"
        return
    low, high = bounds
    assert low <= high
    rng = np.random.default_rng(1)
    labels = _labels(kind)
    for _ in range(3):
        e = rng.normal(size=(B, D))
        e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype("float32")
        if kind == "proxy":
            p = rng.normal(size=(C, D))
            p /= np.linalg.norm(p, axis=1, keepdims=True)
            y_pred = (e @ p.T).astype("float32")
        else:
            y_pred = e
        if kind == "memory":
            loss.memory(e)  # builds the memory layer (TensorFlow: usable outside a model)
        value = float(loss(labels, y_pred))
        assert low - 1e-6 <= value <= high + 1e-6, (name, value, bounds)
