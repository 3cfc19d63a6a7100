"""Explainable-AI studies: each runs in its tiny configuration; verdicts follow the numbers."""

import math

import numpy as np
import pytest

from jdl import attribution as at
from jdl import studies
from jdl.studies import xai
from jdl.studies.registry import CAVEAT, FAILS, HOLDS
from study_checks import well_formed

IDS = ["xai.activation-max", "xai.shapley-sampling", "xai.shapley-formula", "xai.lrp-rules",
       "xai.lrp-epsilon-absorbs", "xai.lrp-composite", "xai.lrp-fast", "xai.lrp-hyperparameters",
       "xai.lrp-architecture", "xai.lrp-needs-good-model"]
_DEFAULT = {}


def _default(ctx, study_id):
    """The study's finding with its default arguments (run once per test process)."""
    if study_id not in _DEFAULT:
        _DEFAULT[study_id] = studies.load_all()[study_id].fn(ctx)
    return _DEFAULT[study_id]


@pytest.mark.parametrize("study_id", IDS)
def test_runs_tiny(study_id, ctx):
    finding = _default(ctx, study_id)
    well_formed(finding, ctx)


def test_registered_with_the_section():
    registry = studies.load_all()
    assert {registry[i].section for i in IDS} == {"Explainable AI"}


def test_activation_max_prior_must_describe_the_data(ctx):
    assert _default(ctx, "xai.activation-max").verdict == HOLDS
    finding = xai.activation_max(ctx, prior_data="noise")
    assert finding.verdict == FAILS
    assert (finding.numbers["with_prior"]["distance_to_class_mean"]
            > finding.numbers["without_prior"]["distance_to_class_mean"])


def test_shapley_sampling_stalls_on_another_game(ctx):
    good = _default(ctx, "xai.shapley-sampling")
    assert good.verdict == HOLDS
    assert -0.7 < good.numbers["slopes"]["plain"] < -0.3
    assert good.numbers["antithetic_over_plain"] < 1
    assert xai.shapley_sampling(ctx, sampled_game="mean").verdict == FAILS


def test_shapley_formula_literal_reading_holds_only_for_two_players(ctx):
    finding = _default(ctx, "xai.shapley-formula")
    assert finding.verdict == CAVEAT
    errors = finding.numbers["max_relative_error"]
    assert max(v for k, v in errors.items() if k.startswith("orderings")) < 1e-10
    assert xai.shapley_formula(ctx, num_groups=2).verdict == HOLDS


@pytest.mark.parametrize("players", [3, 4])
def test_ordering_and_weighted_subset_forms_agree_on_a_random_game(players):
    rng = np.random.default_rng(players)
    v = rng.normal(size=(2, 2 ** players))
    by_orderings = xai._ordering_form(v, players, keep_after=False)
    after = xai._ordering_form(v, players, keep_after=True)
    by_subsets = xai._subset_form(v, players, lambda s: math.factorial(s) * math.factorial(
        players - s - 1) / math.factorial(players))
    np.testing.assert_allclose(by_orderings, by_subsets, atol=1e-12)
    np.testing.assert_allclose(after, by_subsets, atol=1e-12)
    np.testing.assert_allclose(by_subsets.sum(1), v[:, -1] - v[:, 0], atol=1e-12)  # efficiency


def test_lrp_rules_fail_when_the_rules_coincide(ctx):
    assert _default(ctx, "xai.lrp-rules").verdict in (HOLDS, CAVEAT)
    finding = xai.lrp_rules(ctx, eps=0.0, gamma_value=0.0)   # eps = 0 and gamma = 0 are LRP-0
    assert finding.verdict == FAILS
    assert not any(finding.numbers["checks"].values())


def test_lrp_epsilon_absorbs_nothing_when_tiny(ctx):
    good = _default(ctx, "xai.lrp-epsilon-absorbs")
    assert good.verdict == HOLDS
    assert np.all(np.diff(good.numbers["absorbed_fraction"][1:]) > 0)
    assert xai.lrp_epsilon_absorbs(ctx, epsilons=(1e-9, 1e-8, 1e-7)).verdict == FAILS


def test_lrp_composite_flips_for_single_rules(ctx):
    assert _default(ctx, "xai.lrp-composite").verdict == HOLDS
    plain = xai.lrp_composite(ctx, composite=at.uniform(at.lrp_0()), label="LRP-0 everywhere")
    assert plain.verdict == CAVEAT
    strong = xai.lrp_composite(ctx, composite=at.uniform(at.gamma(3.0)), label="gamma 3")
    assert strong.verdict == CAVEAT
    assert not strong.numbers["checks"][next(iter(strong.numbers["checks"]))]


def test_lrp_fast_threshold(ctx):
    finding = _default(ctx, "xai.lrp-fast")
    ratios = finding.numbers["ratio_to_gradient"]
    assert finding.verdict == (HOLDS if max(ratios["LRP-eps"], ratios[xai.COMPOSITE_NAME]) <= 5
                               else FAILS)
    assert xai.lrp_fast(ctx, max_ratio=1e-3).verdict == FAILS


def test_lrp_hyperparameters_matter_only_over_a_range(ctx):
    assert _default(ctx, "xai.lrp-hyperparameters").verdict == HOLDS
    narrow = xai.lrp_hyperparameters(ctx, epsilons=(0.25, 0.26), gammas=(0.25, 0.26))
    assert narrow.verdict == FAILS


def test_lrp_architecture_adapts_to_supported_layers(ctx):
    finding = _default(ctx, "xai.lrp-architecture")
    assert finding.verdict == HOLDS
    assert "RNN over rows" in finding.numbers["without_lrp_rule"]
    supported = xai.lrp_architecture(ctx, names=("CNN (conv, max pool, dense)", "residual MLP"))
    assert supported.verdict == FAILS


def test_lrp_needs_good_model_fails_for_a_good_model(ctx):
    assert _default(ctx, "xai.lrp-needs-good-model").verdict == HOLDS
    assert xai.lrp_needs_good_model(ctx, bad_models=("retrained",)).verdict == FAILS


def test_gini_and_paired_measures():
    ink = np.ones((2, 4, 4), bool)
    uniform = np.ones((2, 4, 4))
    spike = np.zeros((2, 4, 4))
    spike[:, 0, 0] = 1.0
    np.testing.assert_allclose(xai._gini(uniform, ink), 0.0, atol=1e-12)
    np.testing.assert_allclose(xai._gini(spike, ink), 1 - 1 / 16, atol=1e-12)
    a = np.linspace(1.0, 2.0, 20)
    assert xai._exceeds(a + 0.1, a)
    assert not xai._exceeds(a + 1e-6, a)          # consistent but negligible
    assert not xai._exceeds(a, a)

