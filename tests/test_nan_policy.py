"""NaN policy: a NaN or an infinity anywhere in the batch gives NaN, never a finite number.

Every public regularizer (``__call__`` and ``.penalty``, every SVMax method, bounded or
not), every loss (class and function) and every metric function, on an all-NaN batch, a
batch with one NaN entry and batches with one +inf / -inf entry; eagerly and compiled by
XLA (``tf.function(jit_compile=True)`` / ``jax.jit``).  Before the policy, hinges, masked
minima and maxima and ``where`` guards turned such batches into finite numbers (the
bounded SVMax of an all-NaN batch was ``factor * e^0 = 1``).  The guard must not change
anything for finite input: values and gradients stay bit-identical.
"""

import math

import numpy as np
import pytest

from _helpers import jit, value_and_grad
from keras_featreg import _utils, losses, metrics
from keras_featreg.ops import spectral
from keras_featreg.regularizers import SVMax, SpreadOut, VICReg

B, D = 12, 6
LABELS = np.repeat(np.arange(B // 2), 2)  # 6 classes x 2: valid for every loss


def _finite_batch():
    return np.random.default_rng(0).standard_normal((B, D)).astype("float32")


def _bad_batches():
    x = _finite_batch()
    batches = {"all_nan": np.full_like(x, np.nan)}
    for name, value, index in [("one_nan", np.nan, (3, 2)), ("one_posinf", np.inf, (5, 1)),
                               ("one_neginf", -np.inf, (0, 4))]:
        batches[name] = x.copy()
        batches[name][index] = value
    return batches


BAD = _bad_batches()


def _scalar_cases():
    """name -> function of one (B, D) batch returning a tensor (scalar or vector)."""
    other = _finite_batch() * 0.5
    cases = {}
    for method in spectral.NUCLEAR_NORM_METHODS:
        for bounded in (True, False):
            reg = SVMax(1.0, bounded=bounded, method=method)
            tag = f"svmax_{method}_{'bounded' if bounded else 'vanilla'}"
            cases[tag + "_call"] = reg
            cases[tag + "_penalty"] = reg.penalty
        cases[f"svmax_{method}_mean_singular_value"] = SVMax(method=method).mean_singular_value
    cases["svmax_unnormalized_penalty"] = SVMax(normalize=False).penalty
    for method in ("covariance", "gram"):
        reg = VICReg(covariance_method=method)
        cases[f"vicreg_{method}_call"] = reg
        cases[f"vicreg_{method}_penalty"] = reg.penalty
        cases[f"vicreg_{method}_covariance_term"] = reg.covariance_term
    cases["vicreg_variance_term"] = VICReg().variance_term
    cases["vicreg_variance_only_penalty"] = VICReg(1.0, 0.0).penalty
    cases["spread_out_call"] = SpreadOut()
    cases["spread_out_penalty"] = SpreadOut().penalty
    cases["spread_out_unnormalized_penalty"] = SpreadOut(normalize=False).penalty
    for mining in ("semi_hard", "hard", "all"):
        for soft in (False, True):
            loss = losses.TripletLoss(mining=mining, soft=soft)
            cases[f"triplet_{mining}_{'soft' if soft else 'hinge'}"] = (
                lambda t, loss=loss: loss(LABELS, t))
    cases["triplet_loss_fn"] = lambda t: losses.triplet_loss(LABELS, t, mining="hard")
    cases["contrastive"] = lambda t: losses.ContrastiveLoss()(LABELS, t)
    cases["contrastive_power2"] = lambda t: losses.ContrastiveLoss(power=2)(LABELS, t)
    cases["contrastive_loss_fn"] = lambda t: losses.contrastive_loss(LABELS, t)
    cases["npair"] = lambda t: losses.NPairLoss()(LABELS, t)
    cases["npair_all_l2"] = lambda t: losses.NPairLoss(negatives="all", l2_reg=0.1)(LABELS, t)
    cases["npair_loss_fn"] = lambda t: losses.npair_loss(LABELS, t)
    cases["angular"] = lambda t: losses.AngularLoss()(LABELS, t)
    cases["angular_loss_fn"] = lambda t: losses.angular_loss(LABELS, t)
    cases["vicreg_loss_first_view"] = lambda t: losses.VICRegLoss()(t, other)
    cases["vicreg_loss_second_view"] = lambda t: losses.VICRegLoss()(other, t)
    cases["vicreg_loss_fn"] = lambda t: losses.vicreg_loss(t, other)
    for term in ("invariance", "variance", "covariance"):
        cases[f"vicreg_terms_{term}"] = lambda t, term=term: losses.vicreg_terms(other, t)[term]
    cases["metric_mean_singular_value"] = metrics.mean_singular_value
    cases["metric_mean_singular_value_gram"] = lambda t: metrics.mean_singular_value(t, method="gram")
    cases["metric_singular_value_position"] = metrics.singular_value_position
    cases["metric_dimension_std"] = metrics.dimension_std  # a (d,) vector: every entry NaN
    return cases


CASES = _scalar_cases()


def _all_nan(value):
    value = np.asarray(value, np.float64)
    return value.size > 0 and bool(np.all(np.isnan(value)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_non_finite_batch_gives_nan_eagerly(name):
    fn = CASES[name]
    for batch, x in BAD.items():
        value = fn(x)
        assert _all_nan(value), f"{name} on {batch}: {np.asarray(value)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_non_finite_batch_gives_nan_under_jit(name):
    compiled = jit(lambda t: CASES[name](t))  # one compilation: every batch has one shape
    for batch, x in BAD.items():
        value = compiled(x)
        assert _all_nan(value), f"{name} on {batch} (jit): {np.asarray(value)}"


@pytest.mark.parametrize("name", ["collapse_statistics", "spectrum_statistics"])
def test_statistics_dicts_are_all_nan(name):
    fn = getattr(metrics, name)
    finite_stats = fn(_finite_batch())
    assert all(math.isfinite(v) for v in finite_stats.values())
    for batch, x in BAD.items():
        stats = fn(x)
        assert set(stats) == set(finite_stats)
        for key, value in stats.items():
            if key in ("batch_size", "dim"):  # the shape, not a statistic
                assert value == finite_stats[key]
            else:
                assert math.isnan(value), f"{name}[{key}] on {batch}: {value}"


def test_unnormalized_spectrum_statistics_and_a_rank_4_batch():
    x = BAD["one_posinf"]
    assert math.isnan(metrics.spectrum_statistics(x, normalize=False)["s_mu_position"])
    conv = np.random.default_rng(1).standard_normal((4, 3, 3, 2)).astype("float32")
    conv[2, 1, 0, 1] = np.nan
    for reg in (SVMax(), SVMax(feature_reduction="average"), VICReg(feature_reduction="average"),
                SpreadOut()):
        assert _all_nan(reg.penalty(conv))


@pytest.mark.parametrize("name", ["svmax_gram_bounded_penalty", "svmax_svd_bounded_penalty",
                                  "svmax_newton_schulz_vanilla_penalty", "vicreg_gram_penalty",
                                  "spread_out_penalty", "triplet_hard_hinge", "npair",
                                  "vicreg_loss_first_view", "metric_singular_value_position"])
def test_guard_leaves_finite_values_and_gradients_unchanged(name):
    fn = CASES[name]
    x = _finite_batch()
    value, grad = value_and_grad(lambda t: fn(t), x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # The guard on its own: identical value and gradient, eagerly and under jit.
    guarded = value_and_grad(lambda t: _utils.propagate_nonfinite(fn(t), t), x)
    # Same ops plus a where() on a constant: equal up to the reduction order a backend may
    # pick for a different graph (a few float32 roundings), not bit for bit on every CPU.
    tol = 8 * np.finfo(np.float32).eps
    np.testing.assert_allclose(guarded[0], value, rtol=tol, atol=0)
    np.testing.assert_allclose(guarded[1], grad, rtol=tol, atol=tol * np.abs(grad).max())
    np.testing.assert_allclose(float(jit(lambda t: fn(t))(x)), float(value), rtol=1e-5)


def test_propagate_nonfinite_helper():
    value = np.float32(2.5)
    assert float(_utils.propagate_nonfinite(value, _finite_batch())) == 2.5
    assert math.isnan(float(_utils.propagate_nonfinite(value, BAD["one_neginf"])))
    # any of several inputs
    assert math.isnan(float(_utils.propagate_nonfinite(value, _finite_batch(), BAD["one_nan"])))
    vector = _utils.propagate_nonfinite(np.arange(3, dtype="float32"), BAD["one_posinf"])
    assert np.asarray(vector).shape == (3,) and _all_nan(vector)
