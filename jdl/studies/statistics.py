"""Studies of the notes' statistics identities (Optimization section, the formulas)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdl import data
from jdl.studies.registry import CAVEAT, FAILS, HOLDS, Finding, study

SECTION = "Optimization (statistics)"
EXACT = 1e-10  # relative error for an identity checked in float64


def _features(name: str, key) -> np.ndarray:
    ds = data.load(name, key=key, split=(1.0, 0.0, 0.0), dtype=jnp.float64)
    return np.asarray(ds.x_train)


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(b), 1e-300))


@study("stat.variance-def", SECTION,
       "Variance(x) = E[(x-E(x))(x-E(x))^T]; Variance is expectation of covariance matrix "
       "given the mean")
def variance_definition(ctx, dataset="wine"):
    """The outer-product formula against numpy's covariance on real data."""
    x = _features(dataset, ctx.key("stat.variance-def"))
    centred = x - x.mean(0)
    by_formula = np.einsum("ni,nj->ij", centred, centred) / x.shape[0]
    err = _rel(by_formula, np.cov(x.T, bias=True))
    return Finding(
        verdict=HOLDS if err < EXACT else FAILS,
        summary=f"relative error against np.cov {err:.1e}",
        method=f"{dataset} ({x.shape[0]} x {x.shape[1]}): the mean of the outer products of the "
               "centred rows against numpy's (biased) covariance, float64.",
        numbers={"relative_error": err, "n": x.shape[0], "features": x.shape[1]},
        threshold=f"holds if the relative error is below {EXACT:g}",
        caveat="" if err < EXACT else "the formula disagrees with the covariance")


@study("stat.second-moment", SECTION, "E[x x^T] = sigma^2 I + mu mu^T = Var(x) + E(x)^2")
def second_moment(ctx, dataset="wine", synthetic_isotropic=False):
    """E[xx^T] against Sigma + mu mu^T (always) and sigma^2 I + mu mu^T (isotropic data only)."""
    key = ctx.key("stat.second-moment")
    if synthetic_isotropic:
        x = np.asarray(2.0 + 0.7 * jax.random.normal(key, (200_000, 5), jnp.float64))
        dataset = "isotropic Gaussian"
    else:
        x = _features(dataset, key)
    mu = x.mean(0)
    second = x.T @ x / x.shape[0]
    cov = np.cov(x.T, bias=True)
    sigma2 = float(np.trace(cov) / x.shape[1])
    err_general = _rel(second, cov + np.outer(mu, mu))
    err_isotropic = _rel(second, sigma2 * np.eye(x.shape[1]) + np.outer(mu, mu))
    general_ok, isotropic_ok = err_general < EXACT, err_isotropic < 0.01
    verdict = HOLDS if general_ok and isotropic_ok else CAVEAT if general_ok else FAILS
    return Finding(
        verdict=verdict,
        summary=f"Var(x) + mu mu^T: error {err_general:.1e}; sigma^2 I + mu mu^T: error "
                f"{err_isotropic:.2g}",
        method=f"{dataset} ({x.shape[0]} x {x.shape[1]}): the empirical second moment against "
               "the covariance plus the outer mean, and against the isotropic form with "
               "sigma^2 the mean feature variance.",
        numbers={"relative_error_general": err_general,
                 "relative_error_isotropic": err_isotropic, "mean_variance": sigma2},
        threshold=f"holds if the general form is exact (< {EXACT:g}) and the sigma^2 I form is "
                  "within 1%; caveat if only the general form holds",
        caveat="" if verdict == HOLDS else
        "E[xx^T] = Var(x) + mu mu^T always; it equals sigma^2 I + mu mu^T only when the "
        "features are uncorrelated with equal variance (isotropic), which real data are not.")


@study("stat.eigvec-orthogonal", SECTION, "All eigenvectors are aligned orthogonal to each other")
def eigenvectors_orthogonal(ctx, dataset="digits"):
    """Covariance (symmetric) eigenvectors against those of a non-symmetric matrix."""
    key = ctx.key("stat.eigvec-orthogonal")
    x = _features(dataset, key)
    _, v = np.linalg.eigh(np.cov(x.T, bias=True))
    err_sym = float(np.abs(v.T @ v - np.eye(v.shape[1])).max())
    a = np.asarray(jax.random.normal(key, (8, 8), jnp.float64))
    _, w = np.linalg.eig(a)
    w = w / np.linalg.norm(w, axis=0)
    gram = np.abs(w.conj().T @ w) - np.eye(8)
    err_general = float(np.abs(gram).max())
    sym_ok, general_ok = err_sym < 1e-8, err_general < 1e-8
    verdict = HOLDS if sym_ok and general_ok else CAVEAT if sym_ok else FAILS
    return Finding(
        verdict=verdict,
        summary=f"covariance: max |V^T V - I| = {err_sym:.1e}; random 8x8 matrix: largest "
                f"|cos| between eigenvectors {err_general:.2f}",
        method=f"eigenvectors of the {dataset} covariance ({x.shape[1]}x{x.shape[1]}, "
               "symmetric) and of a random Gaussian 8x8 matrix (not symmetric).",
        numbers={"symmetric_orthogonality_error": err_sym,
                 "nonsymmetric_max_cosine": err_general},
        threshold="holds if both sets are orthonormal to 1e-8; caveat if only the symmetric one is",
        caveat="" if verdict == HOLDS else
        "True for symmetric matrices (covariances, Hessians: the spectral theorem); a general "
        "matrix has non-orthogonal eigenvectors.")


def _product_moments(x, y):
    return {"var_xy": float(np.var(x * y)),
            "formula": float(x.mean() ** 2 * y.var() + y.mean() ** 2 * x.var()
                             + x.var() * y.var()),
            "mean_xy": float((x * y).mean()), "mean_x_mean_y": float(x.mean() * y.mean())}


def _correlated_pair(dataset, key):
    """The two most correlated features of a dataset."""
    x = _features(dataset, key)
    corr = np.corrcoef(x.T) - np.eye(x.shape[1])
    i, j = np.unravel_index(np.nanargmax(np.abs(corr)), corr.shape)
    return x[:, i], x[:, j], float(corr[i, j])


@study("stat.var-product", SECTION,
       "Variance(XY) = E(X)^2 Var(Y) + E(Y)^2 Var(X) + Var(Y) Var(X)")
def variance_of_product(ctx, dataset="wine", n=None):
    """Independent samples (formula exact in expectation) against correlated real features."""
    key = ctx.key("stat.var-product")
    n = n or ctx.pick(20_000, 400_000, 2_000_000)
    kx, ky = jax.random.split(key)
    xi = np.asarray(1.0 + jax.random.normal(kx, (n,), jnp.float64))
    yi = np.asarray(2.0 + 0.5 * jax.random.exponential(ky, (n,), jnp.float64))
    ind = _product_moments(xi, yi)
    err_ind = abs(ind["var_xy"] - ind["formula"]) / ind["formula"]
    xr, yr, rho = _correlated_pair(dataset, key)
    real = _product_moments(xr, yr)
    err_real = abs(real["var_xy"] - real["formula"]) / real["formula"]
    tol = 10 / np.sqrt(n)
    ind_ok, real_ok = err_ind < tol, err_real < 0.05
    verdict = HOLDS if ind_ok and real_ok else CAVEAT if ind_ok else FAILS
    return Finding(
        verdict=verdict,
        summary=f"independent: relative error {err_ind:.1e}; correlated {dataset} features "
                f"(rho={rho:.2f}): {err_real:.2f}",
        method=f"{n} independent samples X ~ N(1,1), Y ~ 2 + Exp(2), and the two most correlated "
               f"features of {dataset}; the sample variance of XY against the formula.",
        numbers={"independent": ind, "relative_error_independent": err_ind,
                 "correlated": real, "relative_error_correlated": err_real, "correlation": rho},
        threshold=f"independent case within {tol:.1e} (10/sqrt(n)); holds if correlated data "
                  "also within 5%, caveat otherwise",
        caveat="" if verdict == HOLDS else
        "Exact only for independent X and Y; correlated variables add covariance terms.")


@study("stat.mean-product", SECTION, "E(XY) = E(X)E(Y)")
def mean_of_product(ctx, dataset="wine", n=None):
    """E[XY] - E[X]E[Y] = Cov(X, Y): zero only for uncorrelated variables."""
    key = ctx.key("stat.mean-product")
    n = n or ctx.pick(20_000, 400_000, 2_000_000)
    kx, ky = jax.random.split(key)
    xi = np.asarray(1.0 + jax.random.normal(kx, (n,), jnp.float64))
    yi = np.asarray(3.0 + jax.random.normal(ky, (n,), jnp.float64))
    ind = _product_moments(xi, yi)
    gap_ind = abs(ind["mean_xy"] - ind["mean_x_mean_y"])
    xr, yr, rho = _correlated_pair(dataset, key)
    real = _product_moments(xr, yr)
    gap_real = abs(real["mean_xy"] - real["mean_x_mean_y"])
    cov_real = float(np.cov(xr, yr, bias=True)[0, 1])
    scale = float(np.std(xr) * np.std(yr))
    ind_ok = gap_ind < 10 / np.sqrt(n)
    real_ok = gap_real / scale < 0.05
    verdict = HOLDS if ind_ok and real_ok else CAVEAT if ind_ok else FAILS
    return Finding(
        verdict=verdict,
        summary=f"independent: gap {gap_ind:.1e}; correlated {dataset} features: gap "
                f"{gap_real:.4g} = Cov {cov_real:.4g} ({gap_real / scale:.2f} std x std)",
        method=f"{n} independent Gaussian samples and the two most correlated features of "
               f"{dataset}; E[XY] against E[X]E[Y].",
        numbers={"gap_independent": gap_ind, "gap_correlated": gap_real,
                 "covariance_correlated": cov_real, "correlation": rho},
        threshold="independent gap below 10/sqrt(n); holds if the correlated gap is also below "
                  "5% of std(X) std(Y), caveat otherwise",
        caveat="" if verdict == HOLDS else
        "E[XY] = E[X]E[Y] + Cov(X, Y): the product rule needs uncorrelated (e.g. independent) "
        "variables.")


@study("stat.sum-expectation", SECTION, "E[sum Y^(i)] = sum E[Y^(i)] = n E[Y^(i)]")
def expectation_of_sum(ctx, dataset="digits", features=None):
    """Linearity (always) and n E[Y] (identically distributed terms only), on pixel sums.

    ``features`` ``(n, d)`` replaces the dataset when given.
    """
    x = _features(dataset, ctx.key("stat.sum-expectation")) if features is None else features
    dataset = dataset if features is None else "given features"
    sums = x.sum(1)
    lhs = float(sums.mean())
    linear = float(x.mean(0).sum())
    n_times_first = float(x.shape[1] * x[:, 0].mean())
    n_times_average = float(x.shape[1] * x.mean())
    err_linear = abs(lhs - linear) / abs(lhs)
    err_first = abs(lhs - n_times_first) / abs(lhs)
    linear_ok = err_linear < EXACT
    iid_ok = err_first < 0.01
    verdict = HOLDS if linear_ok and iid_ok else CAVEAT if linear_ok else FAILS
    return Finding(
        verdict=verdict,
        summary=f"linearity error {err_linear:.1e}; n E[Y^(1)] off by {err_first:.0%}",
        method=f"{dataset}: Y^(i) the i-th feature; the mean row sum against the sum of feature "
               "means and against n times the first feature's mean.",
        numbers={"mean_of_sum": lhs, "sum_of_means": linear, "n_times_first_mean": n_times_first,
                 "n_times_average_mean": n_times_average, "relative_error_linearity": err_linear,
                 "relative_error_n_times": err_first},
        threshold=f"linearity exact (< {EXACT:g}); holds if n E[Y^(1)] is within 1%, caveat "
                  "otherwise",
        caveat="" if verdict == HOLDS else
        "Linearity of expectation always holds; the step to n E[Y] needs identically "
        "distributed terms (e.g. i.i.d. weights-times-inputs in the variance argument).")


@study("stat.tanh-linear", SECTION,
       "Tanh is approximately linear around x=0 i.e Var(tanh) = Var(z)")
def tanh_linear(ctx, stds=(0.05, 0.1, 0.3, 0.5, 1.0, 2.0)):
    """Var(tanh z) / Var(z) for z ~ N(0, s^2), by Monte Carlo."""
    n = ctx.pick(50_000, 1_000_000, 4_000_000)
    z = np.asarray(jax.random.normal(ctx.key("stat.tanh-linear"), (n,), jnp.float64))
    ratios = [float(np.var(np.tanh(s * z)) / np.var(s * z)) for s in stds]
    within = [s for s, r in zip(stds, ratios) if abs(1 - r) < 0.05]
    largest_ok = max(within) if within else 0.0
    all_ok = len(within) == len(stds)
    verdict = HOLDS if all_ok else CAVEAT if within else FAILS

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.semilogx(stds, ratios, "o-")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhspan(0.95, 1.05, color="green", alpha=0.15, label="within 5%")
    ax.set_xlabel("std of z")
    ax.set_ylabel("Var(tanh z) / Var(z)")
    ax.legend()
    figure = ctx.save_figure(fig, "stat_tanh_linear")
    return Finding(
        verdict=verdict,
        summary=f"Var(tanh z)/Var(z) within 5% of 1 up to std {largest_ok}; "
                f"{ratios[-2]:.2f} at std 1",
        method=f"{n} samples of z ~ N(0, s^2) for s in {list(stds)}.",
        numbers={"stds": list(stds), "variance_ratios": ratios},
        threshold="holds if every ratio is within 5% of 1; caveat if only the small ones are",
        caveat="" if verdict == HOLDS else
        f"Only for small pre-activations (std <= {largest_ok}); at unit variance tanh shrinks "
        "the variance markedly, which is why LeCun's scaled tanh 1.7159 tanh(2x/3) is used.",
        figures=[figure])
