"""Statistics studies: each runs in its tiny configuration; verdicts follow the numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import studies
from jdl.studies import statistics as st
from jdl.studies.registry import CAVEAT, HOLDS
from study_checks import well_formed

IDS = ["stat.variance-def", "stat.second-moment", "stat.eigvec-orthogonal", "stat.var-product",
       "stat.mean-product", "stat.sum-expectation", "stat.tanh-linear"]


@pytest.mark.parametrize("study_id", IDS)
def test_runs_tiny(study_id, ctx):
    finding = studies.load_all()[study_id].fn(ctx)
    well_formed(finding, ctx)


def test_second_moment_flips_to_holds_on_isotropic_data(ctx):
    assert st.second_moment(ctx).verdict == CAVEAT
    assert st.second_moment(ctx, synthetic_isotropic=True).verdict == HOLDS


def test_tanh_linear_flips_to_holds_for_small_inputs(ctx):
    assert st.tanh_linear(ctx).verdict == CAVEAT
    assert st.tanh_linear(ctx, stds=(0.01, 0.05)).verdict == HOLDS


def test_sum_expectation_flips_on_identically_distributed_features(ctx):
    finding = st.expectation_of_sum(ctx)
    assert finding.numbers["relative_error_linearity"] < 1e-10
    assert finding.verdict == CAVEAT  # digits pixels are not identically distributed
    iid = np.asarray(jax.random.uniform(jax.random.key(0), (200_000, 8), jnp.float64))
    assert st.expectation_of_sum(ctx, features=iid).verdict == HOLDS


def test_product_rules_need_independence(ctx):
    for fn in (st.variance_of_product, st.mean_of_product):
        finding = fn(ctx)
        assert finding.verdict == CAVEAT
        assert abs(finding.numbers["correlation"]) > 0.5
