"""The check every study test makes of a finding (imported by the tests/test_studies_*.py)."""

from jdl import studies


def well_formed(finding, ctx):
    """Assert a known verdict and that each of the finding's figures was written; return it."""
    assert finding.verdict in studies.VERDICTS
    for fig in finding.figures:
        assert (ctx.out_dir / fig).stat().st_size > 0
    return finding
