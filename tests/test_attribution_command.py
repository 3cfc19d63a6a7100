"""The ``jdl attribute`` subcommand: it runs end to end and writes consistent figures and JSON."""

import json

import pytest

from jdl import cli


def test_attribute_writes_figures_and_json(tmp_path):
    out = tmp_path / "attr"
    status = cli.main(["attribute", "--out", str(out), "--epochs", "2", "--permutations", "4",
                       "--background", "4", "--instances", "3", "--digits", "2", "--steps", "5"])
    assert status == 0
    for name in ("shapley.png", "lrp.png", "activation_max.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "attribute.json").read_text())
    shap = report["shapley"]
    assert shap["model_rows_evaluated"] == 3 * (4 * 29 * 4 + 1) + 4
    assert shap["max_efficiency_error"] < 1e-4
    assert len(shap["features_by_mean_abs_value"]) == 30
    methods = report["lrp"]["methods"]
    assert methods["EpsilonGammaBox"]["rules"] == [
        ["0_conv2d", "zbox"], ["3_conv2d", "gamma"], ["6_dense", "epsilon"]]
    for method in ("LRP-0", "EpsilonGammaBox"):
        gaps = methods[method]["mean_abs_conservation_gap"]
        assert gaps["1_activation"] == 0.0 and gaps["5_flatten"] == 0.0
    assert len(report["activation_max"]["p_class"]) == 10


def test_attribute_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="jdl attribute: expected an even --permutations"):
        cli.main(["attribute", "--out", str(tmp_path), "--permutations", "3"])
    with pytest.raises(ValueError, match="jdl attribute: expected --steps >= 1"):
        cli.main(["attribute", "--out", str(tmp_path), "--steps", "0"])
