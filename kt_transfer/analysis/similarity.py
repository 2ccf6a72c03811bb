"""Transferability without retraining: representation similarity and LogME, in NumPy.

- Linear CKA (Kornblith et al. 2019): how similar two networks' representations of the
  same images are, invariant to orthogonal transforms and isotropic scaling of either.
- Minibatch CKA (Nguyen et al. 2021): CKA from the unbiased HSIC estimator (Song et al.
  2012) accumulated over minibatches, so memory does not grow with the number of images.
- LogME (You et al. 2021): the log marginal likelihood (evidence) per example of a
  Bayesian linear model from features to one-hot labels, maximized over its two
  precisions by the paper's fixed-point iteration; higher means the labels are easier to
  read linearly from the features, without training anything.

Everything is computed in float64 (the Gram matrices' sums cancel badly in float32).
"""

import math

import numpy as np


def _centre(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x, y):
    """Linear CKA of two representations [n, ...] of the same n examples (biased HSIC,
    feature-space form: no n x n matrix)."""
    x, y = _centre(x), _centre(y)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def unbiased_hsic(gram_x, gram_y):
    """Song et al.'s unbiased HSIC estimator of two n x n Gram matrices (n >= 4)."""
    n = gram_x.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 examples, got {n}")
    k, m = gram_x.copy(), gram_y.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(m, 0.0)
    sums_k, sums_m = k.sum(axis=0), m.sum(axis=0)
    value = (
        np.sum(k * m)
        + sums_k.sum() * sums_m.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * sums_k @ sums_m
    )
    return float(value / (n * (n - 3)))


class MinibatchCKA:
    """Linear CKA between the layers of two networks, accumulated over minibatches of the
    same examples (Nguyen et al. 2021): memory is one minibatch's Gram matrices.

    update(xs, ys) takes one minibatch's features of each layer of the first network
    (xs) and of the second (ys); value() gives the [len(xs), len(ys)] CKA matrix, or with
    `diagonal=True` only its diagonal (layer i with layer i: 1/L of the work).
    update_grams does the same from Gram matrices (gram()), so a network's Grams can be
    computed once and compared with many others'.
    """

    def __init__(self, diagonal=False):
        self.diagonal = diagonal
        self.xy = self.xx = self.yy = None

    def update(self, xs, ys):
        self.update_grams([gram(x) for x in xs], [gram(y) for y in ys])

    def update_grams(self, grams_x, grams_y):
        if self.diagonal:
            xy = np.array([unbiased_hsic(gx, gy) for gx, gy in zip(grams_x, grams_y)])
        else:
            xy = np.array([[unbiased_hsic(gx, gy) for gy in grams_y] for gx in grams_x])
        xx = np.array([unbiased_hsic(gx, gx) for gx in grams_x])
        yy = np.array([unbiased_hsic(gy, gy) for gy in grams_y])
        if self.xy is None:
            self.xy, self.xx, self.yy = xy, xx, yy
        else:
            self.xy, self.xx, self.yy = self.xy + xy, self.xx + xx, self.yy + yy

    def value(self):
        xx, yy = np.maximum(self.xx, 1e-300), np.maximum(self.yy, 1e-300)
        return self.xy / np.sqrt(xx * yy if self.diagonal else np.outer(xx, yy))


def gram(x):
    """The linear kernel X X^T of one minibatch's features (flattened), in float64."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x @ x.T


def logme(features, labels, max_iterations=11, tolerance=1e-3):
    """LogME of features [n, d] for integer labels [n]: the mean over classes of the
    per-example log evidence of y_k = F w + noise, w ~ N(0, 1/alpha), noise ~ N(0, 1/beta),
    at the alpha, beta the paper's fixed-point iteration reaches.

    Returns:
      (score, per-class [(alpha, beta, evidence)]).
    """
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    labels = np.asarray(labels)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = np.zeros(d)
    sigma[: len(s)] = s**2  # eigenvalues of F^T F (zeros beyond rank)
    per_class = []
    for k in np.unique(labels):
        y = (labels == k).astype(np.float64)
        z = u.T @ y
        z2 = np.zeros(d)
        z2[: len(z)] = z**2
        outside = y @ y - z2.sum()  # |y|^2 outside the span of F's columns
        alpha, beta = 1.0, 1.0
        for _ in range(max_iterations):
            t = alpha / beta
            gamma = np.sum(sigma / (sigma + t))
            m2 = np.sum(sigma * z2 / (t + sigma) ** 2)
            res2 = np.sum(z2 * (t / (t + sigma)) ** 2) + outside
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= tolerance:
                break
        per_class.append((alpha, beta, evidence(sigma, z2, outside, n, alpha, beta) / n))
    return float(np.mean([e for _, _, e in per_class])), per_class


def evidence(sigma, z2, outside, n, alpha, beta):
    """log p(y | alpha, beta) of the Bayesian linear model, from F's spectrum (sigma) and
    y's squared coordinates along F's left singular vectors (z2)."""
    d = len(sigma)
    t = alpha / beta
    m2 = np.sum(sigma * z2 / (t + sigma) ** 2)
    res2 = np.sum(z2 * (t / (t + sigma)) ** 2) + outside
    return float(
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * sigma))
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )


def spearman(a, b):
    """Spearman's rank correlation of two equal-length sequences (ties averaged)."""

    def ranks(values):
        values = np.asarray(values, np.float64)
        order = values.argsort()
        rank = np.empty(len(values))
        rank[order] = np.arange(len(values))
        for v in np.unique(values):  # average the ranks of ties
            rank[values == v] = rank[values == v].mean()
        return rank

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


MAX_EXACT_POINTS = 8  # 8! = 40,320 orderings: exact and fast


def spearman_p_value(a, b):
    """Two-sided exact permutation p-value of Spearman's rho: the share of all orderings
    of `b` whose |rho| with `a` is at least the observed one. With 7 layers only
    |rho| >= 0.79 or so reaches p < 0.05, which is why a rank correlation over layers
    needs its p-value beside it."""
    import itertools

    if not 3 <= len(a) <= MAX_EXACT_POINTS:
        raise ValueError(f"exact p-value for 3..{MAX_EXACT_POINTS} points, got {len(a)}")
    observed = abs(spearman(a, b)) - 1e-12
    hits = total = 0
    for order in itertools.permutations(b):
        total += 1
        hits += abs(spearman(a, order)) >= observed
    return hits / total


def cka_null(grams_x, grams_y, permutations=20, seed=0):
    """Layer-by-layer CKA of two networks when their images are mismatched: per draw,
    each minibatch's second Gram matrix is permuted (rows and columns alike), so
    network two sees other images than network one. Returns [permutations, layers]:
    the CKA a pair of unrelated representations of this size and layer width shows by
    chance (the unbiased estimator centres it near 0; its spread is the null's).

    Args:
      grams_x, grams_y: [minibatch][layer] Gram matrices of the two networks.
    """
    rng = np.random.default_rng(seed)
    xx = sum(np.array([unbiased_hsic(g, g) for g in batch]) for batch in grams_x)
    yy = sum(np.array([unbiased_hsic(g, g) for g in batch]) for batch in grams_y)
    scale = np.sqrt(np.maximum(xx, 1e-300) * np.maximum(yy, 1e-300))
    draws = []
    for _ in range(permutations):
        xy = 0.0
        for batch_x, batch_y in zip(grams_x, grams_y):
            order = rng.permutation(len(batch_y[0]))
            xy = xy + np.array(
                [unbiased_hsic(gx, gy[np.ix_(order, order)]) for gx, gy in zip(batch_x, batch_y)]
            )
        draws.append(xy / scale)
    return np.array(draws)


def principal_components(train, others=(), dim=12):
    """Features reduced to their `dim` leading principal components (fitted on `train`,
    applied to `others`): LogME and a linear probe grow with feature dimension, so layers
    are compared at one dimension (a layer with fewer dimensions keeps them all)."""
    train = np.asarray(train, np.float64)
    mean = train.mean(axis=0, keepdims=True)
    if train.shape[1] <= dim:
        return [train - mean] + [np.asarray(o, np.float64) - mean for o in others]
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:dim].T
    return [(train - mean) @ basis] + [(np.asarray(o, np.float64) - mean) @ basis for o in others]


def _residual(y, x):
    """y minus its least-squares line in x."""
    design = np.column_stack([np.ones(len(x)), np.asarray(x, np.float64)])
    y = np.asarray(y, np.float64)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ coef


def _correlation(x, y):
    if np.allclose(x, 0) or np.allclose(y, 0):
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def partial_correlation(a, b, control):
    """Pearson correlation of a and b with a straight line in `control` (the layer
    index) taken out of both: does `a` follow `b`'s bends beyond a steady fall with depth?
    Ranks would not do: a grid curve that falls at every n has ranks that depth alone
    explains, leaving nothing for any measure to add."""
    return _correlation(_residual(a, control), _residual(b, control))


def partial_correlation_p_value(a, b, control):
    """Exact two-sided p of partial_correlation over every ordering of a's residuals
    (Freedman-Lane: under the null, a's departures from its line are exchangeable)."""
    import itertools

    if not 3 <= len(a) <= MAX_EXACT_POINTS:
        raise ValueError(f"exact p-value for 3..{MAX_EXACT_POINTS} points, got {len(a)}")
    residual_a, residual_b = _residual(a, control), _residual(b, control)
    observed = abs(_correlation(residual_a, residual_b)) - 1e-12
    hits = total = 0
    for order in itertools.permutations(range(len(a))):
        total += 1
        permuted = _residual(residual_a[list(order)], control)
        hits += abs(_correlation(permuted, residual_b)) >= observed
    return hits / total
