"""``jdl hessian``: spectrum summary of a small MLP written to JSON and PNG."""

import json

import numpy as np

from jdl import cli


def test_hessian_command_writes_json_and_png(tmp_path, capsys):
    status = cli.main(["hessian", "--dataset", "iris", "--hidden", "4", "--k", "2",
                       "--num-steps", "20", "--num-runs", "2", "--train-steps", "20",
                       "--out", str(tmp_path)])
    assert status == 0
    report = json.loads((tmp_path / "hessian_iris.json").read_text())
    assert report["parameters"] == 4 * 4 + 4 + 4 * 3 + 3
    assert report["training"]["loss_last"] < report["training"]["loss_first"]
    largest, smallest = np.array(report["largest"]), np.array(report["smallest"])
    assert np.all(np.diff(largest) <= 0) and np.all(np.diff(smallest) >= 0)
    assert largest[-1] >= smallest[-1]
    assert report["condition"]["lambda_max"] == largest[0]
    np.testing.assert_allclose(sum(report["top_eigenvector_mass"].values()), 1.0, rtol=1e-9)
    with open(tmp_path / "hessian_iris_density.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
