import numpy as np
import pytest

from silos.alignment import AffineMap, augment, fit_quality


def noisy_affine(n=400, d_in=20, d_out=7, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d_in, d_out))
    b = rng.normal(size=d_out)
    X = rng.normal(size=(n, d_in))
    Y = X @ W + b + noise * rng.normal(size=(n, d_out))
    return X, Y, W, b


def test_recovers_known_affine_map_with_different_dims():
    X, Y, W, b = noisy_affine()
    fitted = AffineMap(alpha=1e-6).fit(X, Y)
    assert fitted.coef_.shape == (20, 7) and fitted.intercept_.shape == (7,)
    np.testing.assert_allclose(fitted.coef_, W, atol=5e-3)
    np.testing.assert_allclose(fitted.intercept_, b, atol=5e-3)
    np.testing.assert_allclose(fitted.transform(X[:5]), X[:5] @ W + b, atol=0.05)


def test_fit_from_stats_equals_fit():
    X, Y, *_ = noisy_affine(d_in=9, d_out=13)
    Xa = augment(X)
    a = AffineMap(alpha=0.5).fit(X, Y)
    b = AffineMap(alpha=0.5).fit_from_stats(Xa.T @ Xa, Xa.T @ Y, n_samples=len(X))
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.intercept_, b.intercept_, rtol=1e-12, atol=1e-12)


def test_intercept_is_not_penalised():
    # With a huge alpha the slope vanishes but the intercept still equals the mean of Y.
    X, Y, *_ = noisy_affine()
    fitted = AffineMap(alpha=1e9).fit(X, Y)
    assert np.abs(fitted.coef_).max() < 1e-4
    np.testing.assert_allclose(fitted.intercept_, Y.mean(axis=0), atol=1e-3)


def test_save_load_round_trip(tmp_path):
    X, Y, *_ = noisy_affine()
    fitted = AffineMap(alpha=0.1).fit(X, Y)
    fitted.save(tmp_path / "map")
    assert (tmp_path / "map").is_file()  # one file: replaced atomically (tests/test_saving.py)
    loaded = AffineMap.load(tmp_path / "map")
    assert loaded.alpha == 0.1 and loaded.n_samples_ == len(X)
    np.testing.assert_array_equal(loaded.transform(X), fitted.transform(X))


def test_fit_quality_matches_direct_r2():
    X, Y, *_ = noisy_affine(noise=0.5, seed=3)
    fitted = AffineMap(alpha=1.0).fit(X[:300], Y[:300])
    Xv, Yv = X[300:], Y[300:]
    pred = fitted.transform(Xv)
    direct = 1 - ((pred - Yv) ** 2).sum() / ((Yv - Yv.mean(0)) ** 2).sum()
    Xa = augment(Xv)
    W = np.vstack([fitted.coef_, fitted.intercept_])
    r2 = fit_quality(W, xtx=Xa.T @ Xa, xty=Xa.T @ Yv, y_sq_sum=float((Yv**2).sum()),
                     n_samples=len(Xv))
    assert r2 == pytest.approx(direct, rel=1e-10)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        AffineMap().fit(np.zeros((5, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError):
        AffineMap(alpha=-1).fit(np.ones((5, 3)), np.ones((5, 2)))
    fitted = AffineMap().fit(np.random.default_rng(0).normal(size=(10, 3)), np.ones((10, 2)))
    with pytest.raises(ValueError):
        fitted.transform(np.ones((2, 4)))
