"""float64 end to end: every path against independent float64 NumPy references.

Given float64 input, every nuclear-norm path of SVMax, VICReg's variance and covariance,
SpreadOut and the ranking losses must agree with float64 NumPy in value *and* gradient to
about 1e-10 (relative).  References are written here from the formulas, with analytic
gradients (finite differences cannot reach 1e-10 on these sizes); the ranking-loss values
are also checked against the brute-force references of ``test_losses_ranking``, whose
distances are computed in float64 directly (norms of differences).

Errors are relative: ``|v - v_ref| / |v_ref|`` for values, ``max|g - g_ref| / max|g_ref|``
for gradients.  The Newton-Schulz method is an iteration with a documented accuracy (its
per-step quintics bring every scaled singular value in ``[5e-3, 1]`` to 1 within 1e-10,
smaller ones are under-counted); it is checked against a float64 model of its own
polynomials applied to the exact singular values (1e-10), and against the exact nuclear
norm within its documented accuracy.

The near-collapsed batch (144 x 128: one random row plus ``0.05 N(0, 1)`` per entry) is the
case where float32 thresholds applied to float64 (the Gram path dropping singular values
below ``3.5e-4 s_1``) gave a 15 % gradient error.

On JAX, float64 needs ``jax_enable_x64``: every test here runs inside ``jax.enable_x64``.
On torch the tests skip: Keras's own type promotion computes float64 in float32 there.
"""

import math

import keras
import numpy as np
import pytest

import _references as ranking_refs
from _helpers import numeric_grad, value_and_grad
from keras_featreg import losses, metrics
from keras_featreg.ops import moments, spectral
from keras_featreg.regularizers import SVMax, SpreadOut, VICReg

RTOL = 1e-10  # exact paths: SVD, Gram, moments, spread-out, ranking losses


@pytest.fixture(autouse=True)
def _float64_enabled():
    if keras.backend.backend() == "torch":
        pytest.skip(
            "Keras 3's torch backend computes float64 in float32: keras.backend.result_type "
            "maps float64 to float32 outside TensorFlow (ops.matmul, ops.maximum, ops.norm)"
        )
    if keras.backend.backend() == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def _rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-300))


def _assert_float64(value):
    assert keras.backend.standardize_dtype(np.asarray(value).dtype) == "float64"


def _assert_close(got, ref, rtol, what):
    err = _rel(got, ref)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.1g}"


# ------------------------------------------------------------------------------ batches


def near_collapsed(rng, b=144, d=128):
    """One random row plus ``0.05 N(0, 1)`` noise per entry: s_1 >> every other s_i."""
    return rng.standard_normal((1, d)) + 0.05 * rng.standard_normal((b, d))


BATCHES = {
    # name: (shape, near-collapsed?)
    "healthy_144x128": ((144, 128), False),
    "collapsed_144x128": ((144, 128), True),
    "collapsed_wide_64x160": ((64, 160), True),  # b < d; rectangular: NS on the Gram side
    "healthy_tall_144x48": ((144, 48), False),  # b > 2 d: NS on the Gram side
}


def _batch(name, seed=3):
    (b, d), collapsed = BATCHES[name]
    rng = np.random.default_rng(seed)
    return near_collapsed(rng, b, d) if collapsed else rng.standard_normal((b, d))


# ------------------------------------------------------------- SVMax: float64 references


def _polar_exact(e):
    """``(||E||_*, U V^T)`` from NumPy's SVD."""
    u, s, vt = np.linalg.svd(e, full_matrices=False)
    return s.sum(), u @ vt


def _newton_schulz_map(x, rectangular, shift=1e-6):
    """Where the Newton-Schulz steps send a scaled singular value ``x`` (float64 model).

    Direct form: ``x <- a x + b x^3 + c x^5`` per step.  Gram form: the iteration runs on
    ``y = x^2 + shift`` (``t = p(y)``, ``m <- m t``, ``y <- t^2 y``) and ends at ``x m``.
    Coefficients: the library's schedule (``spectral._step_coeffs``), the only thing
    shared with the code under test.
    """
    coeffs = spectral._step_coeffs(spectral.DEFAULT_POLAR_ITERATIONS)
    if not rectangular:
        for a, b, c in coeffs:
            x = a * x + b * x**3 + c * x**5
        return x
    y, m = x * x + shift, np.ones_like(x)
    for a, b, c in coeffs:
        t = a + b * y + c * y * y
        m, y = m * t, t * t * y
    return x * m


def _polar_newton_schulz(e):
    """``(<E, P>, P)`` of the Newton-Schulz polar factor, modelled through NumPy's SVD."""
    u, s, vt = np.linalg.svd(e, full_matrices=False)
    b, d = e.shape
    x = s / np.sum(s**8) ** 0.125
    f = _newton_schulz_map(x, max(b, d) >= 2 * min(b, d))
    return float(np.sum(s * f)), (u * f) @ vt


def _unit_rows(x):
    """L2-normalized rows and the map taking a gradient w.r.t. them back to ``x``."""
    norms = np.sqrt(np.sum(x * x, axis=1, keepdims=True))
    e = x / norms

    def back(g):
        return (g - e * np.sum(e * g, axis=1, keepdims=True)) / norms

    return e, back


def ref_svmax(x, factor=1.0, bounded=True, normalize=True, polar=_polar_exact):
    """SVMax (eq. 4 bounded / eq. 1 vanilla, scale-free bounds) and its gradient."""
    x = np.asarray(x, np.float64)
    e, back = _unit_rows(x) if normalize else (x, lambda g: g)
    b, d = e.shape
    nuclear, p = polar(e)
    s_mu, g_s_mu = nuclear / d, p / d
    if not bounded:
        return -factor * s_mu, back(-factor * g_s_mu)
    fro = np.sqrt(np.sum(e * e))
    lower, g_lower = fro / d, e / (fro * d)
    upper, g_upper = math.sqrt(min(b, d)) * lower, math.sqrt(min(b, d)) * g_lower
    span = upper - lower
    ratio = (upper - s_mu) / span
    g_ratio = ((g_upper - g_s_mu) * span - (upper - s_mu) * (g_upper - g_lower)) / span**2
    value = factor * math.exp(ratio)
    return value, back(value * g_ratio)


def _methods():
    return list(spectral.NUCLEAR_NORM_METHODS)  # every value the code accepts


def _resolved(x, method):
    return spectral.resolve_method(keras.ops.convert_to_tensor(x), method)


# ------------------------------------------------------------------ SVMax: nuclear norm


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("method", ["svd", "gram"])
def test_nuclear_norm_exact_paths(method, batch):
    x = _batch(batch)
    value, grad = value_and_grad(lambda t: spectral.nuclear_norm(t, method=method), x)
    _assert_float64(value)
    ref_value, ref_grad = _polar_exact(x)
    _assert_close(value, ref_value, RTOL, "value")
    _assert_close(grad, ref_grad, RTOL, "gradient")


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_nuclear_norm_newton_schulz(batch):
    x = _batch(batch)
    value, grad = value_and_grad(lambda t: spectral.nuclear_norm(t, method="newton_schulz"), x)
    _assert_float64(value)
    # The iteration itself: float64 rounding only.
    model_value, model_grad = _polar_newton_schulz(x)
    _assert_close(value, model_value, RTOL, "value vs model")
    _assert_close(grad, model_grad, RTOL, "gradient vs model")
    # Against the exact nuclear norm, within the documented accuracy, per scaled singular
    # value x: 1e-10 on [5e-3, 1], under-counted (by up to all of it) below; the Gram form
    # (b >= 2 d or d >= 2 b) adds the relative bias shift / (2 x^2) of its shift.
    s = np.linalg.svd(x, compute_uv=False)
    scaled = s / np.sum(s**8) ** 0.125
    bound = np.where(scaled < 5e-3, 1.0, 1e-10)
    if spectral._rectangular(keras.ops.convert_to_tensor(x)):
        bound = np.minimum(bound + 1e-6 / (2.0 * scaled**2), 1.0)
    exact_value, exact_grad = _polar_exact(x)
    assert abs(float(value) - exact_value) <= np.sum(s * bound) + 1e-13 * exact_value
    # ||P - U V^T||_2 = max_i |f(x_i) - 1| bounds every entry of the difference.
    assert np.max(np.abs(grad - exact_grad)) <= np.max(bound) + 1e-13


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_nuclear_norm_auto(batch):
    x = _batch(batch)
    value, grad = value_and_grad(lambda t: spectral.nuclear_norm(t, method="auto"), x)
    _assert_float64(value)
    resolved = _resolved(x, "auto")
    polar = _polar_newton_schulz if resolved == "newton_schulz" else _polar_exact
    ref_value, ref_grad = polar(x)
    _assert_close(value, ref_value, RTOL, f"value ({resolved})")
    _assert_close(grad, ref_grad, RTOL, f"gradient ({resolved})")


def test_gram_path_keeps_float64_singular_values():
    """The Gram path's cut-off is sqrt(eps) of the input's dtype: 1.5e-8 s_1 in float64.

    The near-collapsed batches of this module have a singular value below float32's
    cut-off ``sqrt(2**-23) s_1 = 3.45e-4 s_1``, raw and with unit rows: a float32 threshold
    applied to float64 (the ``str(dtype)`` bug) dropped it, a 14-28 % gradient error.
    """
    for seed in (3, 4):
        x = _batch("collapsed_144x128", seed)
        for e in (x, x / np.linalg.norm(x, axis=1, keepdims=True)):
            s = np.linalg.svd(e, compute_uv=False)
            assert np.min(s) / np.max(s) < math.sqrt(2.0**-23)
    assert spectral._eps(keras.ops.convert_to_tensor(x).dtype) == 2.0**-52
    assert spectral._eps(np.dtype("float64")) == 2.0**-52
    assert spectral._eps("float32") == 2.0**-23


# ------------------------------------------------------------------- SVMax: regularizer


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("method", _methods())
@pytest.mark.parametrize("bounded", [True, False])
def test_svmax_penalty_value_and_gradient(method, bounded, batch):
    x = _batch(batch)
    reg = SVMax(factor=1.3, bounded=bounded, method=method)
    value, grad = value_and_grad(reg.penalty, x)
    _assert_float64(value)
    resolved = _resolved(x, method)
    polar = _polar_newton_schulz if resolved == "newton_schulz" else _polar_exact
    ref_value, ref_grad = ref_svmax(x, 1.3, bounded, True, polar)
    _assert_close(value, ref_value, RTOL, f"value ({resolved})")
    _assert_close(grad, ref_grad, RTOL, f"gradient ({resolved})")


@pytest.mark.parametrize("method", ["svd", "gram", "newton_schulz"])
def test_svmax_unnormalized_and_metric(method):
    x = _batch("collapsed_144x128", seed=4)
    polar = _polar_newton_schulz if method == "newton_schulz" else _polar_exact
    reg = SVMax(factor=0.7, normalize=False, method=method)
    value, grad = value_and_grad(reg.penalty, x)
    ref_value, ref_grad = ref_svmax(x, 0.7, True, False, polar)
    _assert_close(value, ref_value, RTOL, "value")
    _assert_close(grad, ref_grad, RTOL, "gradient")
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    s_mu = metrics.mean_singular_value(x, method=method)
    _assert_float64(s_mu)
    _assert_close(s_mu, polar(e)[0] / 128, RTOL, "metrics.mean_singular_value")


# ------------------------------------------------------------------------------ VICReg


def ref_variance(z, gamma=1.0, eps=1e-4):
    """VICReg variance term and its gradient (unbiased variance)."""
    n, d = z.shape
    zc = z - z.mean(0)
    std = np.sqrt(np.sum(zc * zc, 0) / (n - 1) + eps)
    active = gamma - std > 0
    value = np.mean(np.where(active, gamma - std, 0.0))
    return value, -(active / std) * zc / ((n - 1) * d)


def ref_covariance(z):
    """VICReg covariance term ``(1/d) sum_{i != j} C_ij^2`` and its gradient."""
    n, d = z.shape
    zc = z - z.mean(0)
    off = zc.T @ zc / (n - 1)
    np.fill_diagonal(off, 0.0)
    return np.sum(off * off) / d, 4.0 * zc @ off / ((n - 1) * d)


def ref_vicreg(z, variance_factor=25.0, covariance_factor=1.0, gamma=1.0, eps=1e-4):
    v, gv = ref_variance(z, gamma, eps)
    c, gc = ref_covariance(z)
    return variance_factor * v + covariance_factor * c, variance_factor * gv + covariance_factor * gc


VICREG_BATCHES = ["collapsed_144x128", "collapsed_wide_64x160", "healthy_tall_144x48"]


@pytest.mark.parametrize("batch", VICREG_BATCHES)
@pytest.mark.parametrize("method", list(moments.COVARIANCE_METHODS))
def test_moments_variance_and_covariance(method, batch):
    z = _batch(batch)
    for fn, ref in [(lambda t: moments.variance_penalty(t), ref_variance),
                    (lambda t: moments.covariance_penalty(t, method), ref_covariance)]:
        value, grad = value_and_grad(fn, z)
        _assert_float64(value)
        ref_value, ref_grad = ref(z)
        _assert_close(value, ref_value, RTOL, "value")
        _assert_close(grad, ref_grad, RTOL, "gradient")


@pytest.mark.parametrize("batch", VICREG_BATCHES)
@pytest.mark.parametrize("method", list(moments.COVARIANCE_METHODS))
def test_vicreg_regularizer(method, batch):
    z = _batch(batch)
    reg = VICReg(3.0, 2.0, gamma=1.5, epsilon=1e-3, covariance_method=method)
    value, grad = value_and_grad(reg.penalty, z)
    _assert_float64(value)
    ref_value, ref_grad = ref_vicreg(z, 3.0, 2.0, 1.5, 1e-3)
    _assert_close(value, ref_value, RTOL, "value")
    _assert_close(grad, ref_grad, RTOL, "gradient")
    _assert_close(reg.variance_term(z), ref_variance(z, 1.5, 1e-3)[0], RTOL, "variance_term")
    _assert_close(reg.covariance_term(z), ref_covariance(z)[0], RTOL, "covariance_term")


@pytest.mark.parametrize("batch", VICREG_BATCHES)
def test_vicreg_loss(batch):
    z_a = _batch(batch, seed=0)
    z_b = z_a + 0.01 * np.random.default_rng(9).standard_normal(z_a.shape)
    loss = losses.VICRegLoss(10.0, 5.0, 0.5)

    def ref(a):
        v_a, gv_a = ref_variance(a)
        c_a, gc_a = ref_covariance(a)
        v_b, c_b = ref_variance(z_b)[0], ref_covariance(z_b)[0]
        diff = a - z_b
        value = 10.0 * np.mean(diff * diff) + 5.0 * (v_a + v_b) / 2 + 0.5 * (c_a + c_b)
        return value, 10.0 * 2.0 * diff / diff.size + 2.5 * gv_a + 0.5 * gc_a

    value, grad = value_and_grad(lambda t: loss(t, keras.ops.convert_to_tensor(z_b)), z_a)
    _assert_float64(value)
    ref_value, ref_grad = ref(z_a)
    _assert_close(value, ref_value, RTOL, "value")
    _assert_close(grad, ref_grad, RTOL, "gradient")


# --------------------------------------------------------------------------- SpreadOut


def ref_spread_out(x, factor=1.0, normalize=True):
    """Spread-out penalty over all ordered pairs of distinct rows, and its gradient."""
    x = np.asarray(x, np.float64)
    e, back = _unit_rows(x) if normalize else (x, lambda g: g)
    b, d = e.shape
    pairs = b * (b - 1)
    sq = np.sum(e * e, axis=1, keepdims=True)
    total = e.sum(0, keepdims=True)
    m1 = (np.sum(total * total) - np.sum(sq)) / pairs
    g_m1 = 2.0 * (total - e) / pairs
    gram = e @ e.T
    m2 = (np.sum(gram * gram) - np.sum(sq * sq)) / pairs
    g_m2 = 4.0 * (gram @ e - sq * e) / pairs
    active = m2 - 1.0 / d > 0
    value = factor * (m1 * m1 + (m2 - 1.0 / d if active else 0.0))
    return value, back(factor * (2.0 * m1 * g_m1 + (g_m2 if active else 0.0)))


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("normalize", [True, False])
def test_spread_out(normalize, batch):
    x = _batch(batch)
    if not normalize:
        x = x / 10.0
    value, grad = value_and_grad(SpreadOut(1.7, normalize=normalize).penalty, x)
    _assert_float64(value)
    ref_value, ref_grad = ref_spread_out(x, 1.7, normalize)
    _assert_close(value, ref_value, RTOL, "value")
    _assert_close(grad, ref_grad, RTOL, "gradient")


# ------------------------------------------------------------------------ ranking losses


def _distances(x):
    """Euclidean distances in float64, directly: norms of the differences."""
    return np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)


def _distance_gradient(x, dist, w):
    """``dL/dx`` from ``W = dL/dD`` (``D_ij = ||x_i - x_j||``, zero where ``D_ij = 0``)."""
    w = w + w.T
    safe = np.where(dist > 0, dist, 1.0)
    coef = np.where(dist > 0, w / safe, 0.0)
    return coef.sum(1, keepdims=True) * x - coef @ x


def ref_triplet(labels, x, margin=0.2, mining="semi_hard", soft=False):
    """Value and gradient of the triplet loss (mining as ``test_losses_ranking.ref_triplet``)."""
    labels = np.asarray(labels)
    dist = _distances(x)
    b = len(labels)
    same = labels[:, None] == labels[None, :]
    triplets = []  # (a, p, n)
    for a in range(b):
        pos = [p for p in range(b) if p != a and same[a, p]]
        neg = [n for n in range(b) if not same[a, n]]
        if not pos or not neg:
            continue
        if mining == "all":
            triplets += [(a, p, n) for p in pos for n in neg]
        elif mining == "hard":
            triplets.append((a, pos[int(np.argmax(dist[a, pos]))], neg[int(np.argmin(dist[a, neg]))]))
        else:
            for p in pos:
                farther = [n for n in neg if dist[a, n] > dist[a, p]]
                n = (farther[int(np.argmin(dist[a, farther]))] if farther
                     else neg[int(np.argmax(dist[a, neg]))])
                triplets.append((a, p, n))
    diffs = np.array([dist[a, p] - dist[a, n] for a, p, n in triplets])
    if soft:
        terms, slopes = np.logaddexp(0.0, diffs), 1.0 / (1.0 + np.exp(-diffs))
    else:
        terms, slopes = np.maximum(diffs + margin, 0.0), (diffs + margin > 0).astype(float)
    keep = terms > 0 if mining == "all" else np.ones(len(terms), bool)
    count = max(int(keep.sum()), 1)
    w = np.zeros((b, b))
    for (a, p, n), slope, kept in zip(triplets, slopes, keep):
        if kept:
            w[a, p] += slope / count
            w[a, n] -= slope / count
    return float(np.sum(terms[keep]) / count), _distance_gradient(x, dist, w)


def ref_contrastive(labels, x, margin=1.0):
    labels = np.asarray(labels)
    dist = _distances(x)
    b = len(labels)
    upper = np.triu(np.ones((b, b), bool), 1)
    same = labels[:, None] == labels[None, :]
    terms = np.where(same, dist, np.maximum(margin - dist, 0.0))
    slopes = np.where(same, 1.0, -(margin - dist > 0).astype(float))
    count = max(int(upper.sum()), 1)
    w = np.where(upper, slopes, 0.0) / count
    return float(np.sum(terms[upper]) / count), _distance_gradient(x, dist, w)


def _pairs_and_negatives(labels):
    """N-pair layout: (anchor, positive) by first/second occurrence; negatives = other positives."""
    pairs, role = ranking_refs._ref_pairs(list(labels))
    return [(a, p, ranking_refs._ref_negatives(list(labels), a, role, "positives")) for a, p in pairs]


def ref_npair(labels, x):
    g_sim = np.zeros((len(labels), len(labels)))
    total = 0.0
    layout = _pairs_and_negatives(labels)
    for a, p, negs in layout:
        cols = [p] + negs
        logits = x[a] @ x[cols].T
        shift = logits.max()
        weights = np.exp(logits - shift)
        total += shift + np.log(weights.sum()) - logits[0]
        soft = weights / weights.sum()
        soft[0] -= 1.0
        g_sim[a, cols] += soft / len(layout)
    return total / len(layout), (g_sim + g_sim.T) @ x


def ref_angular(labels, x, alpha=45.0):
    t = math.tan(math.radians(alpha)) ** 2
    grad = np.zeros_like(x)
    total = 0.0
    layout = _pairs_and_negatives(labels)
    for a, p, negs in layout:
        f = 4 * t * (x[negs] @ (x[a] + x[p])) - 2 * (1 + t) * (x[a] @ x[p])
        shift = max(f.max(), 0.0)
        weights = np.exp(f - shift)
        norm = np.exp(-shift) + weights.sum()
        total += shift + np.log(norm)
        sig = weights / norm / len(layout)
        grad[a] += sig @ (4 * t * x[negs]) - sig.sum() * 2 * (1 + t) * x[p]
        grad[p] += sig @ (4 * t * x[negs]) - sig.sum() * 2 * (1 + t) * x[a]
        grad[negs] += np.outer(sig, 4 * t * (x[a] + x[p]))
    return total / len(layout), grad


RANKING = {
    # name: (loss factory, reference, brute-force value reference, its kwargs, pair batch?)
    # dtype="float64": like every Keras loss, the classes cast their result to their dtype
    # (floatx by default); the functions (triplet_loss, ...) return float64 for float64 input.
    "triplet_semi-hard": (lambda: losses.TripletLoss(dtype="float64"),
                          lambda y, x: ref_triplet(y, x), ranking_refs.ref_triplet, {}, False),
    "triplet_hard": (lambda: losses.TripletLoss(mining="hard", dtype="float64"),
                     lambda y, x: ref_triplet(y, x, mining="hard"), ranking_refs.ref_triplet,
                     {"mining": "hard"}, False),
    "triplet_all": (lambda: losses.TripletLoss(mining="all", margin=0.5, dtype="float64"),
                    lambda y, x: ref_triplet(y, x, 0.5, "all"), ranking_refs.ref_triplet,
                    {"mining": "all", "margin": 0.5}, False),
    "triplet_hard_soft": (lambda: losses.TripletLoss(mining="hard", soft=True, dtype="float64"),
                          lambda y, x: ref_triplet(y, x, mining="hard", soft=True),
                          ranking_refs.ref_triplet, {"mining": "hard", "soft": True}, False),
    "contrastive": (lambda: losses.ContrastiveLoss(dtype="float64"), ref_contrastive,
                    ranking_refs.ref_contrastive, {}, False),
    "npair": (lambda: losses.NPairLoss(dtype="float64"), ref_npair, ranking_refs.ref_npair, {}, True),
    "angular": (lambda: losses.AngularLoss(dtype="float64"), ref_angular,
                ranking_refs.ref_angular, {}, True),
}


def _ranking_batch(pair_batch, kind, seed=0):
    """``(labels, x)``: ``kind`` "small" (12 x 5, random unit rows) or "collapsed"
    (144 x 128 near-collapsed, L2-normalized as the losses expect)."""
    rng = np.random.default_rng(seed)
    b, d = (12, 5) if kind == "small" else (144, 128)
    if pair_batch:
        labels = rng.permutation(np.repeat(np.arange(b // 2), 2))
    else:
        labels = rng.permutation(np.repeat(np.arange(b // (3 if kind == "small" else 6)),
                                           3 if kind == "small" else 6))
    x = rng.standard_normal((b, d)) if kind == "small" else near_collapsed(rng, b, d)
    return labels, x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("name", sorted(RANKING))
def test_ranking_references_agree(name):
    """The analytic references here against the brute-force ones and finite differences."""
    _, ref, brute, kwargs, pair_batch = RANKING[name]
    labels, x = _ranking_batch(pair_batch, "small", seed=4)
    value, grad = ref(labels, x)
    assert value == pytest.approx(brute(list(labels), x, **kwargs), rel=1e-13, abs=1e-15)
    numeric = numeric_grad(lambda v: brute(list(labels), v, **kwargs), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["small", "collapsed"])
@pytest.mark.parametrize("name", sorted(RANKING))
def test_ranking_loss_value_and_gradient(name, kind):
    make, ref, brute, kwargs, pair_batch = RANKING[name]
    labels, x = _ranking_batch(pair_batch, kind)
    loss = make()
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    _assert_float64(value)
    ref_value, ref_grad = ref(labels, x)
    _assert_close(value, ref_value, RTOL, "value")
    _assert_close(grad, ref_grad, RTOL, "gradient")
    if kind == "small" or not name.endswith("all"):  # brute force is O(b^3) for "all"
        _assert_close(value, brute(list(labels), x, **kwargs), RTOL, "value (brute force)")
