"""One input contract, checked on every loss, regularizer, miner and metric.

(:func:`keras_featreg.ops.labels.check_labels` states it.) Labels must be integer-valued
(whole-number floats are accepted, others raise a ValueError naming ``y_true``), strings
raise naming ``y_true``, mismatched lengths raise when known while tracing and give NaN
when only known at run time, an empty batch raises, and a bad argument type raises.
"""

import inspect

import keras
import numpy as np
import pytest

from keras_featreg import evaluation, losses, metrics, miners, regularizers
from keras_featreg.losses._proxy import _ProxyLoss
from keras_featreg.losses._vicreg import TwoViewLoss
from _helpers import jit, to_np

B, D, C = 8, 4, 4
BACKEND = keras.backend.backend()


def _labels(dtype="int32"):
    return np.array([0, 0, 1, 1, 2, 2, 3, 3], dtype=dtype)


def _embeddings(b=B, d=D, seed=0):
    x = np.random.default_rng(seed).normal(size=(b, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cosines(b=B, seed=1):
    return np.tanh(np.random.default_rng(seed).normal(size=(b, C))).astype("float32")


def _xbm():
    xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=D, memory_size=16)
    xbm.memory.build((None, D))
    return xbm


def _library_losses():
    """The library's loss classes (`losses.get`'s table, without user-registered ones)."""
    return sorted({c for c in losses._aliases().values() if c.__module__.startswith(
        "keras_featreg.")}, key=lambda c: c.__name__)


def _label_losses():
    """(id, factory, y_pred maker) for every loss of `losses.get` that takes labels."""
    cases = []
    for cls in _library_losses():
        if issubclass(cls, TwoViewLoss):
            continue
        if cls is losses.CrossBatchMemory:
            cases.append((cls.__name__, _xbm, _embeddings))
        elif issubclass(cls, _ProxyLoss):
            cases.append((cls.__name__, lambda cls=cls: cls(num_classes=C), _cosines))
        else:
            cases.append((cls.__name__, cls, _embeddings))
    return cases


LABEL_LOSSES = _label_losses()
TWO_VIEW = [losses.VICRegLoss, losses.BarlowTwinsLoss]


def test_every_loss_is_covered():
    kinds = {c.__name__ for c in _library_losses()}
    assert kinds == {name for name, _, _ in LABEL_LOSSES} | {c.__name__ for c in TWO_VIEW}
    assert len(kinds) >= 15


# ------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("name, make, y_pred", LABEL_LOSSES, ids=[c[0] for c in LABEL_LOSSES])
def test_whole_float_labels_equal_integer_labels(name, make, y_pred):
    x = y_pred()
    want = float(to_np(make()(_labels(), x)))
    got = float(to_np(make()(_labels("float32"), x)))
    got_column = float(to_np(make()(_labels("float64")[:, None], x)))
    assert np.isfinite(want)
    np.testing.assert_allclose([got, got_column], [want, want], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, make, y_pred", LABEL_LOSSES, ids=[c[0] for c in LABEL_LOSSES])
def test_bad_labels_raise_naming_y_true(name, make, y_pred):
    x = y_pred()
    fractional = _labels("float32") + np.array([0, 0, 0, 0.5, 0, 0, 0, 0], "float32")
    with pytest.raises(ValueError, match=r"`y_true`.*whole numbers"):
        make()(fractional, x)
    with pytest.raises(ValueError, match=r"`y_true`.*integer class labels"):
        make()(np.array(list("aabbccdd")), x)
    with pytest.raises(ValueError, match=r"`y_true`.*integer class labels"):
        make()(np.array([0, 0, 1, 1, 2, 2, 3, 3], dtype=object), x)
    with pytest.raises(ValueError, match=r"`y_true` and `y_pred` must have the same batch size"):
        make()(_labels()[:-2], x)
    with pytest.raises(ValueError, match=r"`y_true`.*shape"):
        make()(np.zeros((B, 2), "int32"), x)
    with pytest.raises(ValueError, match=r"empty|at least one"):
        make()(np.zeros((0,), "int32"), x[:0])


@pytest.mark.parametrize("name, make, y_pred", LABEL_LOSSES, ids=[c[0] for c in LABEL_LOSSES])
def test_fractional_labels_inside_a_compiled_function_give_nan(name, make, y_pred):
    if BACKEND == "torch":
        pytest.skip("torch runs eagerly: the values are readable and the eager check raises")
    if name == "CrossBatchMemory":
        pytest.skip("the memory assigns variables: called eagerly only here")
    loss = make()
    x = y_pred()
    fractional = _labels("float32") + np.array([0, 0, 0, 0.5, 0, 0, 0, 0], "float32")
    compiled = jit(lambda y, e: loss(y, e))
    assert np.isnan(float(to_np(compiled(fractional, x))))
    assert np.isfinite(float(to_np(compiled(_labels("float32"), x))))


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name, make, y_pred", LABEL_LOSSES, ids=[c[0] for c in LABEL_LOSSES])
def test_length_mismatch_known_only_at_run_time_gives_nan(name, make, y_pred):
    import tensorflow as tf

    if name == "CrossBatchMemory":
        pytest.skip("the memory assigns variables: called eagerly only here")
    loss = make()
    x = y_pred()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, x.shape[1]], tf.float32)])
    def compiled(y, e):
        return loss(y, e)

    assert np.isfinite(float(compiled(_labels(), x)))
    for labels in (_labels()[:1], _labels()[:5], np.arange(12, dtype="int32") % 4):
        assert np.isnan(float(compiled(labels, x))), labels


# --------------------------------------------------------------------------- two views


@pytest.mark.parametrize("cls", TWO_VIEW, ids=lambda c: c.__name__)
def test_two_view_losses_refuse_empty_and_mismatched_views(cls):
    z = _embeddings()
    assert np.isfinite(float(to_np(cls()(z, z[::-1]))))
    with pytest.raises(ValueError, match=r"empty|at least one"):
        cls()(z[:0], z[:0])
    with pytest.raises(ValueError, match=r"`z_a` and `z_b` must have the same shape"):
        cls()(z, z[:-1])
    with pytest.raises(ValueError, match=r"floating dtype"):
        cls()(np.array(list("ab")), np.array(list("ab")))


# --------------------------------------------------------------------- argument types


def _constructors():
    """(id, class, required kwargs) for every loss, regularizer, miner, callback and layer."""
    from keras_featreg import callbacks, layers

    required = {
        "num_classes": C, "loss": losses.ContrastiveLoss(), "embedding_size": D,
        "regularizer": regularizers.SVMax(), "x": _embeddings(), "memory_size": 4,
    }
    classes = _library_losses()
    classes += [regularizers.SVMax, regularizers.VICReg, regularizers.SpreadOut]
    classes += [getattr(miners, n) for n in ("MultiSimilarityMiner", "PairMarginMiner",
                                              "BalancedPairMiner", "TripletMarginMiner",
                                              "DistanceWeightedMiner", "AngularMiner",
                                              "HDCMiner", "UniformHistogramMiner")]
    classes += [callbacks.SpectrumMonitor, layers.ProxyHead, layers.EmbeddingMemory]
    out = []
    for cls in classes:
        out.append((cls.__name__, cls, {k: v for k, v in required.items()
                                        if k in inspect.signature(cls.__init__).parameters
                                        and inspect.signature(cls.__init__).parameters[k].default
                                        is inspect.Parameter.empty}))
    return out


CONSTRUCTORS = _constructors()


OPTIONAL_INTS = {"num_pairs", "embedding_size"}  # None is a documented value


def _typed_arguments(cls, kwargs):
    """Every argument of `cls` (and of the loss bases) whose value is a bool or a number:
    those with such a default, the optional integers, and the required integers."""
    params = dict(inspect.signature(cls.__init__).parameters)
    if issubclass(cls, keras.losses.Loss):
        params["cross_replica"] = inspect.Parameter(
            "cross_replica", inspect.Parameter.KEYWORD_ONLY, default=False)
    typed = {name: p.default for name, p in params.items()
             if name not in kwargs and isinstance(p.default, (bool, int, float))}
    typed.update({name: None for name in OPTIONAL_INTS & set(params) if name not in kwargs})
    typed.update({name: value for name, value in kwargs.items() if isinstance(value, int)})
    return typed


@pytest.mark.parametrize("name, cls, kwargs", CONSTRUCTORS, ids=[c[0] for c in CONSTRUCTORS])
def test_bad_argument_types_raise_naming_the_argument(name, cls, kwargs):
    cls(**kwargs)  # the defaults are valid
    typed = _typed_arguments(cls, kwargs)
    assert typed, f"{name}: no typed argument found"
    for arg, default in typed.items():
        bad_values = ["no", [1]] + ([] if default is None else [None])
        if isinstance(default, bool):
            bad_values.append(1)
        for bad in bad_values:
            with pytest.raises(ValueError, match=rf"`{arg}`"):
                cls(**{**kwargs, arg: bad})


@pytest.mark.parametrize("get, bad", [
    (losses.get, "no_such_loss"), (miners.get, "semihard"),
    (__import__("keras_featreg.distances", fromlist=["get"]).get, "l2"),
    (__import__("keras_featreg.reducers", fromlist=["get"]).get, "avg"),
])
def test_get_refuses_unknown_names(get, bad):
    with pytest.raises(ValueError, match=repr(bad)):
        get(bad)


# -------------------------------------------------------------- regularizers, metrics


REGULARIZERS = [regularizers.SVMax(), regularizers.SVMax(bounded=False),
                regularizers.VICReg(), regularizers.SpreadOut()]


@pytest.mark.parametrize("regularizer", REGULARIZERS,
                         ids=["SVMax", "SVMax-unbounded", "VICReg", "SpreadOut"])
def test_regularizers_refuse_an_empty_batch_and_non_float_input(regularizer):
    assert np.isfinite(float(to_np(regularizer(_embeddings()))))
    with pytest.raises(ValueError, match=r"empty|at least one"):
        regularizer(np.zeros((0, D), "float32"))
    with pytest.raises(ValueError, match=r"floating dtype"):
        regularizer(np.zeros((B, D), "int32"))


EMBEDDING_METRICS = [metrics.mean_singular_value, metrics.singular_value_position,
                     metrics.dimension_std, metrics.collapse_statistics,
                     metrics.spectrum_statistics]


@pytest.mark.parametrize("metric", EMBEDDING_METRICS, ids=lambda f: f.__name__)
def test_embedding_metrics_refuse_an_empty_batch(metric):
    metric(_embeddings())
    with pytest.raises(ValueError, match=r"empty|at least one"):
        metric(np.zeros((0, D), "float32"))


LABEL_METRICS = [
    lambda e, y: evaluation.recall_at_k(e, y, ks=(1,)),
    lambda e, y: evaluation.map_at_r(e, y),
    lambda e, y: evaluation.nmi(e, y),
    lambda e, y: evaluation.evaluate_retrieval(e, y, ks=(1,)),
]


@pytest.mark.parametrize("metric", LABEL_METRICS, ids=["recall_at_k", "map_at_r", "nmi",
                                                       "evaluate_retrieval"])
def test_retrieval_metrics_follow_the_label_contract(metric):
    e = _embeddings()
    want = metric(e, _labels())
    got = metric(e, _labels("float64"))
    assert got == want
    with pytest.raises(ValueError, match=r"`labels`.*whole numbers"):
        metric(e, _labels("float32") + 0.5)
    with pytest.raises(ValueError, match=r"`labels`.*integer class labels"):
        metric(e, np.array(list("aabbccdd")))
    with pytest.raises(ValueError, match=r"same length"):
        metric(e, _labels()[:-1])
    with pytest.raises(ValueError, match=r"at least 2 samples|empty"):
        metric(e[:0], _labels()[:0])


MINERS = [miners.SemiHardMiner(), miners.BatchHardMiner(), miners.BatchAllMiner(),
          miners.MultiSimilarityMiner(), miners.PairMarginMiner(),
          miners.BalancedPairMiner(), miners.TripletMarginMiner(),
          miners.BatchEasyHardMiner(), miners.BatchEasyHardMiner(output="triplets"),
          miners.DistanceWeightedMiner(embedding_size=D, seed=0), miners.AngularMiner(),
          miners.HDCMiner(), miners.UniformHistogramMiner(seed=0)]


@pytest.mark.parametrize("miner", MINERS, ids=repr)
def test_miners_follow_the_label_contract(miner):
    e = _embeddings()
    matrix = np.sqrt(np.maximum(((e[:, None] - e[None]) ** 2).sum(-1), 0)).astype("float32")
    miner(matrix, _labels())
    miner(matrix, _labels("float32"))
    with pytest.raises(ValueError, match=r"`labels`.*whole numbers"):
        miner(matrix, _labels("float32") + 0.5)
    with pytest.raises(ValueError, match=r"`labels`.*integer class labels"):
        miner(matrix, np.array(list("aabbccdd")))
    with pytest.raises(ValueError, match=r"`labels` and `matrix` must have the same batch size"):
        miner(matrix, _labels()[:-1])
    with pytest.raises(ValueError, match=r"empty|at least one"):
        miner(matrix[:0, :0], _labels()[:0])
