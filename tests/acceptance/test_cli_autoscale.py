"""`offload worker --autoscale` refuses malformed bounds, durations and combinations with a
usage error (exit 2) that says what is wrong, before it starts anything."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from offload.cli import cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--autoscale", "0:3"), "MIN must be at least 1 (got 0)"),
        (("--autoscale", "4:2"), "MAX (2) must not be below MIN (4)"),
        (("--autoscale", "three"), "'three' is not MIN:MAX"),
        (("--autoscale", "1:3", "--processes", "2"), "--autoscale MIN:MAX or --processes N"),
        (("--autoscale", "1:3", "--max-jobs", "5"), "does not combine with --max-jobs"),
        (("--autoscale", "1:3", "--exit-when-idle", "5"), "or --exit-when-idle"),
        (("--autoscale", "1:3", "--target-wait", "soon"), "'soon' is not a duration"),
        (("--autoscale", "1:3", "--target-wait", "0ms"), "'--target-wait': must be above 0"),
        (("--autoscale", "1:3", "--metrics-port", "65533"), "up to N + MAX (65536)"),
        (("--autoscale", "1:3", "--scale-down-after", "1d"), "'1d' is not a duration"),
        # Without --autoscale they would do nothing.
        (("--target-wait", "2s"), "'--target-wait': only with --autoscale MIN:MAX"),
        (("--scale-down-after", "1m"), "'--scale-down-after': only with --autoscale MIN:MAX"),
    ],
)
def test_malformed_autoscale_flags_are_refused_with_the_reason(
    args: tuple[str, ...], message: str
) -> None:
    # The app is never loaded: the flags are refused first.
    result = CliRunner().invoke(cli, ["worker", "--app", "no.such.module:app", *args])
    assert result.exit_code == 2, result.output
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert message in text, text
