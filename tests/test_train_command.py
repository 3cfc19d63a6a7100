"""The ``jdl train`` subcommand writes loss curves as PNG and JSON."""

import json

import numpy as np
import pytest

from jdl.cli import main


@pytest.mark.parametrize("argv", [
    ["--model", "mlp", "--dataset", "iris", "--epochs", "4", "--batch-size", "16"],
    ["--model", "cnn", "--dataset", "digits", "--hidden", "4", "--epochs", "2", "--restarts", "2",
     "--patience", "1"],
])
def test_train_writes_png_and_json(tmp_path, argv):
    assert main(["train", *argv, "--out", str(tmp_path), "--quiet"]) == 0
    report = json.loads((tmp_path / "history.json").read_text())
    loss = np.asarray(report["history"]["loss"], float)
    assert loss.shape[-1] == int(argv[argv.index("--epochs") + 1])
    assert np.isfinite(loss[..., 0]).all() and 0 <= report["test"]["accuracy"] <= 1
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_checkpoints_and_resumes(tmp_path):
    common = ["train", "--dataset", "diabetes", "--optimizer", "adam", "--lr", "0.01",
              "--checkpoint-every", "2", "--out", str(tmp_path), "--quiet"]
    assert main([*common, "--epochs", "3"]) == 0
    assert (tmp_path / "checkpoint" / "checkpoint.msgpack").exists()
    assert main([*common, "--epochs", "5", "--resume"]) == 0
    report = json.loads((tmp_path / "history.json").read_text())
    assert len(report["history"]["loss"]) == 5 and "mse" in report["test"]


@pytest.mark.parametrize("argv,match", [
    (["--model", "cnn", "--dataset", "iris"], "needs --dataset digits"),
    (["--resume"], "--resume needs --checkpoint-every"),
    (["--epochs", "0"], "--epochs >= 1"),
])
def test_train_bad_arguments(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        main(["train", *argv, "--out", str(tmp_path)])
