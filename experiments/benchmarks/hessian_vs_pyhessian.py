"""jdl.hessian against PyHessian on the digits MLP: top-5 eigenvalues, trace, density, HVP cost.

Model: 64-128-128-10 with tanh (26,122 parameters), softmax cross-entropy
(mean), all 1,797 digits as one batch, float32; the same initial weights are
copied into a ``torch.nn.Sequential`` for PyHessian (``hessian(model,
criterion, data=(x, y), cuda=...)``). The weights are drawn on the CPU on every
backend, so a GPU run has the CPU run's model and dense reference. On a GPU,
torch and PyHessian run there too, and both sides compute in full float32 (no
TF32: ``jax_default_matmul_precision="highest"``, torch's TF32 switches off).

Reference ("dense"): ``jdl.hessian.hessian_matrix`` of the same model in
float64 (26,122^2 doubles = 5.5 GB), then

* the exact trace ``tr(H)`` and ``||H||_F^2`` (the first two spectral moments);
* its top-5 and bottom-5 eigenvalues by ARPACK (``scipy.sparse.linalg.eigsh``,
  tol 1e-10) on the dense float64 matrix. A full ``numpy.linalg.eigvalsh``
  of a 26,122^2 matrix takes about an hour on this 2-core machine
  (4,000^2 took 12 s; the cost grows as n^3), so it is optional
  (``--full-eigvalsh``); ARPACK on the explicit matrix is an independent
  solver of the same problem.

The reference is cached in ``results/hessian_vs_pyhessian_dense.npz`` (keyed
by a fingerprint of the weights); ``--recompute-dense`` rebuilds it.

Timings exclude compilation (reported separately: first call minus the
median of the warm calls) and are medians of ``--repeats`` runs. The CPU is
shared with other jobs: numbers are noisy.

Run: ``.venv/bin/python experiments/benchmarks/hessian_vs_pyhessian.py``.
Writes ``experiments/benchmarks/results/hessian_vs_pyhessian_cpu.json`` (``_gpu`` on a GPU).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # for the float64 dense reference only

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse.linalg as sla  # noqa: E402
import torch  # noqa: E402

from jdl import data, hessian, losses, nn  # noqa: E402
from jdl.hessian import operators  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TORCH_DEVICE = torch.device(
    "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu")
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
MODEL = nn.serial(nn.dense(128), nn.activation("tanh"), nn.dense(128), nn.activation("tanh"),
                  nn.dense(10))


def loss_fn(params, batch):
    logits, _ = MODEL.apply(params, batch[0])
    return losses.softmax_cross_entropy(logits, batch[1])


def torch_model(params) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 10))
    with torch.no_grad():
        for index, name in ((0, "0_dense"), (2, "2_dense"), (4, "4_dense")):
            model[index].weight.copy_(torch.from_numpy(np.asarray(params[name]["w"]).T.copy()))
            model[index].bias.copy_(torch.from_numpy(np.asarray(params[name]["b"]).copy()))
    return model.to(TORCH_DEVICE)


def torch_timed(fn):
    """``(seconds, fn())``, waiting for torch's queued GPU work."""
    start = time.perf_counter()
    result = fn()
    if TORCH_DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def timed(fn, repeats: int):
    """``(first_call_seconds, median_warm_seconds, result of the last call)``."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, float(np.median(times)), result


def _arpack(matrix: np.ndarray, which: str) -> np.ndarray:
    """Five extreme eigenvalues (ascending) by ARPACK; NaN for any that did not converge."""
    try:
        values = sla.eigsh(matrix, k=5, which=which, tol=1e-10, ncv=40, maxiter=100,
                           return_eigenvectors=False)
    except sla.ArpackNoConvergence as err:
        values = np.concatenate([err.eigenvalues, np.full(5 - len(err.eigenvalues), np.nan)])
    return np.sort(values)


def _flops(fn, *args) -> float:
    """XLA's floating-point operation count of the compiled ``fn(*args)``."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def dense_reference(params, x, y, path: Path, recompute: bool, full: bool) -> dict:
    fingerprint = float(sum(np.abs(np.asarray(p, np.float64)).sum()
                            for p in jax.tree.leaves(params)))
    if path.exists() and not recompute:
        cached = dict(np.load(path))
        if float(cached["fingerprint"]) == fingerprint and (not full or "all" in cached):
            print(f"dense reference: cached in {path}")
            return {k: v for k, v in cached.items()}
    params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    batch64 = (jnp.asarray(x, jnp.float64), y)
    print("dense reference: building the 26,122^2 float64 Hessian (minutes) ...", flush=True)
    start = time.perf_counter()
    matrix = np.asarray(hessian.hessian_matrix(loss_fn, params64, batch64))
    build = time.perf_counter() - start
    flat = matrix.reshape(-1)
    ref = {"fingerprint": fingerprint, "n": matrix.shape[0], "build_seconds": build,
           "trace": float(np.trace(matrix)), "frobenius_squared": float(np.dot(flat, flat)),
           "asymmetry": float(np.max(np.abs(matrix[:200, :] - matrix[:, :200].T)))}
    print(f"  built in {build:.0f} s; ARPACK top-5 / bottom-5 ...", flush=True)
    start = time.perf_counter()
    ref["top5"] = _arpack(matrix, "LA")[::-1]
    ref["arpack_top_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    ref["bottom5"] = _arpack(matrix, "SA")
    ref["arpack_bottom_seconds"] = time.perf_counter() - start
    if full:
        start = time.perf_counter()
        ref["all"] = np.linalg.eigvalsh(matrix)
        ref["eigvalsh_seconds"] = time.perf_counter() - start
    del matrix, flat
    gc.collect()
    np.savez(path, **ref)
    return ref


def relative_errors(values, reference) -> list[float]:
    values, reference = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    return (np.abs(values - reference) / np.abs(reference)).tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm repeats for jdl")
    parser.add_argument("--torch-repeats", type=int, default=3, help="repeats for PyHessian")
    parser.add_argument("--trace-samples", type=int, default=100)
    parser.add_argument("--recompute-dense", action="store_true")
    parser.add_argument("--full-eigvalsh", action="store_true",
                        help="also the full numpy eigvalsh of the dense Hessian (about an hour)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    backend = jax.default_backend()
    out = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "jax_backend": backend, "jax": jax.__version__,
                       "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                       "device": jax.devices()[0].device_kind, "torch_device": str(TORCH_DEVICE),
                       "note": "shared 2-core CPU: numbers are noisy" if backend == "cpu"
                       else "float32 without TF32 on both sides"}}

    ds = data.load("digits", split=(1.0, 0.0, 0.0))
    x, y = ds.x_train, ds.y_train  # (1797, 64) float32, (1797,) int32
    with jax.default_device(jax.devices("cpu")[0]):  # the same weights on every backend
        _, params, _ = MODEL.init(jax.random.key(0), (-1, 64), jnp.float32)
    params = jax.device_put(params, jax.devices()[0])
    n = operators.param_count(params)
    model = torch_model(params)
    xt = torch.from_numpy(np.array(x)).to(TORCH_DEVICE)
    yt = torch.from_numpy(np.array(y)).long().to(TORCH_DEVICE)
    criterion = torch.nn.CrossEntropyLoss()
    loss_jdl = float(loss_fn(params, (x, y)))
    with torch.no_grad():
        loss_torch = float(criterion(model(xt), yt))
    print(f"model: {n} parameters; loss jdl {loss_jdl:.7f}, torch {loss_torch:.7f}")
    out["model"] = {"parameters": n, "examples": int(x.shape[0]), "loss_jdl": loss_jdl,
                    "loss_torch": loss_torch}

    ref = dense_reference(params, x, y, RESULTS / "hessian_vs_pyhessian_dense.npz",
                          args.recompute_dense, args.full_eigvalsh)
    out["dense"] = {k: (np.asarray(v).tolist() if k != "all" else None) for k, v in ref.items()
                    if k != "all"}
    top5 = np.asarray(ref["top5"])
    print(f"dense: top-5 {np.round(top5, 6)}, bottom-5 {np.round(ref['bottom5'], 6)}, "
          f"trace {float(ref['trace']):.6f}")

    # --- HVP against gradient (jitted, float32) -------------------------------------------
    batch = operators.prepare_data("benchmark", (x, y))
    op = operators.Operator(loss_fn)
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
    grad = jax.jit(jax.grad(loss_fn))
    _, t_grad, _ = timed(lambda: grad(params, (x, y)), 20)
    _, t_hvp, _ = timed(lambda: operators._hvp(op, params, batch, v), 20)
    _, t_hvp_public, _ = timed(lambda: hessian.hvp(loss_fn, params, (x, y), v), 20)
    flops_grad = _flops(grad, params, (x, y))
    flops_hvp = _flops(functools.partial(operators._hvp, op), params, batch, v)
    out["hvp"] = {"grad_seconds": t_grad, "hvp_seconds": t_hvp,
                  "hvp_public_seconds": t_hvp_public, "hvp_over_grad": t_hvp / t_grad,
                  "xla_gflops_grad": flops_grad / 1e9, "xla_gflops_hvp": flops_hvp / 1e9,
                  "flop_ratio": flops_hvp / flops_grad}
    print(f"HVP {t_hvp * 1e3:.2f} ms (public hvp with checks {t_hvp_public * 1e3:.2f} ms), "
          f"gradient {t_grad * 1e3:.2f} ms: ratio {t_hvp / t_grad:.2f} (goal <= 2); "
          f"XLA flop ratio {flops_hvp / flops_grad:.2f}")

    # --- top-5 eigenvalues ----------------------------------------------------------------
    key = jax.random.key(2)
    jdl_eig = {}
    # The last is PyHessian's own setting: no check for repeated eigenvalues, a loose
    # tolerance (its power iteration stops at a 1e-3 relative change); jdl's first
    # 20 Lanczos steps are then enough and still far more accurate than PyHessian
    for label, check, tol in (("default", True, 1e-4), ("no_multiplicity_check", False, 1e-4),
                              ("loose_tol_no_check", False, 1e-2)):
        first, warm, eig = timed(lambda: hessian.eigenvalues(
            loss_fn, params, (x, y), k=5, key=key, multiplicity_check=check, tol=tol),
            args.repeats)
        jdl_eig[label] = {"seconds": warm, "compile_seconds": max(first - warm, 0.0),
                          "values": np.asarray(eig.values).tolist(),
                          "relative_errors": relative_errors(eig.values, top5),
                          "residuals": np.asarray(eig.residuals).tolist(),
                          "num_matvecs": eig.num_matvecs}
        worst = max(jdl_eig[label]["relative_errors"])
        print(f"jdl top-5 ({label}): {warm:.3f} s (+{first - warm:.2f} s compile), "
              f"{eig.num_matvecs} HVPs, max rel. error {worst:.2e}")
    first, warm, both = timed(lambda: hessian.eigenvalues(
        loss_fn, params, (x, y), k=5, which="both", key=key), 1)
    jdl_eig["both"] = {"seconds": warm, "values": np.asarray(both.values).tolist(),
                       "relative_errors": relative_errors(
                           both.values, np.concatenate([top5, ref["bottom5"]])),
                       "num_matvecs": both.num_matvecs}
    print(f"jdl top-5 and bottom-5: {warm:.3f} s, max rel. error "
          f"{max(jdl_eig['both']['relative_errors']):.2e}")

    torch.manual_seed(0)
    start = time.perf_counter()
    from pyhessian import hessian as pyhessian

    ph = pyhessian(model, criterion, data=(xt, yt), cuda=TORCH_DEVICE.type == "cuda")
    t_setup = time.perf_counter() - start
    times, values = [], None
    for _ in range(args.torch_repeats):
        seconds, (values, _) = torch_timed(lambda: ph.eigenvalues(top_n=5))
        times.append(seconds)
    ph_eig = {"seconds": float(np.median(times)), "setup_seconds": t_setup, "values": values,
              "relative_errors": relative_errors(values, top5)}
    print(f"PyHessian top-5: {ph_eig['seconds']:.2f} s (setup {t_setup:.2f} s), max rel. "
          f"error {max(ph_eig['relative_errors']):.2e}")
    out["top5"] = {"jdl": jdl_eig, "pyhessian": ph_eig,
                   "speedup": ph_eig["seconds"] / jdl_eig["default"]["seconds"],
                   "speedup_loose_tol_no_check":
                       ph_eig["seconds"] / jdl_eig["loose_tol_no_check"]["seconds"],
                   "jdl_more_accurate": max(jdl_eig["default"]["relative_errors"])
                   < max(ph_eig["relative_errors"])}

    # --- trace ----------------------------------------------------------------------------
    m = args.trace_samples
    exact = float(ref["trace"])
    times, samples = [], None
    for _ in range(args.torch_repeats):
        seconds, samples = torch_timed(lambda: ph.trace(maxIter=m, tol=float("-inf")))
        times.append(seconds)  # exactly m samples
    samples = np.asarray(samples)
    ph_trace = {"seconds": float(np.median(times)), "num_samples": int(samples.size),
                "estimate": float(samples.mean()),
                "stderr": float(samples.std(ddof=1) / np.sqrt(samples.size))}
    seconds, default_samples = torch_timed(ph.trace)
    default_samples = np.asarray(default_samples)
    ph_trace["default_call"] = {"seconds": seconds,
                                "num_samples": int(default_samples.size),
                                "estimate": float(default_samples.mean())}
    jdl_trace = {}
    # Same estimator, same number of Rademacher samples: equal standard error in
    # expectation. Then Hutchinson stopped at PyHessian's relative standard error, and
    # Hutch++ on the same budget (it wins only when a few eigenvalues dominate ||H||_F).
    for label, kwargs in (("hutchinson", {}), ("hutch++", {"method": "hutch++"}),
                          ("hutchinson_at_pyhessian_stderr",
                           {"rtol": ph_trace["stderr"] / abs(ph_trace["estimate"])})):
        budget = 10 * m if "rtol" in kwargs else m
        first, warm, est = timed(lambda: hessian.trace(
            loss_fn, params, (x, y), key=key, num_samples=budget, **kwargs), args.repeats)
        jdl_trace[label] = {"seconds": warm, "compile_seconds": max(first - warm, 0.0),
                            "estimate": est.estimate, "stderr": est.stderr,
                            "num_matvecs": est.num_matvecs}
    for label, r in (("pyhessian", ph_trace), *jdl_trace.items()):
        print(f"trace {label}: {r['estimate']:.4f} +- {r['stderr']:.4f} (exact {exact:.4f}) "
              f"in {r['seconds']:.3f} s")
    at_stderr = jdl_trace["hutchinson_at_pyhessian_stderr"]
    out["trace"] = {"exact": exact, "jdl": jdl_trace, "pyhessian": ph_trace,
                    "speedup_same_samples":
                        ph_trace["seconds"] / jdl_trace["hutchinson"]["seconds"],
                    "speedup_at_pyhessian_stderr": ph_trace["seconds"] / at_stderr["seconds"]}

    # --- density --------------------------------------------------------------------------
    first, warm, dens = timed(lambda: hessian.spectral_density(
        loss_fn, params, (x, y), key=key, num_steps=100, num_runs=1), 1)
    first10, warm10, dens10 = timed(lambda: hessian.spectral_density(
        loss_fn, params, (x, y), key=key, num_steps=80, num_runs=10), 1)

    def moments(d):
        """Mean over runs of each run's quadrature moment, and its standard error."""
        per_run = [np.sum(d.weights * d.nodes ** p, axis=1) for p in (1, 2)]
        stderr = [float(r.std(ddof=1) / np.sqrt(r.size)) if r.size > 1 else None
                  for r in per_run]
        return {"moments": [float(r.mean()) for r in per_run], "stderr": stderr}

    exact_moments = [exact / n, float(ref["frobenius_squared"]) / n]
    jdl_density = {}
    for label, (t_first, t_warm, d) in (("one_run_100_steps", (first, warm, dens)),
                                         ("ten_runs_80_steps", (first10, warm10, dens10))):
        jdl_density[label] = {"seconds": t_warm, "compile_seconds": max(t_first - t_warm, 0.0),
                              **moments(d),
                              "extremes": [float(d.nodes.min()), float(d.nodes.max())]}
    hessian.plot_spectral_density(dens10, str(RESULTS / "hessian_density_digits_mlp.png"),
                                  title="digits MLP 64-128-128-10 at init: Hessian density")
    try:
        start = time.perf_counter()
        ph.density(iter=100, n_v=1)
        ph_density = {"ran": True, "seconds": time.perf_counter() - start}
    except Exception as err:  # noqa: BLE001 - report whatever PyHessian raises
        ph_density = {"ran": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
    out["density"] = {"exact_moments": exact_moments, "jdl": jdl_density, "pyhessian": ph_density}
    print(f"density: exact moments {exact_moments}; jdl 1 run {jdl_density['one_run_100_steps']}"
          f"; jdl 10 runs {jdl_density['ten_runs_80_steps']}; PyHessian {ph_density}")

    goals = {
        "top5_at_least_20x_faster": out["top5"]["speedup"] >= 20,
        "top5_more_accurate": out["top5"]["jdl_more_accurate"],
        "trace_at_least_10x_faster_same_samples": out["trace"]["speedup_same_samples"] >= 10,
        "hvp_at_most_2x_gradient": out["hvp"]["hvp_over_grad"] <= 2,
    }
    out["goals"] = goals
    print(f"top-5 speedup {out['top5']['speedup']:.1f}x (PyHessian's setting: no "
          f"multiplicity check, tol 1e-2: {out['top5']['speedup_loose_tol_no_check']:.1f}x), "
          f"trace speedup (same samples) "
          f"{out['trace']['speedup_same_samples']:.1f}x, at PyHessian's stderr "
          f"{out['trace']['speedup_at_pyhessian_stderr']:.1f}x, HVP/grad "
          f"{out['hvp']['hvp_over_grad']:.2f}")
    print("goals:", goals)
    suffix = "gpu" if backend == "gpu" else "cpu"
    path = RESULTS / f"hessian_vs_pyhessian_{suffix}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
