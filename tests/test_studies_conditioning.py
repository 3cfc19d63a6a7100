"""Hessian-conditioning studies: each runs tiny; verdicts follow the numbers and flip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jdl import studies
from jdl.studies import conditioning as cond
from jdl.studies.registry import CAVEAT, FAILS, HOLDS
from study_checks import well_formed

IDS = ["opt.ill-conditioned-lr", "opt.best-lr", "opt.center-data", "opt.whiten-data",
       "opt.centered-activations", "opt.equal-width", "opt.batchnorm", "opt.skip-connections"]


def _check(finding, ctx):
    assert finding.figures
    return well_formed(finding, ctx)


def test_registered_in_their_section():
    registry = studies.load_all()
    for study_id in IDS:
        assert registry[study_id].section == cond.SECTION


def test_layer_slices_follow_ravel_order():
    # 11 top-level layers: "10_dense" sorts before "2_serial" in the flat vector.
    model, _ = cond._mlp_loss((3,) * 10, "tanh", 2, "ce")
    params = cond._init(model, jax.random.key(0), 4)
    flat, _ = ravel_pytree(params)
    slices = cond._layer_slices(params)
    assert cond._layer_order(slices)[-1] == "10_dense"
    assert sum(s.stop - s.start for s in slices.values()) == flat.size
    for name, sl in slices.items():
        np.testing.assert_array_equal(flat[sl], ravel_pytree(params[name])[0])


def test_init_is_lecun_scaled_and_deterministic():
    model, _ = cond._mlp_loss((400,), "tanh", 3, "ce")
    a = cond._init(model, jax.random.key(1), 500, gain=2.0)
    b = cond._init(model, jax.random.key(1), 500, gain=2.0)
    w = np.asarray(a["0_serial"]["0_dense"]["w"])
    np.testing.assert_array_equal(w, b["0_serial"]["0_dense"]["w"])
    assert abs(w.var() * 500 / 4.0 - 1.0) < 0.02  # N(0, gain^2 / fan_in)
    assert w.dtype == np.float64 and not np.any(np.asarray(a["0_serial"]["0_dense"]["b"]))


def test_ill_conditioned_lr_holds_on_raw_and_not_when_whitened(ctx):
    finding = _check(cond.ill_conditioned_lr(ctx, network=False), ctx)
    raw = finding.numbers["raw"]
    assert finding.verdict == HOLDS
    assert raw["condition_number"] > 1e6
    below = [v for f, v in zip(raw["factors"], raw["final_excess_fraction"]) if f < 1]
    above = [v for f, v in zip(raw["factors"], raw["final_excess_fraction"]) if f > 1]
    assert all(v < 1 for v in below) and all(v is None or v > 100 for v in above)
    # The slowest direction contracts at exactly 1 - lr * lambda_min.
    assert raw["slow_direction_rate_measured"] == pytest.approx(
        raw["slow_direction_rate_theory"], rel=1e-9)
    assert cond.ill_conditioned_lr(ctx, preprocess="whiten", network=False).verdict == CAVEAT


def test_ill_conditioned_lr_network_run(ctx):
    finding = _check(cond.ill_conditioned_lr(ctx), ctx)
    net = finding.numbers["network"]
    assert net["lambda_max_init"] > 0
    run = net["runs"]["2.0"]
    assert "sharpness" not in run  # traces go to the figure, not the report's table
    # The catapult: trained above its initial limit, the sharpness fell to about 2 / lr.
    assert finding.verdict == CAVEAT and not run["diverged"]
    assert run["final_sharpness_over_limit"] < 1.5 and run["loss_ratio"] < 1


def test_best_lr_fails_but_holds_where_units_happen_to_match(ctx):
    finding = _check(cond.best_lr(ctx), ctx)
    assert finding.verdict == FAILS
    quadratic = finding.numbers["quadratic, λ in [0.01, 1]"]
    for label in quadratic["rate_theory"]:
        if label != "notes 0.99 λmin/λmax":  # its slowest mode is not yet dominant
            assert quadratic["rate_measured"][label] == pytest.approx(
                quadratic["rate_theory"][label], abs=2e-3)
    # lambda in [c, 2c] with 0.99 / 2 = 2 / (3 c): the notes' rate is the optimal step.
    c = 4.0 / (3 * 0.99)
    matched = cond.best_lr(ctx, problems={"matched": np.linspace(c, 2 * c, 20)})
    assert matched.verdict == HOLDS
    assert matched.numbers["matched"]["notes_over_optimal_steps"] == pytest.approx(1.0, 1e-6)


def test_center_data_holds_on_raw_inputs_not_on_centred_ones(ctx):
    finding = _check(cond.center_data(ctx), ctx)
    assert finding.verdict == HOLDS
    assert min(finding.numbers["centring_gain"].values()) > 2
    again = cond.center_data(ctx, already="center")
    assert again.verdict == FAILS
    for gain in again.numbers["centring_gain"].values():
        assert gain == pytest.approx(1.0, rel=1e-3)


def test_whiten_data_identity_for_linear_regression_only(ctx):
    finding = _check(cond.whiten_data(ctx), ctx)
    assert finding.verdict == CAVEAT
    linear = "diabetes linear regression"
    assert finding.numbers["whitened"][linear] < 1.01
    only_linear = cond.whiten_data(ctx, problems=(linear,))
    assert only_linear.verdict == HOLDS


def test_centered_activations_flip_when_roles_swap(ctx):
    finding = _check(cond.centered_activations(ctx), ctx)
    assert finding.verdict == HOLDS
    means = finding.numbers["sigmoid"]["hidden_mean_abs"]
    assert min(means) > 0.3 > max(finding.numbers["tanh"]["hidden_mean_abs"])
    swapped = cond.centered_activations(ctx, centred="sigmoid", uncentred="tanh")
    assert swapped.verdict == FAILS


def test_equal_width_fails_by_default_holds_against_a_bottleneck(ctx):
    finding = _check(cond.equal_width(ctx), ctx)
    assert finding.verdict == FAILS
    first = [v["block_lambda_max"][0] for v in finding.numbers.values()]
    rest = [max(v["block_lambda_max"][1:]) for v in finding.numbers.values()]
    assert all(f > r for f, r in zip(first, rest))  # the first layer's block dominates
    # Against a much narrower design the (wider) equal widths do give similar scales.
    narrow = cond.equal_width(ctx, width=12, unequal=((2, 2, 2),))
    assert narrow.verdict == HOLDS


def test_batchnorm_holds_for_vanishing_and_exploding_init_caveat_for_he(ctx):
    finding = _check(cond.batchnorm(ctx), ctx)
    assert finding.verdict == HOLDS
    for label, v in finding.numbers.items():
        assert (v["variance_spread"] < 2) == label.startswith("batch norm")
    he = cond.batchnorm(ctx, gains=(float(np.sqrt(2.0)),))
    assert he.verdict == CAVEAT
    assert he.numbers["plain, gain 1.41"]["variance_spread"] < 4


def test_skip_connections_caveat_deep_fails_shallow(ctx):
    finding = _check(cond.skip_connections(ctx), ctx)
    assert finding.verdict == CAVEAT
    deepest = str(finding.numbers["depths"][-1])
    ratios = {k: finding.numbers[k][deepest]["first_over_last_hidden"]
              for k in ("plain", "residual")}
    assert ratios["residual"] > 1 > ratios["plain"]
    # One hidden layer: nothing to skip, the two nets are the same.
    shallow = cond.skip_connections(ctx, depth=1)
    assert shallow.verdict == FAILS
    assert shallow.numbers["plain"]["1"]["coupling"] == pytest.approx(
        shallow.numbers["residual"]["1"]["coupling"])


def test_preprocess_rejects_unknown_name():
    with pytest.raises(ValueError, match="_preprocess"):
        cond._preprocess(jnp.ones((3, 2)), "sphere")
