"""Independent float64 NumPy references of the library's formulas, shared by the tests.

Written from the papers' formulas with explicit loops where that is clearer, never calling
keras_featreg: regularizers (SVMax, VICReg's terms, spread-out), the ranking losses
(triplet with its mining, contrastive, N-pair, angular), the Circle loss, and retrieval
metrics of queries against a reference set (Recall@K, precision@1, MAP@R, R-precision).
"""

import math  # noqa: F401

import numpy as np


def ref_normalize(e):
    n = np.sqrt(np.maximum((e**2).sum(1, keepdims=True), 1e-12))
    return e / n


def ref_svmax(e, factor=1.0, bounded=True, normalize=True):
    """SVMax eq. 4 / eq. 1 in float64 with the scale-free bounds."""
    e = np.asarray(e, np.float64)
    if normalize:
        e = ref_normalize(e)
    b, d = e.shape
    s_mu = np.linalg.svd(e, compute_uv=False).sum() / d
    if not bounded:
        return -factor * s_mu
    fro = np.sqrt((e**2).sum())
    lo, up = fro / d, np.sqrt(min(b, d)) * fro / d
    ratio = 0.0 if up - lo <= 1e-6 * max(up, 1e-30) else (up - s_mu) / (up - lo)
    return factor * np.exp(ratio)


def ref_variance(z, gamma=1.0, eps=1e-4):
    z = np.asarray(z, np.float64)
    n = z.shape[0]
    var = ((z - z.mean(0)) ** 2).sum(0) / max(n - 1, 1)
    return np.mean(np.maximum(0.0, gamma - np.sqrt(var + eps)))


def ref_covariance(z):
    z = np.asarray(z, np.float64)
    n, d = z.shape
    zc = z - z.mean(0)
    c = zc.T @ zc / max(n - 1, 1)
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                total += c[i, j] ** 2
    return total / d


def ref_spread_out(e, factor=1.0, normalize=True):
    e = np.asarray(e, np.float64)
    if normalize:
        e = ref_normalize(e)
    b, d = e.shape
    if b < 2:
        return 0.0
    dots = [e[i] @ e[j] for i in range(b) for j in range(b) if i != j]
    m1, m2 = np.mean(dots), np.mean(np.square(dots))
    return factor * (m1**2 + max(0.0, m2 - 1.0 / d))


# ---- ranking losses --------------------------------------------------------------------


def _normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _softplus(v):
    return math.log1p(math.exp(-abs(v))) + max(v, 0.0)


def _logsumexp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


# ---------------------------------------------------- float64 brute-force references


def _ref_dist(u, v, metric):
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    if metric == "euclidean":
        return math.sqrt(float(np.sum((u - v) ** 2)))
    if metric == "squared_euclidean":
        return float(np.sum((u - v) ** 2))
    nu = u / math.sqrt(max(float(np.sum(u * u)), 1e-12))
    nv = v / math.sqrt(max(float(np.sum(v * v)), 1e-12))
    return max(0.0, 1.0 - float(np.sum(nu * nv)))


def ref_triplet(labels, x, margin=0.2, mining="semi_hard", soft=False, distance="euclidean"):
    b = len(labels)
    d = [[_ref_dist(x[i], x[j], distance) for j in range(b)] for i in range(b)]

    def term(ap, an):
        return _softplus(ap - an) if soft else max(ap - an + margin, 0.0)

    terms = []
    if mining == "all":
        for a in range(b):
            for p in range(b):
                for n in range(b):
                    if a != p and labels[a] == labels[p] and labels[n] != labels[a]:
                        terms.append(term(d[a][p], d[a][n]))
        terms = [t for t in terms if t > 0]
    elif mining == "hard":
        for a in range(b):
            pos = [d[a][p] for p in range(b) if p != a and labels[p] == labels[a]]
            neg = [d[a][n] for n in range(b) if labels[n] != labels[a]]
            if pos and neg:
                terms.append(term(max(pos), min(neg)))
    else:  # semi-hard
        for a in range(b):
            neg = [d[a][n] for n in range(b) if labels[n] != labels[a]]
            for p in range(b):
                if p == a or labels[p] != labels[a] or not neg:
                    continue
                farther = [v for v in neg if v > d[a][p]]
                terms.append(term(d[a][p], min(farther) if farther else max(neg)))
    return sum(terms) / len(terms) if terms else 0.0


def ref_contrastive(labels, x, margin=1.0, distance="euclidean", power=1):
    b = len(labels)
    terms = []
    for i in range(b):
        for j in range(i + 1, b):
            dij = _ref_dist(x[i], x[j], distance)
            if labels[i] == labels[j]:
                terms.append(dij**power)
            else:
                terms.append(max(margin - dij, 0.0) ** power)
    return sum(terms) / len(terms) if terms else 0.0


def _ref_pairs(labels):
    """[(anchor, positive)] and the set of positive-role indices, by first/second occurrence."""
    seen = {}
    pairs, positive_role = [], set()
    for i, y in enumerate(labels):
        seen.setdefault(y, []).append(i)
        if len(seen[y]) == 2:
            pairs.append((seen[y][0], i))
            positive_role.add(i)
    return pairs, positive_role


def _ref_negatives(labels, a, positive_role, negatives):
    return [
        n
        for n in range(len(labels))
        if labels[n] != labels[a] and (negatives == "all" or n in positive_role)
    ]


def ref_npair(labels, x, negatives="positives", l2_reg=0.0):
    x = np.asarray(x, np.float64)
    pairs, role = _ref_pairs(labels)
    if not pairs:
        return 0.0
    losses = []
    for a, p in pairs:
        logits = [float(x[a] @ x[p])] + [
            float(x[a] @ x[n]) for n in _ref_negatives(labels, a, role, negatives)
        ]
        losses.append(_logsumexp(logits) - logits[0])
    loss = sum(losses) / len(losses)
    if l2_reg:
        na = np.mean([x[a] @ x[a] for a, _ in pairs])
        npos = np.mean([x[p] @ x[p] for _, p in pairs])
        loss += 0.25 * l2_reg * (na + npos)
    return loss


def ref_angular(labels, x, alpha=45.0, negatives="positives"):
    x = np.asarray(x, np.float64)
    t = math.tan(math.radians(alpha)) ** 2
    pairs, role = _ref_pairs(labels)
    if not pairs:
        return 0.0
    losses = []
    for a, p in pairs:
        fs = [
            4 * t * float((x[a] + x[p]) @ x[n]) - 2 * (1 + t) * float(x[a] @ x[p])
            for n in _ref_negatives(labels, a, role, negatives)
        ]
        losses.append(_logsumexp([0.0] + fs))
    return sum(losses) / len(losses)


# ---- Circle loss -----------------------------------------------------------------------


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_circle(labels, x, m=0.4, gamma=80.0, reducer="mean_nonzero", normalize=True,
               alpha_at=None, remove_diagonal=True, per_anchor=False):
    """The Circle loss in float64 NumPy, written from the paper's eq. 5, 6 and 8.

    ``alpha_at``: embeddings at which the weights alpha are evaluated (held constant, as
    PML's ``.detach()``); None: at ``x`` (live weights, as ``keras.losses.Circle``).
    ``normalize=False``: ``S = x x^T`` (Keras's input convention), else cosine.
    """
    y = np.asarray(labels)
    prep = _unit if normalize else (lambda e: np.asarray(e, np.float64))
    z = prep(x)
    s = z @ z.T
    za = z if alpha_at is None else prep(alpha_at)
    sa = za @ za.T
    b = len(y)
    pos = y[:, None] == y[None]
    if remove_diagonal:
        pos &= ~np.eye(b, dtype=bool)
    neg = y[:, None] != y[None]
    alpha_p, alpha_n = np.maximum(1 + m - sa, 0), np.maximum(sa + m, 0)
    logit_p = -gamma * alpha_p * (s - (1 - m))
    logit_n = gamma * alpha_n * (s - m)
    out = np.zeros(b)
    for i in range(b):
        if pos[i].any() and neg[i].any():
            lse_p = np.logaddexp.reduce(logit_p[i, pos[i]])
            lse_n = np.logaddexp.reduce(logit_n[i, neg[i]])
            out[i] = np.logaddexp(0.0, lse_p + lse_n)
    if per_anchor:
        return out
    if reducer == "sum":
        return float(out.sum())
    if reducer == "mean":
        return float(out.mean())
    return float(out[out > 0].mean()) if np.any(out > 0) else 0.0


# ---- retrieval against a reference set -------------------------------------------------


def ref_query_reference(queries, query_labels, reference, reference_labels, ks=(1,),
                        metric="euclidean", includes_query=False):
    """Recall@K, precision@1, MAP@R and R-precision of queries against a reference set.

    float64 brute force: the full (queries × reference) distance matrix, each row ranked
    by a stable argsort (ties by reference position). With `includes_query`, query i is
    reference row i: that row is dropped from its ranking and from its R. R = the reference
    items with the query's label; queries with R = 0 ("lone") are left out of every metric
    (pytorch-metric-learning's AccuracyCalculator). ``metric``: "euclidean", "cosine"
    (rows normalized) or "dot_product" (larger is closer).
    """
    q = np.asarray(queries, np.float64)
    r = np.asarray(reference, np.float64)
    qy, ry = np.asarray(query_labels), np.asarray(reference_labels)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
    if metric == "dot_product":
        d = -(q @ r.T)
    else:
        d = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    recall = {k: [] for k in ks}
    p1, aps, rps = [], [], []
    for i in range(len(q)):
        ranking = [j for j in np.argsort(d[i], kind="stable") if not (includes_query and j == i)]
        rel = [ry[j] == qy[i] for j in ranking]
        big_r = int(np.sum(ry == qy[i])) - int(includes_query)
        if big_r == 0:
            continue
        for k in ks:
            recall[k].append(any(rel[:k]))
        p1.append(rel[0])
        correct, total = 0, 0.0
        for rank, hit in enumerate(rel[:big_r], start=1):
            if hit:
                correct += 1
                total += correct / rank
        aps.append(total / big_r)
        rps.append(correct / big_r)
    return {"recall": {k: float(np.mean(v)) for k, v in recall.items()},
            "precision_at_1": float(np.mean(p1)), "map_at_r": float(np.mean(aps)),
            "r_precision": float(np.mean(rps))}


# ---- collapse measures (RankMe, alpha-ReQ, LiDAR, participation ratio, Jing et al.) -----


def ref_entropy_rank(values, eps=1e-7):
    """exp(-sum p log p), p = |v| / ||v||_1 + eps (0/0 taken as 0)."""
    v = np.abs(np.asarray(values, np.float64))
    total = v.sum()
    p = (v / total if total > 0 else np.zeros_like(v)) + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def ref_reptrix_get_rank(eigen):
    """reptrix `rankme.get_rank` / `lidar.get_rank` (arnab39/reptrix), transcribed."""
    l1 = np.sum(np.abs(eigen))
    eps = 1e-7
    eigen_norm = eigen / l1 + eps
    entropy = -np.sum(eigen_norm * np.log(eigen_norm))
    return float(np.exp(entropy))


def ref_rankme(z, eps=1e-7):
    """RankMe (Garrido et al., ICML 2023, eq. 1) on the singular values of the raw Z."""
    return ref_entropy_rank(np.linalg.svd(np.asarray(z, np.float64), compute_uv=False), eps)


def ref_cov_eigenvalues(z):
    """Eigenvalues of the unbiased covariance, descending, the top min(n, d), clipped at 0."""
    z = np.asarray(z, np.float64)
    n, d = z.shape
    zc = z - z.mean(0)
    lam = np.linalg.eigvalsh(zc.T @ zc / (n - 1))[::-1][: min(n, d)]
    return np.maximum(lam, 0.0)


def ref_floor(lam, eps):
    """The floor of keras_featreg's log-spectrum: k eps lambda_1 and 1e-30."""
    return np.maximum(lam, max(lam.max() * len(lam) * eps, 1e-30))


def ref_reptrix_powerlaw(eigen, trange):
    """reptrix `alpha.get_powerlaw`'s alpha (after Stringer et al.), transcribed."""
    logss = np.log(np.abs(eigen))
    y = logss[trange][:, np.newaxis]
    trange = trange + 1
    nt = trange.size
    x = np.concatenate((-np.log(trange)[:, np.newaxis], np.ones((nt, 1))), axis=1)
    w = 1.0 / trange.astype(np.float64)[:, np.newaxis]
    b = np.linalg.solve(x.T @ (x * w), (w * x).T @ y).flatten()
    return float(b[0])


def ref_alpha_req(z, fit_range=(5, 100), weighted=True, eps=2.0**-52):
    """alpha-ReQ: (weighted) least squares of log lambda_i on -log i over fit_range."""
    lam = ref_cov_eigenvalues(z)
    k = len(lam)
    if k < 2:
        return 0.0
    start, stop = fit_range[0], min(fit_range[1], k)
    if stop - start < 3:
        start, stop = 0, k
    i = np.arange(start, stop) + 1.0
    y = np.log(ref_floor(lam, eps))[start:stop]
    x = np.stack([-np.log(i), np.ones_like(i)], 1)
    w = 1.0 / i if weighted else np.ones_like(i)
    coef = np.linalg.solve(x.T @ (x * w[:, None]), x.T @ (w * y))
    return float(coef[0])


def ref_participation_ratio(z):
    z = np.asarray(z, np.float64)
    zc = z - z.mean(0)
    c = zc.T @ zc / (len(z) - 1)
    sq = np.trace(c @ c)
    return float(np.trace(c) ** 2 / sq) if sq > 0 else 0.0


def ref_collapsed_dimensions(z, threshold=1e-5):
    z = np.asarray(z, np.float64)
    lam = ref_cov_eigenvalues(z)
    return float(z.shape[1] - np.sum(lam > threshold * lam.max()))


def ref_lidar(views, delta=1e-4, eps=1e-7):
    """LiDAR (Thilak et al., ICLR 2024, Sec. 3) on views of shape (n, q, d)."""
    v = np.asarray(views, np.float64)
    n, q, d = v.shape
    mu_i = v.mean(1)
    mb = mu_i - mu_i.mean(0)
    sigma_b = mb.T @ mb / (n - 1)
    w = (v - mu_i[:, None, :]).reshape(-1, d)
    sigma_w = w.T @ w / (n * (q - 1)) + delta * np.eye(d)
    lw, vw = np.linalg.eigh(sigma_w)
    inv_sqrt = vw @ np.diag(lw**-0.5) @ vw.T
    lam = np.linalg.eigvalsh(inv_sqrt @ sigma_b @ inv_sqrt)
    return ref_entropy_rank(np.maximum(lam, 0.0), eps)
