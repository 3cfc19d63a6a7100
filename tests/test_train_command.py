"""The ``jdl train`` subcommand writes loss curves as PNG and JSON."""

import json

import numpy as np
import pytest

from jdl.cli import main


def test_train_writes_png_and_json_and_resumes(tmp_path):
    common = ["train", "--model", "mlp", "--dataset", "iris", "--batch-size", "16",
              "--checkpoint-every", "2", "--out", str(tmp_path), "--quiet"]
    assert main([*common, "--epochs", "3"]) == 0
    assert (tmp_path / "checkpoint" / "checkpoint.msgpack").exists()
    assert main([*common, "--epochs", "5", "--resume"]) == 0
    report = json.loads((tmp_path / "history.json").read_text())
    loss = np.asarray(report["history"]["loss"], float)
    assert loss.shape == (5,) and np.isfinite(loss).all()
    assert 0 <= report["test"]["accuracy"] <= 1
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_cnn_restarts(tmp_path):
    argv = ["train", "--model", "cnn", "--dataset", "digits", "--hidden", "2", "--epochs", "2",
            "--restarts", "2", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "history.json").read_text())
    assert np.asarray(report["history"]["val_loss"], float).shape == (2, 2)
    assert report["best_restart"] in (0, 1) and len(report["val_losses"]) == 2
    assert (tmp_path / "loss.png").exists()


@pytest.mark.parametrize("argv,match", [
    (["--model", "cnn", "--dataset", "iris"], "needs --dataset digits"),
    (["--resume"], "--resume needs --checkpoint-every"),
    (["--epochs", "0"], "--epochs >= 1"),
])
def test_train_bad_arguments(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        main(["train", *argv, "--out", str(tmp_path)])
