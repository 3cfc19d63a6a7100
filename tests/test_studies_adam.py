"""Adam / RMSProp / Adagrad / momentum studies: each runs tiny; each verdict flips on a case."""

import numpy as np
import pytest

from jdl import studies
from jdl.studies import adam
from jdl.studies.registry import CAVEAT, FAILS, HOLDS
from study_checks import well_formed

# the verdict each study reaches on the notes' claim in tiny mode
EXPECTED = {
    "adam.rmsprop-adagrad": FAILS, "adam.rmsprop": CAVEAT, "adam.adagrad": HOLDS,
    "adam.ema": HOLDS, "adam.bias": HOLDS, "adam.momentum-not-monotone": HOLDS,
    "adam.momentum-skips": CAVEAT, "adam.no-global": HOLDS, "adam.second-moment": CAVEAT,
}


@pytest.mark.parametrize("study_id", sorted(EXPECTED))
def test_runs_tiny_with_expected_verdict(study_id, ctx):
    finding = studies.load_all()[study_id].fn(ctx)
    assert finding.verdict == EXPECTED[study_id], finding.summary
    well_formed(finding, ctx)


def test_update_rules_match_their_papers(ctx):
    n = adam.combines_rmsprop_adagrad(ctx).numbers
    assert n["rms_corrected_max_rel_error"] < 1e-12  # Adam(b1=0) = bias-corrected RMSProp
    assert n["momentum_rel_error"] < 1e-12  # Adam's m = (1 - b1) x heavy-ball velocity
    assert n["adam_over_raw_rmsprop_first"] == pytest.approx(np.sqrt(1 - 0.999), rel=1e-6)
    assert abs(n["limit_ratio_median"] - 1) < 1e-3 and n["adagrad_ratio_median"] > 2


def test_combines_flips_to_holds_in_adagrads_limit(ctx):
    # b1 = 0, b2 -> 1, lr / sqrt(t): Adam is Adagrad (Kingma & Ba, sec. 5)
    finding = adam.combines_rmsprop_adagrad(ctx, b1=0.0, b2=1 - 1e-9, anneal=True)
    assert finding.verdict == HOLDS


def test_rmsprop_with_momentum_holds(ctx):
    assert adam.rmsprop_description(ctx, momentum=0.9).verdict == HOLDS


def test_adagrad_description_fails_for_sgd(ctx):
    finding = adam.adagrad_description(ctx, optimizer="sgd")
    assert finding.verdict == FAILS
    assert finding.numbers["rate_spread_p90_p10"] == pytest.approx(1.0)


@pytest.mark.parametrize("optimizer", ["adagrad", "rmsprop"])
def test_ema_fails_for_optimizers_without_both_averages(optimizer, ctx):
    assert adam.moving_averages(ctx, optimizers=(optimizer,)).verdict == FAILS


def test_bias_fails_for_small_betas(ctx):
    finding = adam.moment_bias(ctx, betas=(0.1, 0.2))
    assert finding.verdict == FAILS
    assert finding.numbers["raw_ratio_at_step_1"][0.1] == pytest.approx(0.9, abs=0.15)


def test_momentum_not_monotone_fails_for_small_momenta(ctx):
    finding = adam.momentum_not_monotone(ctx, betas=(0.0, 0.3, 0.6), lrs=(0.03,))
    assert finding.verdict == FAILS
    assert finding.numbers["rows"][0]["monotone_decreasing"]


def test_momentum_skips_fails_for_small_momenta(ctx):
    assert adam.momentum_skips(ctx, betas=(0.0, 0.5, 0.8)).verdict == FAILS


def test_no_global_fails_on_a_convex_landscape(ctx):
    finding = adam.no_global(ctx, well=(0.0, 0.0, 1.0), problems=("double_well",))
    assert finding.verdict == FAILS
    assert finding.numbers["double_well"]["trapped_fraction"] == 0.0


def test_second_moment_proportional_to_hessian_on_an_aligned_quadratic(ctx):
    # diagonal quadratic, equal start offsets, full batch: g_i = h_i w, so sqrt(v_i) ~ h_i
    scales = np.logspace(-1, 1, 6)
    finding = adam.second_moment(ctx, x=np.diag(scales), y=np.zeros(6), init=np.ones(6),
                                 batch_size=6, lr=0.01)
    assert finding.verdict == HOLDS
    assert max(finding.numbers["hessian_ratio_spread"]) < 1.01
