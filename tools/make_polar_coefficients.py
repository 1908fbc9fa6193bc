"""Computes the per-step quintic coefficients of the Newton-Schulz polar iteration.

``keras_featreg.ops.spectral`` iterates ``X <- p_t(X) = a X + b X X^T X + c (X X^T)^2 X`` on a
matrix whose singular values have been scaled into ``[0, 1]``.  Each ``p_t`` is the odd
quintic closest to 1 in the max norm on the interval ``[l_t, 1]`` that the previous steps
map ``[l_0, 1]`` into ("greedy minimax", which Chen & Chow (2014) show optimal for the
composition; Amsel, Persson, Musco & Gower (2025), "The Polar Express", give the same
construction for Muon).  The image of step ``t`` is ``[min p_t, max p_t]``; the polynomial is
divided by ``max p_t`` so the next interval again ends at 1 and no singular value ever
exceeds 1.  Once the interval has converged, further steps use the classical quintic
Newton-Schulz map ``(15 x - 10 x^3 + 3 x^5) / 8``, which converges cubically to 1.

Each minimax problem is a linear program on a dense grid (scipy's HiGHS).  Run:

    python tools/make_polar_coefficients.py [--lower 5e-3] [--steps 6]

and paste the printed tuple into ``_POLAR_COEFFS`` in ``keras_featreg/ops/spectral.py``.
"""

import argparse

import numpy as np
from scipy.optimize import linprog


def minimax_odd_quintic(lower, upper, grid=4000):
    """``(a, b, c)`` minimizing ``max |1 - (a x + b x^3 + c x^5)|`` on ``[lower, upper]``."""
    x = np.unique(np.concatenate([np.geomspace(lower, upper, grid), np.linspace(lower, upper, grid)]))
    v = np.stack([x, x**3, x**5], axis=1)
    ones = np.ones((len(x), 1))
    # variables (a, b, c, t): minimize t subject to -t <= 1 - v @ coef <= t
    a_ub = np.vstack([np.hstack([-v, -ones]), np.hstack([v, -ones])])
    b_ub = np.concatenate([-np.ones(len(x)), np.ones(len(x))])
    res = linprog([0, 0, 0, 1], A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * 3 + [(0, None)],
                  method="highs")
    if not res.success:
        raise RuntimeError(res.message)
    return res.x[:3]


def quintic(coef, x):
    a, b, c = coef
    x2 = x * x
    return x * (a + x2 * (b + c * x2))


def schedule(lower, steps):
    """Greedy minimax schedule for ``[lower, 1]``: a list of ``steps`` coefficient triples."""
    out, lo = [], lower
    for _ in range(steps):
        coef = minimax_odd_quintic(lo, 1.0)
        xs = np.geomspace(lo, 1.0, 20000)
        image = quintic(coef, xs)
        top = image.max()
        out.append(tuple(float(c) / top for c in coef))
        lo = image.min() / top
        if 1.0 - lo < 1e-7:  # converged: the rest would be the identity
            break
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lower", type=float, default=5e-3, help="l_0: smallest scaled singular value covered")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    coeffs = schedule(args.lower, args.steps)
    xs = np.geomspace(args.lower, 1.0, 20000)
    f = xs
    print(f"# greedy minimax odd quintics on [{args.lower:g}, 1]")
    for t, coef in enumerate(coeffs, 1):
        f = quintic(coef, f)
        print(f"# step {t}: sup |1 - f| on [l_0, 1] = {np.abs(1 - f).max():.2e}, "
              f"slope at 0 = {coef[0]:.3f}")
    print("_POLAR_COEFFS = (")
    for coef in coeffs:
        print("    (" + ", ".join(f"{c:.8f}" for c in coef) + "),")
    print(")")


if __name__ == "__main__":
    main()
