"""The claims framework: findings, the registry, the runner, the report and ``jdl claims``."""

import json

import pytest

from jdl import cli, studies
from jdl.studies import report, runner
from jdl.studies.registry import CAVEAT, ERROR, FAILS, HOLDS, REGISTRY, Context, Finding, study


@pytest.fixture
def toy_studies():
    """Two registered toy studies (one passes, one raises), removed afterwards."""

    @study("toy.square", "Toy", "these numbers are non-negative")
    def square(ctx, values=(2.0, 3.0)):
        smallest = min(values)
        return Finding(verdict=HOLDS if smallest >= 0 else FAILS, summary=f"min {smallest}",
                       method="look at the numbers", numbers={"smallest": smallest},
                       threshold="holds if every number >= 0",
                       caveat="" if smallest >= 0 else "a negative number was found")

    @study("toy.crash", "Toy", "this study crashes")
    def crash(ctx):
        raise RuntimeError("boom")

    yield square
    del REGISTRY["toy.square"], REGISTRY["toy.crash"]


def test_finding_validates_verdict_and_caveat():
    with pytest.raises(ValueError, match="expected verdict"):
        Finding("maybe", "s", "m", {}, "t")
    with pytest.raises(ValueError, match="needs a caveat"):
        Finding(CAVEAT, "s", "m", {}, "t")


def test_duplicate_id_rejected(toy_studies):
    with pytest.raises(ValueError, match="registered twice"):
        study("toy.square", "Toy", "again")(lambda ctx: None)


def test_context_pick_and_keys(tmp_path):
    ctx = Context(mode="tiny", out_dir=tmp_path)
    assert ctx.pick(1, 2, 3) == 1
    assert (ctx.key("a") == ctx.key("a")) and not (ctx.key("a") == ctx.key("b"))
    with pytest.raises(ValueError, match="mode"):
        Context(mode="huge")


def test_runner_records_errors_and_keeps_going(toy_studies, tmp_path):
    ctx = Context(mode="tiny", out_dir=tmp_path)
    records = runner.run_studies(runner.select(["toy.crash", "toy.square"]), ctx, progress=False)
    assert [r.verdict for r in records] == [ERROR, HOLDS]
    assert "RuntimeError: boom" in records[0].traceback
    report.write(records, tmp_path, {"mode": "tiny"})
    payload = json.loads((tmp_path / "report.json").read_text())
    assert payload["counts"][HOLDS] == 1 and payload["counts"][ERROR] == 1
    md = (tmp_path / "report.md").read_text()
    assert "## toy.square" in md and "RuntimeError: boom" in md
    assert "toy.crash" in report.summary(records)


def test_verdict_flips_on_a_failing_case(toy_studies, tmp_path):
    ctx = Context(mode="tiny", out_dir=tmp_path)
    assert toy_studies(ctx).verdict == HOLDS
    assert toy_studies(ctx, values=(-2.0, 1.0)).verdict == FAILS
    assert runner.run_study(REGISTRY["toy.square"], ctx).verdict == HOLDS


def test_unknown_id_lists_valid_ones(toy_studies):
    with pytest.raises(ValueError, match="valid ids are: .*toy.square"):
        runner.select(["nope"])


def test_cli_unknown_id_and_unwritable_folder(toy_studies, tmp_path, capsys):
    assert cli.main(["claims", "--only", "nope", "--out", str(tmp_path)]) == 2
    assert "toy.square" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match="cannot write"):
        cli.main(["claims", "--only", "toy.square", "--out", str(blocker / "sub")])


def test_cli_writes_report(toy_studies, tmp_path, capsys):
    status = cli.main(["claims", "--tiny", "--only", "toy.square", "toy.crash",
                       "--out", str(tmp_path), "--no-progress"])
    assert status == 1  # a study error fails the run
    payload = json.loads((tmp_path / "report.json").read_text())
    assert [c["id"] for c in payload["claims"]] == ["toy.square", "toy.crash"]
    assert "errors" in capsys.readouterr().out


def test_interrupted_run_keeps_finished_studies(toy_studies, tmp_path, monkeypatch):
    def interrupt(ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(REGISTRY, "toy.crash", studies.Study("toy.crash", "Toy", "c", interrupt))
    status = cli.main(["claims", "--only", "toy.square", "toy.crash", "--out", str(tmp_path),
                       "--no-progress"])
    assert status == 130
    payload = json.loads((tmp_path / "report.json").read_text())
    assert [c["id"] for c in payload["claims"]] == ["toy.square"]
    assert "interrupted" in payload["meta"]
