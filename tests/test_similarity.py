"""The mathematics of CKA, minibatch CKA, LogME and the linear probe, on known cases."""

import itertools
import math

import numpy as np
import pytest

from kt_transfer.analysis import similarity


def _features(n=60, d=12, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def test_cka_of_a_representation_with_itself_is_one():
    x = _features()
    assert similarity.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling_only():
    x, y = _features(seed=0), _features(d=8, seed=1)
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 12)))
    before = similarity.linear_cka(x, y)
    assert similarity.linear_cka(x @ q, y) == pytest.approx(before, abs=1e-10)
    assert similarity.linear_cka(3.7 * x, 0.2 * y) == pytest.approx(before, abs=1e-10)
    stretch = np.diag(np.linspace(0.1, 10, 12))  # an arbitrary (non-orthogonal) linear map
    assert abs(similarity.linear_cka(x @ stretch, y) - before) > 1e-3
    assert similarity.linear_cka(x, x @ stretch) < 0.999


def test_unbiased_hsic_matches_its_definition_by_brute_force():
    """Song et al.'s estimator is a U-statistic over distinct quadruples (i, j, q, r):
    h = K_ij L_ij + K_ij L_qr - 2 K_ij L_iq (diagonals zeroed), averaged."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    k, m = x @ x.T, y @ y.T
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(7), 4):
        total += k[i, j] * m[i, j] + k[i, j] * m[q, r] - 2 * k[i, j] * m[i, q]
        count += 1
    assert similarity.unbiased_hsic(k, m) == pytest.approx(total / count, rel=1e-9)


def test_minibatch_cka_matches_the_full_batch_value():
    x, y = _features(n=40, seed=4), _features(n=40, d=5, seed=5)
    x[:, :5] += 2 * y  # related representations
    one = similarity.MinibatchCKA()
    one.update([x], [y])
    k, m = x @ x.T, y @ y.T
    full = similarity.unbiased_hsic(k, m) / math.sqrt(
        similarity.unbiased_hsic(k, k) * similarity.unbiased_hsic(m, m)
    )
    assert one.value()[0, 0] == pytest.approx(full, abs=1e-6)  # one minibatch = full batch
    # Many small minibatches estimate the same quantity as the (biased) full-batch CKA.
    big_x, big_y = _features(n=4000, seed=6), _features(n=4000, d=5, seed=7)
    big_x[:, :5] += 2 * big_y
    batched = similarity.MinibatchCKA()
    for start in range(0, 4000, 200):
        batched.update(
            [big_x[start : start + 200], big_y[start : start + 200]], [big_y[start : start + 200]]
        )
    value = batched.value()
    assert value.shape == (2, 1) and value[1, 0] == pytest.approx(1.0, abs=1e-9)
    assert value[0, 0] == pytest.approx(similarity.linear_cka(big_x, big_y), abs=0.01)


def test_the_diagonal_from_cached_grams_equals_the_full_matrixs_diagonal():
    xs = [_features(n=60, d=d, seed=10 + d) for d in (3, 8, 5)]
    ys = [
        x @ np.random.default_rng(d).normal(size=(x.shape[1], 4))
        + 0.5 * _features(n=60, d=4, seed=20 + d)
        for d, x in enumerate(xs)
    ]  # layer i related to layer i
    full, diagonal = similarity.MinibatchCKA(), similarity.MinibatchCKA(diagonal=True)
    grams_y = [[similarity.gram(y[s : s + 20]) for y in ys] for s in (0, 20, 40)]
    for batch, start in enumerate((0, 20, 40)):
        full.update([x[start : start + 20] for x in xs], [y[start : start + 20] for y in ys])
        diagonal.update_grams(
            [similarity.gram(x[start : start + 20]) for x in xs], grams_y[batch]
        )  # the second network's Grams, computed once
    assert full.value().shape == (3, 3) and diagonal.value().shape == (3,)
    np.testing.assert_allclose(diagonal.value(), np.diag(full.value()), rtol=1e-12)


def test_logme_evidence_is_the_bayesian_linear_models_marginal_likelihood():
    rng = np.random.default_rng(8)
    f = rng.normal(size=(30, 4))
    labels = rng.integers(0, 3, 30)
    score, per_class = similarity.logme(f, labels)
    for k, (alpha, beta, evidence) in zip(np.unique(labels), per_class):
        y = (labels == k).astype(float)
        cov = f @ f.T / alpha + np.eye(30) / beta  # y ~ N(0, F F^T / alpha + I / beta)
        sign, logdet = np.linalg.slogdet(cov)
        direct = -0.5 * (y @ np.linalg.solve(cov, y) + logdet + 30 * math.log(2 * math.pi))
        assert sign > 0 and evidence * 30 == pytest.approx(direct, rel=1e-8)
    assert score == pytest.approx(np.mean([e for *_, e in per_class]))
    # Also when there are more features than examples (zeros in F^T F's spectrum).
    wide = rng.normal(size=(10, 25))
    _, per_class = similarity.logme(wide, labels[:10])
    alpha, beta, evidence = per_class[0]
    y = (labels[:10] == np.unique(labels[:10])[0]).astype(float)
    cov = wide @ wide.T / alpha + np.eye(10) / beta
    direct = -0.5 * (
        y @ np.linalg.solve(cov, y) + np.linalg.slogdet(cov)[1] + 10 * math.log(2 * math.pi)
    )
    assert evidence * 10 == pytest.approx(direct, rel=1e-8)


def test_logme_ranks_features_that_determine_the_labels_above_random_ones():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 5, 300)
    informative = np.eye(5)[labels] @ rng.normal(size=(5, 16)) + 0.3 * rng.normal(size=(300, 16))
    noise = rng.normal(size=(300, 16))
    assert similarity.logme(informative, labels)[0] > similarity.logme(noise, labels)[0] + 0.1


def test_spearman():
    assert similarity.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert similarity.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert similarity.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9487, abs=1e-4)


def test_spearman_exact_p_value_counts_orderings():
    # 4 points in order: only the identity and its reverse reach |rho| = 1: 2 of 24.
    assert similarity.spearman_p_value([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 24)
    # 7 points with the last two swapped: rho = 1 - 6*2/336 = 0.964; the orderings with
    # |rho| >= that are the identity, the 6 adjacent swaps and their 7 reverses: 14/5040.
    p = similarity.spearman_p_value(range(7), [0, 1, 2, 3, 4, 6, 5])
    assert p == pytest.approx(14 / 5040)
    assert similarity.spearman_p_value(range(7), [3, 0, 6, 2, 5, 1, 4]) > 0.3  # unrelated
    with pytest.raises(ValueError, match="3..8 points"):
        similarity.spearman_p_value(range(9), range(9))


def test_cka_of_mismatched_images_is_the_null_and_sits_far_below_matched():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    y = x @ rng.normal(size=(16, 16)) + 0.3 * rng.normal(size=(200, 16))  # related
    batches = range(0, 200, 50)
    grams_x = [[similarity.gram(x[i : i + 50])] for i in batches]
    grams_y = [[similarity.gram(y[i : i + 50])] for i in batches]
    acc = similarity.MinibatchCKA(diagonal=True)
    for gx, gy in zip(grams_x, grams_y):
        acc.update_grams(gx, gy)
    matched = acc.value()[0]
    null = similarity.cka_null(grams_x, grams_y, permutations=30, seed=1)
    assert null.shape == (30, 1)
    assert matched > 0.5 and np.quantile(null, 0.95) < 0.1 < matched
    assert abs(null.mean()) < 0.05  # the unbiased estimator centres the null near 0


def test_principal_components_give_every_layer_one_dimension():
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(100, 512)) @ np.diag(np.linspace(3, 0.1, 512))
    reduced, other = similarity.principal_components(wide, [wide[:10]], dim=12)
    assert reduced.shape == (100, 12) and other.shape == (10, 12)
    assert np.allclose(reduced[:10], other)  # the same map, fitted on the first
    variances = reduced.var(axis=0)
    assert (np.diff(variances) <= 1e-9).all()  # leading components first
    narrow, _ = similarity.principal_components(wide[:, :6], [wide[:3, :6]], dim=12)
    assert narrow.shape == (100, 6)  # fewer dimensions than asked: all kept


def test_partial_correlation_asks_what_a_measure_adds_to_depth():
    n = np.arange(1, 8)
    grid = np.array([0.40, 0.39, 0.37, 0.33, 0.30, 0.20, 0.10])  # bends down at n = 6
    depth = -n
    assert similarity.spearman(depth, grid) == pytest.approx(1.0)  # depth ranks it fully
    assert similarity.partial_correlation(depth, grid, n) == pytest.approx(0.0, abs=1e-9)
    follows = [0.90, 0.88, 0.85, 0.80, 0.70, 0.40, 0.20]  # the same bend
    assert similarity.partial_correlation(follows, grid, n) > 0.9
    assert similarity.partial_correlation_p_value(follows, grid, n) < 0.05
    straight = 1.0 - 0.1 * n  # falls with depth and nothing else
    assert similarity.partial_correlation_p_value(straight, grid, n) == pytest.approx(1.0)
