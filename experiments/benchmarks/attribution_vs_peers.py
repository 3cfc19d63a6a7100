"""jdl attribution against captum, shap and zennit on the same models, inputs and budgets.

Shapley values: one MLP (10 -> 64 -> 64 -> 1, tanh) with the same float32
weights in JAX and PyTorch, on standardised breast_cancer rows (its first 10
features, so exact Shapley values are computable: 2^10 coalitions), one
baseline (the training mean). jdl (permutation, antithetic), captum
``ShapleyValueSampling`` and shap ``PermutationExplainer`` get the same number
of model evaluations per instance; we report model rows per second (rows
counted by wrapping the torch models; jdl's count is analytic), the RMSE
against exact values, and jdl's throughput against the jitted model's own
forward pass on the same number of rows (the physical limit of the method).

LRP: a small CNN on the digits images (conv8-relu-maxpool-conv16-relu-
flatten-dense10) with the same weights, zennit's ``EpsilonGammaBox(0, 1)``
against ``jdl.attribution.epsilon_gamma_box(0, 1)``: relevances compared in
float64, throughput (images per second) in float32. torch runs its kernels on
all cores; jdl's small per-image kernels run on one, so jdl is also timed
with the batch sharded over the cores, each made a JAX device (this script
sets ``--xla_force_host_platform_device_count`` to the core count).

On a GPU, torch (captum, shap's model calls, zennit's timed runs) runs there
too, and both sides compute in full float32 (no TF32); the float64 relevance
comparison stays on the CPU.

Run:  .venv/bin/python experiments/benchmarks/attribution_vs_peers.py [--quick] [--instances N]
Writes experiments/benchmarks/results/attribution_vs_peers_<platform>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={os.cpu_count()}")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from jax import lax  # noqa: E402
from jax.tree_util import Partial  # noqa: E402

from jdl import attribution, data, nn  # noqa: E402
from jdl.parallel import data_mesh, replicate, shard_batch  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TORCH_DEVICE = torch.device(
    "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu")
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
CLOCKS = ("wall", "cpu")
PAUSE = 0.05


def _timed(fns: dict, repeats: int) -> dict:
    """Median seconds of each ``fn()`` by the wall clock and by this process's CPU time.

    The functions run in turn, ``repeats`` rounds, so that jdl and its peer
    see the same load on a noisy machine, each after a pause of ``PAUSE``
    seconds so that neither runs while the other's worker threads still spin.
    The CPU time (all threads) is the steadier number on a machine shared
    with other jobs; on an idle machine with every core busy the two agree up
    to the number of cores.
    """
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(PAUSE)
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])}
            for name in fns}


def _rates(count: float, seconds: dict) -> dict:
    return {clock: count / seconds[clock] for clock in CLOCKS}


# ---------------------------------------------------------------- Shapley

def _mlp_params(d: int, hidden: int, key) -> dict:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    scale = lambda fan_in: 1.5 / np.sqrt(fan_in)  # noqa: E731
    return {
        "w1": np.asarray(jax.random.normal(k1, (d, hidden)) * scale(d), np.float32),
        "b1": np.asarray(0.1 * jax.random.normal(k2, (hidden,)), np.float32),
        "w2": np.asarray(jax.random.normal(k3, (hidden, hidden)) * scale(hidden), np.float32),
        "b2": np.zeros(hidden, np.float32),
        "w3": np.asarray(jax.random.normal(k4, (hidden,)) * scale(hidden), np.float32),
    }


def _mlp_jax(p, rows):
    h = jnp.tanh(rows @ p["w1"] + p["b1"])
    h = jnp.tanh(h @ p["w2"] + p["b2"])
    return h @ p["w3"]


class _MLPTorch(torch.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.w = {k: torch.from_numpy(v).to(TORCH_DEVICE) for k, v in p.items()}
        self.rows = 0

    def forward(self, rows):
        self.rows += rows.shape[0]
        h = torch.tanh(rows @ self.w["w1"] + self.w["b1"])
        h = torch.tanh(h @ self.w["w2"] + self.w["b2"])
        return h @ self.w["w3"]


def shapley_benchmark(n: int, n_shap: int, captum_samples: int, repeats: int) -> dict:
    from captum.attr import ShapleyValueSampling
    import shap

    ds = data.load("breast_cancer", key=jax.random.key(0))
    d = 10
    scale = data.fit_standardize(ds.x_train[:, :d])
    pool = np.asarray(scale(jnp.concatenate([ds.x_train, ds.x_val, ds.x_test])[:, :d]),
                      np.float32)
    x = np.asarray(pool[np.arange(n) % pool.shape[0]]
                   + 0.05 * np.random.default_rng(0).standard_normal((n, d)), np.float32)
    baseline = np.asarray(scale(ds.x_train[:, :d]).mean(0), np.float32)
    params = _mlp_params(d, 64, jax.random.key(1))
    f = Partial(_mlp_jax, jax.tree.map(jnp.asarray, params))
    tmodel = _MLPTorch(params)

    exact = np.asarray(attribution.shapley(f, x, baseline, method="exact").values, np.float64)

    # captum: n_samples permutations, d perturbations per forward call (its fastest setting)
    captum = ShapleyValueSampling(tmodel)
    x_t = torch.from_numpy(x.copy()).to(TORCH_DEVICE)
    b_t = torch.from_numpy(baseline.copy())[None].to(TORCH_DEVICE)

    def run_captum():
        with torch.no_grad():
            return captum.attribute(x_t, baselines=b_t, n_samples=captum_samples,
                                    perturbations_per_eval=d).cpu().numpy()

    tmodel.rows = 0
    torch.manual_seed(0)
    captum_values = run_captum()
    captum_rows = tmodel.rows
    budget = captum_rows / n                                   # model rows per instance

    # jdl: antithetic permutations with at most the same rows per instance
    perms = int((budget - 1) // (d - 1)) // 2 * 2
    key = jax.random.key(2)
    def run_jdl():
        return attribution.shapley(f, x, baseline, key=key, num_permutations=perms)

    result = run_jdl()
    result.values.block_until_ready()
    jdl_rows = result.num_evaluations

    # the model's own forward pass on as many rows, rows already in memory, jitted: in
    # one call, and in calls of 8192 to 65536 rows (jdl's default: at most 32768)
    # looped inside one program; the fastest is the reference
    chunks = (8192, 16384, 32768, 65536)
    rows = jnp.asarray(np.resize(x, (-(-jdl_rows // max(chunks)) * max(chunks), d)))
    forwards = {"one call": jax.jit(_mlp_jax)}
    for chunk in chunks:
        forwards[f"calls of {chunk} rows"] = jax.jit(functools.partial(
            lambda p, r, c: lax.map(lambda rc: _mlp_jax(p, rc), r.reshape(-1, c, d)), c=chunk))
    for fn in forwards.values():
        fn(f.args[0], rows).block_until_ready()
    timing = _timed({"jdl": lambda: run_jdl().values.block_until_ready(), "captum": run_captum,
                     **{name: functools.partial(lambda fn: fn(f.args[0], rows).block_until_ready(),
                                                fn) for name, fn in forwards.items()}}, repeats)
    jdl_seconds, captum_seconds = timing["jdl"], timing["captum"]
    forward_seconds = {name: {c: t * jdl_rows / rows.shape[0] for c, t in timing[name].items()}
                       for name in forwards}
    best_forward = {c: min(t[c] for t in forward_seconds.values()) for c in CLOCKS}

    # shap: row by row, max_evals = the same budget per row
    def masked_model(batch):
        with torch.no_grad():
            rows = torch.from_numpy(np.asarray(batch, np.float32)).to(TORCH_DEVICE)
            return tmodel(rows).cpu().numpy()

    explainer = shap.PermutationExplainer(masked_model, baseline[None])
    explainer(x[:1], max_evals=int(budget), silent=True)          # warm-up
    tmodel.rows = 0
    np.random.seed(0)
    shap_values = []
    shap_seconds = _timed({"shap": lambda: shap_values.append(
        explainer(x[:n_shap], max_evals=int(budget), silent=True).values)}, 1)["shap"]
    shap_values = shap_values[0]
    shap_rows = tmodel.rows

    def rmse(values, rows=slice(None)):
        return float(np.sqrt(np.mean((np.asarray(values, np.float64) - exact[rows]) ** 2)))

    out = {
        "instances": n, "features": d, "baseline": "training mean (one reference row)",
        "model": "MLP 10-64-64-1 tanh, float32",
        "rows_per_instance": {"captum": captum_rows / n, "jdl": jdl_rows / n,
                              "shap": shap_rows / n_shap},
        "jdl_permutations_antithetic": perms, "captum_n_samples": captum_samples,
        "rows_per_second": {"jdl": _rates(jdl_rows, jdl_seconds),
                            "captum": _rates(captum_rows, captum_seconds),
                            "shap": _rates(shap_rows, shap_seconds),
                            "model_forward": _rates(jdl_rows, best_forward)},
        "model_forward_rows_per_second": {k: _rates(jdl_rows, v)
                                          for k, v in forward_seconds.items()},
        "seconds": {"jdl": jdl_seconds, "captum": captum_seconds,
                    f"shap ({n_shap} instances)": shap_seconds, "model_forward": best_forward},
        "rmse_vs_exact": {"jdl": rmse(result.values), "captum": rmse(captum_values),
                          f"shap ({n_shap} instances)": rmse(shap_values, slice(0, n_shap)),
                          f"jdl ({n_shap} instances)": rmse(result.values[:n_shap],
                                                            slice(0, n_shap))},
        "jdl_mean_std_error": float(jnp.mean(result.std_error)),
        "exact_abs_mean": float(np.abs(exact).mean()),
    }
    rps = out["rows_per_second"]
    out["ratios"] = {
        **{f"jdl_over_{peer}_rows_per_second_{clock}": rps["jdl"][clock] / rps[peer][clock]
           for peer in ("captum", "shap", "model_forward") for clock in CLOCKS},
        "captum_rmse_over_jdl_rmse": out["rmse_vs_exact"]["captum"] / out["rmse_vs_exact"]["jdl"],
    }
    return out


# ---------------------------------------------------------------- LRP

def _cnn():
    return nn.serial(nn.conv2d(8, 3), nn.activation("relu"), nn.max_pool(2), nn.conv2d(16, 3),
                     nn.activation("relu"), nn.flatten(), nn.dense(10))


def _torch_cnn(params, dtype):
    """The same CNN in PyTorch (NCHW); the dense weights are permuted for the flatten order."""
    conv1 = torch.nn.Conv2d(1, 8, 3, padding=1, dtype=dtype)
    conv2 = torch.nn.Conv2d(8, 16, 3, padding=1, dtype=dtype)
    linear = torch.nn.Linear(16 * 4 * 4, 10, dtype=dtype)
    with torch.no_grad():
        for conv, p in ((conv1, params["0_conv2d"]), (conv2, params["3_conv2d"])):
            conv.weight.copy_(torch.from_numpy(np.asarray(p["w"]).transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(np.array(p["b"])))
        w = np.asarray(params["6_dense"]["w"]).reshape(4, 4, 16, 10).transpose(3, 2, 0, 1)
        linear.weight.copy_(torch.from_numpy(w.reshape(10, -1).copy()))
        linear.bias.copy_(torch.from_numpy(np.array(params["6_dense"]["b"])))
    model = torch.nn.Sequential(conv1, torch.nn.ReLU(), torch.nn.MaxPool2d(2), conv2,
                                torch.nn.ReLU(), torch.nn.Flatten(), linear)
    return model.eval()


def _zennit_relevance(tmodel, x_nhwc, target):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox

    x_t = torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2)))
    onehot = torch.nn.functional.one_hot(torch.from_numpy(np.asarray(target)), 10).to(x_t.dtype)
    with Gradient(model=tmodel, composite=EpsilonGammaBox(low=0.0, high=1.0)) as attributor:
        _, relevance = attributor(x_t.requires_grad_(), lambda out: out * onehot)
    return relevance.detach().numpy().transpose(0, 2, 3, 1)


def lrp_benchmark(batch: int, repeats: int) -> dict:
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox

    ds = data.load("digits", key=jax.random.key(0), images=True, dtype=jnp.float64)
    model = _cnn()
    _, params, _ = model.init(jax.random.key(3), (-1, 8, 8, 1), jnp.float64)
    params = jax.tree.map(lambda a: a + 0.05 * jnp.sign(a) if a.ndim == 1 else a, params)
    composite = attribution.epsilon_gamma_box(0.0, 1.0)
    explain = jax.jit(functools.partial(attribution.lrp, model, composite=composite))

    # correctness in float64
    x64 = ds.x_train[:64]
    ours = explain(params, x64)
    target = np.asarray(jnp.argmax(model.apply(params, x64)[0], 1))
    theirs = _zennit_relevance(_torch_cnn(params, torch.float64), x64, target)
    max_abs_diff = float(np.abs(np.asarray(ours.relevance) - theirs).max())
    scale = float(np.abs(theirs).max())

    # throughput in float32
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    pool = jnp.concatenate([ds.x_train, ds.x_val, ds.x_test]).astype(jnp.float32)
    x32 = pool[jnp.arange(batch) % pool.shape[0]]
    explain(p32, x32).relevance.block_until_ready()
    tmodel = _torch_cnn(params, torch.float32).to(TORCH_DEVICE)
    x_t = torch.from_numpy(np.ascontiguousarray(np.asarray(x32).transpose(0, 3, 1, 2)))
    x_t = x_t.to(TORCH_DEVICE)
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(tmodel(x_t).argmax(1), 10).float()

    def run_zennit():
        with Gradient(model=tmodel, composite=EpsilonGammaBox(low=0.0, high=1.0)) as attributor:
            attributor(x_t.clone().requires_grad_(), lambda out: out * onehot)
        if TORCH_DEVICE.type == "cuda":
            torch.cuda.synchronize()

    run_zennit()
    forward = jax.jit(lambda p, v: model.apply(p, v)[0])
    forward(p32, x32).block_until_ready()
    mesh = data_mesh(max(d for d in range(1, len(jax.devices()) + 1) if batch % d == 0))
    p_all, x_split = replicate(p32, mesh), shard_batch(x32, mesh)
    sharded = explain(p_all, x_split).relevance
    sharded_diff = float(jnp.max(jnp.abs(sharded - explain(p32, x32).relevance)))
    timing = _timed({"jdl": lambda: explain(p32, x32).relevance.block_until_ready(),
                     "jdl_sharded": lambda: explain(p_all, x_split).relevance.block_until_ready(),
                     "zennit": run_zennit,
                     "forward": lambda: forward(p32, x32).block_until_ready()}, repeats)
    jdl_seconds, sharded_seconds, zennit_seconds, forward_seconds = (
        timing[k] for k in ("jdl", "jdl_sharded", "zennit", "forward"))
    return {
        "model": "CNN conv8-relu-maxpool-conv16-relu-flatten-dense10 on 8x8 digits",
        "composite": "EpsilonGammaBox(low=0, high=1): z^B first conv, gamma 0.25 conv, "
                     "eps 1e-6 dense",
        "float64_max_abs_difference": max_abs_diff, "float64_max_abs_relevance": scale,
        "float64_relative_difference": max_abs_diff / scale,
        "batch": batch,
        "devices_sharded": mesh.devices.size,
        "sharded_max_abs_difference_float32": sharded_diff,
        "images_per_second": {"jdl": _rates(batch, jdl_seconds),
                              f"jdl_sharded_over_{mesh.devices.size}_devices":
                                  _rates(batch, sharded_seconds),
                              "zennit": _rates(batch, zennit_seconds),
                              "jdl_forward_only": _rates(batch, forward_seconds)},
        "ratios": {**{f"jdl_over_zennit_{c}": zennit_seconds[c] / jdl_seconds[c]
                      for c in CLOCKS},
                   **{f"jdl_sharded_over_zennit_{c}": zennit_seconds[c] / sharded_seconds[c]
                      for c in CLOCKS}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--instances", type=int, default=2048, help="Shapley instances")
    args = parser.parse_args()
    sizes = dict(n=128, n_shap=4, captum_samples=10, repeats=1) if args.quick else dict(
        n=args.instances, n_shap=16, captum_samples=36, repeats=7)
    device = jax.devices()[0]
    report = {
        "platform": device.platform, "device": str(device.device_kind),
        "cpu_count": os.cpu_count(), "load_average_1min_at_start": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(), "torch_device": str(TORCH_DEVICE),
        "python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__,
        "shapley": shapley_benchmark(**sizes),
        "lrp": lrp_benchmark(batch=256 if args.quick else 1024,
                             repeats=sizes["repeats"] if args.quick else 31),
    }
    s, lr = report["shapley"], report["lrp"]
    print(f"Shapley ({s['instances']} instances x {s['features']} features, "
          f"~{s['rows_per_instance']['jdl']:.0f} model rows each):")
    for name, value in s["rows_per_second"].items():
        print(f"  {name:14s} {value['wall']:14,.0f} rows/s wall  {value['cpu']:14,.0f} rows/cpu-s")
    for name, value in s["rmse_vs_exact"].items():
        print(f"  RMSE vs exact {name:24s} {value:.5f}")
    for name, value in s["ratios"].items():
        print(f"  {name:36s} {value:10.2f}")
    print(f"LRP (EpsilonGammaBox, batch {lr['batch']}): float64 max |jdl - zennit| = "
          f"{lr['float64_max_abs_difference']:.2e} (relevances up to "
          f"{lr['float64_max_abs_relevance']:.2e})")
    for name, value in lr["images_per_second"].items():
        print(f"  {name:18s} {value['wall']:12,.0f} images/s wall  {value['cpu']:12,.0f} "
              f"images/cpu-s")
    for name, value in lr["ratios"].items():
        print(f"  {name:36s} {value:10.2f}")
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"attribution_vs_peers_{device.platform}.json"
        path.write_text(json.dumps(report, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
