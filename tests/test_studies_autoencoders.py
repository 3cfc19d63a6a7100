"""Auto-encoder studies: each runs in its tiny configuration; verdicts follow the numbers."""

import numpy as np
import pytest

from jdl import studies
from jdl.studies import autoencoders as ae
from jdl.studies.registry import CAVEAT, FAILS, HOLDS, UNTESTABLE
from study_checks import well_formed

IDS = ["ae.sparse", "ae.sparsity-check", "ae.loss-terms", "ae.sparse-uses", "ae.uses",
       "ae.denoising", "ae.rotation", "ae.anomaly", "ae.conv", "ae.unet-skip"]


@pytest.mark.parametrize("study_id", IDS)
def test_runs_tiny(study_id, ctx):
    finding = studies.load_all()[study_id].fn(ctx)
    well_formed(finding, ctx)


def test_sparse_codes_need_the_l1_term(ctx):
    finding = ae.sparse_codes(ctx)
    assert finding.verdict == HOLDS
    assert finding.numbers["zero_fraction_sparse"] > finding.numbers["zero_fraction_plain"]
    without = ae.sparse_codes(ctx, lam=0.0)   # the same model twice: no gain
    assert without.verdict == FAILS
    assert without.numbers["gain"] == 0.0


def test_notes_sparsity_check_counts_zeros_per_example(ctx):
    finding = ae.sparsity_check(ctx)
    assert finding.verdict == FAILS
    n = finding.numbers
    assert n["notes_value"] == pytest.approx(n["zero_fraction"] * n["code_units"], rel=1e-12)
    assert n["notes_value"] > 1   # not a fraction
    assert ae.sparsity_check(ctx, units=1).verdict == HOLDS   # one unit: count / batch is right


def test_rescaling_degeneracy_is_exact_for_relu_only(ctx):
    relu = ae.loss_terms(ctx)
    assert relu.verdict in (HOLDS, CAVEAT)
    assert relu.numbers["rescale_relative_change"] < 1e-10
    sigmoid = ae.loss_terms(ctx, activation="sigmoid")
    assert sigmoid.verdict == FAILS
    assert sigmoid.numbers["rescale_relative_change"] > 1e-3


def test_untestable_uses_report_their_nearest_reading(ctx):
    uses = ae.uses(ctx)
    assert uses.verdict == UNTESTABLE and uses.caveat
    ds = ae._digits(ctx.seed)
    x_tr = np.asarray(ds.x_train, np.float64).reshape(len(ds.x_train), -1)
    x_te = np.asarray(ds.x_test, np.float64).reshape(len(ds.x_test), -1)
    no_code = ((x_te - x_tr.mean(0)) ** 2).sum(1).mean()   # zero components: the mean image
    assert 0 < uses.numbers["pca_error"] < 0.3 * no_code   # 16 of 64 components keep most
    probe = ae.sparse_uses(ctx)
    assert probe.verdict == UNTESTABLE and probe.caveat
    accuracies = probe.numbers["probe_accuracy"]
    assert accuracies["pixels (64)"] > 0.85   # a working probe reads digits from pixels
    assert all(0.1 < a <= 1.0 for a in accuracies.values())


def test_denoising_flips_without_noise(ctx):
    finding = ae.denoising(ctx)
    assert finding.verdict in (HOLDS, CAVEAT)
    same = ae.denoising(ctx, noise=0.0)       # plain training twice: identical codes
    assert same.verdict == FAILS
    assert same.numbers["ratio"] == pytest.approx(1.0, rel=1e-12)


def test_rotation_flips_without_rotations(ctx):
    finding = ae.rotation(ctx)
    assert finding.verdict in (HOLDS, CAVEAT)
    assert finding.numbers["error_ratio"] < 0.7
    assert ae.rotation(ctx, max_angle=0.0).verdict == FAILS


def test_anomaly_flips_when_the_anomalies_were_trained_on(ctx):
    finding = ae.anomaly(ctx)
    assert finding.verdict == HOLDS
    assert 0.8 <= finding.numbers["auroc"] <= 1.0
    seen = ae.anomaly(ctx, normal_classes=tuple(range(10)))   # every class is normal
    assert seen.verdict == FAILS
    assert seen.numbers["auroc"] < finding.numbers["auroc"]


def test_conv_maps_are_sparse_only_with_l1(ctx):
    finding = ae.conv_encoding(ctx)
    n = finding.numbers
    assert n["feature_maps"] == n["filters"] == 8
    assert n["entries_are_filter_weights"] and n["max_nonzeros_per_row"] <= 9
    assert finding.verdict == CAVEAT
    assert ae.conv_encoding(ctx, lam=0.0).verdict == FAILS


def test_unet_flips_without_skips(ctx):
    finding = ae.unet_skips(ctx)
    assert finding.verdict in (HOLDS, CAVEAT)
    same = ae.unet_skips(ctx, skips=False)
    assert same.verdict == FAILS
    assert same.numbers["error_ratio"] == pytest.approx(1.0, rel=1e-12)


def test_denoising_needs_two_runs(ctx):
    with pytest.raises(ValueError, match="ae.denoising: expected runs >= 2"):
        ae.denoising(ctx, runs=1)
