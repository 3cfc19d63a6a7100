"""CNN studies: each runs in its tiny configuration; verdicts follow the numbers."""

import numpy as np
import pytest

from jdl import studies
from jdl.studies import cnn
from jdl.studies.registry import CAVEAT, FAILS, HOLDS
from study_checks import well_formed

IDS = ["cnn.output-size", "cnn.rf-recursive", "cnn.rf-closed", "cnn.layer-code",
       "cnn.attention-scaling", "cnn.attention-mask", "cnn.attention-shared-kq",
       "cnn.resnet-gradients", "cnn.resnet-add", "cnn.sharing-params",
       "cnn.sharing-translation", "cnn.sharing-transfer", "cnn.pooling-invariance"]


@pytest.fixture(scope="module")
def findings(ctx):
    """Every study's default finding, computed once for the module."""
    registry = studies.load_all()
    return {i: registry[i].fn(ctx) for i in IDS}


@pytest.mark.parametrize("study_id", IDS)
def test_runs_tiny(study_id, findings, ctx):
    finding = findings[study_id]
    well_formed(finding, ctx)


def test_output_size_needs_total_padding_and_floor(findings, ctx):
    default = findings["cnn.output-size"]
    assert default.verdict == CAVEAT
    assert default.numbers["agreement_total_padding_floored"] == 1.0
    assert default.numbers["agreement_one_side_padding_floored"] < 1.0
    assert cnn.output_size(ctx, strides=(1,), pads=(0,)).verdict == HOLDS


@pytest.mark.parametrize("study_id, fn", [("cnn.rf-recursive", cnn.receptive_field_recursive),
                                          ("cnn.rf-closed", cnn.receptive_field_closed)])
def test_receptive_field_needs_the_dilated_span(study_id, fn, findings, ctx):
    assert findings[study_id].verdict == HOLDS
    assert fn(ctx, architectures=cnn.DILATED).verdict == HOLDS
    assert fn(ctx, architectures=cnn.DILATED, dilation_as_span=False).verdict == FAILS


def test_layer_code_is_right_for_square_inputs_only(findings, ctx):
    default = findings["cnn.layer-code"]
    assert default.verdict == CAVEAT
    assert default.numbers["kernel_flip_max_change"] > 0.01  # cross-correlation, not convolution
    assert cnn.layer_code(ctx, shape=(8, 8)).verdict == HOLDS


def test_attention_scaling_matters_only_for_unit_variance_components(findings, ctx):
    default = findings["cnn.attention-scaling"]
    assert default.verdict == HOLDS
    unscaled = [r["score_std"] for r in default.numbers["unscaled"]]
    assert unscaled[-1] > 5 * unscaled[0]  # q.k grows like sqrt(d)
    assert cnn.attention_scaling(ctx, unit_norm=True).verdict == CAVEAT


def test_attention_mask_fails_without_the_mask(findings, ctx):
    assert findings["cnn.attention-mask"].verdict == HOLDS
    unmasked = cnn.attention_mask(ctx, causal=False)
    assert unmasked.verdict == FAILS
    assert unmasked.numbers["max_future_gradient"] > 1e-3


def test_shared_key_query_matrix_restricts_attention(findings, ctx):
    default = findings["cnn.attention-shared-kq"]
    assert default.verdict == CAVEAT
    assert default.numbers["score_asymmetry"] < 1e-10
    assert default.numbers["smallest_score_eigenvalue_relative"] > -1e-10  # PSD
    assert cnn.attention_shared_kq(ctx, separate_keys=False).verdict == HOLDS


def test_resnet_gradients_need_a_vanishing_plain_net(findings, ctx):
    default = findings["cnn.resnet-gradients"]
    assert default.verdict == HOLDS
    ratios = default.numbers["first_over_last_gradient"]
    assert ratios["plain sigmoid"] < 0.01 < ratios["residual sigmoid"]
    assert cnn.resnet_gradients(ctx, activations=("tanh",)).verdict != HOLDS


def test_resnet_add_needs_the_skip(findings, ctx):
    assert findings["cnn.resnet-add"].verdict == HOLDS
    assert cnn.resnet_add(ctx, skip=False).verdict == FAILS


def test_sharing_params_fails_with_nothing_to_share(findings, ctx):
    default = findings["cnn.sharing-params"]
    assert default.verdict in (HOLDS, CAVEAT)
    assert default.numbers["count_ratio"] > 100
    assert cnn.sharing_params(ctx, kernel=12, padding="VALID").verdict == FAILS


def test_convolution_is_equivariant_not_invariant(findings, ctx):
    default = findings["cnn.sharing-translation"]
    assert default.verdict == FAILS
    assert default.numbers["equivariant"]
    stride = {tuple(r["shift"]): r["equivariance_error"] for r in default.numbers["stride_2"]}
    assert stride[(0, 1)] is None and stride[(0, 2)] < 1e-10
    assert cnn.sharing_translation(ctx, global_pool=True).verdict == HOLDS


@pytest.mark.parametrize("pretrained, expected", [
    ([0.9, 0.92, 0.91], HOLDS), ([0.85, 0.86, 0.84], CAVEAT), ([0.7, 0.72, 0.71], FAILS)])
def test_transfer_verdict(pretrained, expected):
    acc = {"scratch": [0.85, 0.84, 0.86], "frozen random filters": [0.8, 0.81, 0.79],
           "frozen pretrained filters": pretrained}
    assert cnn._transfer_verdict(acc)[0] == expected


def test_transfer_runs_every_arm(findings):
    mean = findings["cnn.sharing-transfer"].numbers["mean_accuracy"]
    assert set(mean) == {"scratch", "frozen random filters", "frozen pretrained filters",
                         "fine-tuned pretrained"}
    assert all(0.2 < v <= 1 for v in mean.values())  # above chance (5 classes)


def test_pooling_invariance_flips_with_global_pooling(findings, ctx):
    default = findings["cnn.pooling-invariance"]
    assert default.verdict == CAVEAT
    change = default.numbers["feature_change"]
    assert max(change["global max pool"]) < 1e-6
    assert np.all(np.asarray(change["max pool 2x2"]) < np.asarray(change["no pooling"]))
    flipped = cnn.pooling_invariance(ctx, pool="global max pool", train_classifiers=False)
    assert flipped.verdict == HOLDS
