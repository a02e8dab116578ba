"""Kernels: closed-form values, and GP draws whose empirical covariance matches the kernel."""

import numpy as np
import pytest

from llmflow.gp import posterior, sample_prior
from llmflow.kernels import HYPERPARAMETERS, KERNEL_NAMES, Kernel, covariances

X = np.linspace(-1.0, 1.0, 7)[:, None]
N_DRAWS = 6000
# Sampling error of a covariance entry is ~sqrt(2/N) ≈ 0.018 here; the max over 28 entries
# stays well below 0.08, while a length-scale 1.5x off moves some entry by more than 0.15.
TOL = 0.08


def kernel(name: str, lengthscale: float = 0.6) -> Kernel:
    return Kernel(name, lengthscale=lengthscale, variance=1.3, period=0.9, periodic_lengthscale=0.8)


def test_closed_form_values():
    r = np.array([[0.0], [0.6]])
    se = Kernel("se", lengthscale=0.6, variance=2.0)(r[:1], r)
    np.testing.assert_allclose(se, [[2.0, 2.0 * np.exp(-0.5)]])
    m52 = Kernel("matern52", lengthscale=0.6)(r[:1], r)[0, 1]
    s5 = np.sqrt(5.0)
    np.testing.assert_allclose(m52, (1 + s5 + 5 / 3) * np.exp(-s5))
    per = Kernel("periodic", period=0.6, periodic_lengthscale=0.5)
    np.testing.assert_allclose(per(r[:1], r)[0, 1], 1.0)  # one full period apart
    np.testing.assert_allclose(per(r[:1], r / 2)[0, 1], np.exp(-2.0 / 0.25))  # half a period
    wp = Kernel("weakly_periodic", lengthscale=0.6, period=0.6, periodic_lengthscale=0.5)
    np.testing.assert_allclose(wp(r[:1], r)[0, 1], np.exp(-0.5))


def test_multidimensional_inputs_use_euclidean_distance():
    x = np.array([[0.0, 0.0], [0.3, 0.4]])  # distance 0.5
    np.testing.assert_allclose(Kernel("se", lengthscale=0.5)(x, x)[0, 1], np.exp(-0.5))


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_empirical_covariance_matches_kernel(name):
    k = kernel(name)
    draws = sample_prior(k, X, noise_std=0.0, rng=np.random.default_rng(1), n_draws=N_DRAWS)
    emp = np.cov(draws, rowvar=False)
    assert np.abs(emp - k(X, X)).max() < TOL
    if name != "periodic":  # the periodic kernel has no SE length-scale
        wrong = kernel(name, lengthscale=0.6 * 1.5)
        assert np.abs(emp - wrong(X, X)).max() > TOL


def test_trend_term_is_the_covariance_of_a_random_slope():
    # f + b·x with b ~ N(0, s²): the draws' covariance is k + s² x xᵀ, which a stationary kernel
    # cannot be (it grows away from x = 0)
    k = Kernel("se", lengthscale=0.6, slope_variance=0.8)
    np.testing.assert_allclose(k(X, X), kernel("se")(X, X) / 1.3 + 0.8 * X @ X.T)
    draws = sample_prior(k, X, noise_std=0.0, rng=np.random.default_rng(3), n_draws=N_DRAWS)
    emp = np.cov(draws, rowvar=False)
    assert np.abs(emp - k(X, X)).max() < TOL
    assert np.abs(emp - Kernel("se", lengthscale=0.6)(X, X)).max() > 5 * TOL


def test_noise_adds_to_the_diagonal():
    k = kernel("se")
    draws = sample_prior(k, X, noise_std=0.5, rng=np.random.default_rng(2), n_draws=N_DRAWS)
    emp = np.cov(draws, rowvar=False)
    assert np.abs(emp - (k(X, X) + 0.25 * np.eye(len(X)))).max() < TOL


def test_sampler_survives_near_singular_covariance():
    x = np.linspace(0, 1, 200)[:, None]  # dense points, long length-scale: rank-deficient
    draws = sample_prior(Kernel("se", lengthscale=10.0), x, 0.0, np.random.default_rng(0), 3)
    assert np.isfinite(draws).all()


def test_posterior_interpolates_noise_free_context_and_matches_prior_far_away():
    k = Kernel("se", lengthscale=0.3)
    x_ctx = np.array([[0.0], [0.5]])
    y_ctx = np.array([1.0, -1.0])
    post = posterior(k, x_ctx, y_ctx, np.array([[0.0], [0.5], [50.0]]), noise_std=1e-4)
    np.testing.assert_allclose(post.mean[:2], y_ctx, atol=1e-3)
    assert abs(post.mean[2]) < 1e-6
    np.testing.assert_allclose(post.cov[2, 2], 1.0 + 1e-8, atol=1e-6)


def test_invalid_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="lengthscale"):
        Kernel("se", lengthscale=-1.0)
    with pytest.raises(ValueError, match="unknown kernel"):
        Kernel("rbf")
    with pytest.raises(ValueError, match="slope_variance"):
        Kernel("se", slope_variance=-0.1)


def test_a_kernel_read_back_from_its_record_is_the_same_kernel():
    k = Kernel("weakly_periodic", lengthscale=0.6, variance=1.3, period=0.4, periodic_lengthscale=0.8, slope_variance=0.5)
    record = {"noise_std": 0.1, **{name: np.float64(v) for name, v in k.hyperparameters().items()}}
    assert Kernel.from_record("weakly_periodic", record) == k
    assert set(k.hyperparameters()) == set(HYPERPARAMETERS)
    # a store written before trends existed: no slope_variance, so no trend
    old = {name: v for name, v in k.hyperparameters().items() if name != "slope_variance"}
    assert Kernel.from_record("weakly_periodic", old).slope_variance == 0.0


def test_covariances_of_many_kernels_equal_each_kernel_bit_for_bit():
    # the GP oracle's grid path (one formula per family over all members) against one call each
    rng = np.random.default_rng(3)
    kernels = [Kernel(name, lengthscale=rng.uniform(0.1, 2), variance=rng.uniform(0.5, 2), period=rng.uniform(0.2, 1),
                      periodic_lengthscale=rng.uniform(0.5, 2), slope_variance=rng.choice([0.0, rng.uniform(0, 2)]))
               for name in rng.permutation(KERNEL_NAMES * 5)]
    # length-scales whose square by Python's power and by numpy's x*x differ in the last bit
    kernels += [Kernel(name, lengthscale=0.4786618688802179, periodic_lengthscale=1.9072620013546644)
                for name in KERNEL_NAMES]
    for d in (1, 2):
        x1, x2 = rng.uniform(-2, 2, (7, d)), rng.uniform(-2, 2, (5, d))
        expected = np.stack([k(x1, x2) for k in kernels])
        np.testing.assert_array_equal(covariances(kernels, x1, x2), expected)
        np.testing.assert_array_equal(covariances(kernels, x1, x2, chunk=3), expected)
