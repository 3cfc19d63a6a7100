"""Back-propagation studies: each runs in its tiny configuration; verdicts follow the numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import studies
from jdl.studies import backprop as bp
from jdl.studies.registry import CAVEAT, FAILS, HOLDS
from study_checks import well_formed

IDS = ["bp.delta", "bp.weight-grad", "bp.shared-weight", "bp.decision-boundary",
       "bp.universal-approx", "bp.count-biases", "bp.count-params", "bp.deriv-cosh",
       "bp.deriv-sigmoid", "bp.deriv-softmax", "bp.deriv-tanh", "bp.notes-backward"]


@pytest.fixture(scope="module")
def findings(ctx):
    """Every study's default finding, computed once for the module."""
    registry = studies.load_all()
    return {i: registry[i].fn(ctx) for i in IDS}


@pytest.mark.parametrize("study_id", IDS)
def test_runs_tiny(study_id, findings, ctx):
    finding = findings[study_id]
    well_formed(finding, ctx)


@pytest.mark.parametrize("study_id, fn", [("bp.delta", bp.delta_rule),
                                          ("bp.weight-grad", bp.weight_gradient)])
def test_delta_rules_hold_and_fail_without_the_derivative(study_id, fn, findings, ctx):
    assert findings[study_id].verdict == HOLDS
    assert fn(ctx, include_derivative=False).verdict == FAILS


def test_shared_weight_factored_form_is_right_only_within_one_unit(findings, ctx):
    default = findings["bp.shared-weight"]
    assert default.verdict == CAVEAT
    assert default.numbers["shared_entries"]["notes_factored_error"] > 0.01
    assert bp.shared_weight(ctx, uses=((20, 0), (43, 0))).verdict == HOLDS


def test_decision_boundary_fails_without_the_second_hidden_unit(findings, ctx):
    assert findings["bp.decision-boundary"].verdict == HOLDS
    broken = {**bp.XOR_BY_HAND, "2_dense": {"w": np.array([[1.0], [0.0]]), "b": np.array([0.0])}}
    finding = bp.decision_boundary(ctx, xor_params=broken)
    assert finding.numbers["xor_correct"] < 4
    assert finding.verdict == FAILS


def test_universal_approximation_fails_for_a_step(findings, ctx):
    assert findings["bp.universal-approx"].verdict == HOLDS
    step = bp.universal_approximation(ctx, target="step")
    assert step.verdict == FAILS
    assert min(step.numbers["sup_error_best"]) > 0.4  # half the jump, whatever the width


def test_counts_flip(findings, ctx):
    assert findings["bp.count-biases"].verdict == CAVEAT
    assert bp.count_biases(ctx, include_cnn=False).verdict == HOLDS
    params = findings["bp.count-params"]
    assert params.verdict == CAVEAT
    assert all(r["total"] == r["notes"] + r["b"] for r in params.numbers["models"])
    assert bp.count_parameters(ctx, use_bias=False).verdict == HOLDS


@pytest.mark.parametrize("study_id, fn, wrong", [
    ("bp.deriv-cosh", bp.derivative_cosh, jnp.cosh),
    ("bp.deriv-sigmoid", bp.derivative_sigmoid, lambda x: jax.nn.sigmoid(x) ** 2),
    ("bp.deriv-tanh", bp.derivative_tanh, lambda x: 1 - jnp.tanh(x)),
])
def test_derivative_formulas_fail_when_wrong(study_id, fn, wrong, findings, ctx):
    assert findings[study_id].verdict == HOLDS
    assert fn(ctx, formula=wrong).verdict == FAILS


def test_softmax_jacobian_fails_without_the_outer_product(findings, ctx):
    assert findings["bp.deriv-softmax"].verdict == HOLDS

    def diagonal_only(z):
        return jax.vmap(jnp.diag)(jax.nn.softmax(z))

    assert bp.derivative_softmax(ctx, jacobian=diagonal_only).verdict == FAILS


def test_sigmoid_tails_lose_relative_precision_in_float32(findings):
    tails = findings["bp.deriv-sigmoid"].numbers["tails"]
    assert tails["relative_error_float32"][-1] > 0.5  # sigmoid(30) rounds to 1: the result is 0


def test_notes_backward_matches_mse_loss_only_for_one_output(findings, ctx):
    default = findings["bp.notes-backward"]
    assert default.verdict == CAVEAT
    assert default.numbers["norm_ratio_to_mse_mean"] == pytest.approx(10.0)
    assert bp.notes_backward(ctx, dataset="diabetes").verdict == HOLDS
