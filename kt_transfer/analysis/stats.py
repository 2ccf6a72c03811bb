"""Student's t p-values and Holm's correction, in pure Python (no SciPy at analysis time).

The findings test several contrasts on the same grid; each alone at 5% would, over nine
of them, call something a finding about one time in three by chance. Holm's step-down
correction keeps the chance of any false finding among them at 5%, and is never less
powerful than Bonferroni's.
"""

import math


def _continued_fraction(a, b, x):
    """The continued fraction of the incomplete beta function (Lentz's method, as in
    Numerical Recipes' betacf); converges fast for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a, b, x):
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t, df):
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def holm(p_values):
    """Holm's step-down adjusted p-values, in the order given (None stays None).

    Sorted ascending, the i-th smallest of m is multiplied by m - i (i from 0), the
    running maximum taken so the order is kept, and capped at 1. A hypothesis is rejected
    at familywise level alpha when its adjusted p is below alpha."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None and p == p)
    adjusted = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def t_quantile(two_sided_p, df):
    """The t with P(|T| >= t) = two_sided_p for df degrees of freedom (bisection on
    t_two_sided_p, which falls with t): e.g. 0.05 / m for a Bonferroni interval."""
    if not 0 < two_sided_p < 1:
        raise ValueError(f"a two-sided p in (0, 1), got {two_sided_p}")
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > two_sided_p:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        if t_two_sided_p(middle, df) > two_sided_p:
            low = middle
        else:
            high = middle
    return (low + high) / 2
