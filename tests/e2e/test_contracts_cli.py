"""`offload contracts export` and `check` as a project's CI runs them: real processes in a
project folder, its contracts edited between runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import SOURCES

APP = "shop.contracts:app"

#: The project's contracts as committed: two kinds at version 1.
V1 = """
from offload import App, Message

app = App("shop")


@app.message("shop.export", version=1, queue="reports")
class Export(Message):
    user_id: str
    period: str


@app.message("shop.ping", queue="reports")
class Ping(Message):
    pass
"""

#: An edit in place: a field removed, another made an int; shop.ping gone.
BROKEN_IN_PLACE = """
from offload import App, Message

app = App("shop")


@app.message("shop.export", version=1, queue="reports")
class Export(Message):
    period: int
"""

#: The same edit as version 2, with the upgrader from version 1 when `upgrader` is set.
VERSION_2 = """
from offload import App, Message

app = App("shop")


@app.message("shop.export", version=2, queue="reports")
class Export(Message):
    period: int

{upgrader}
"""

UPGRADER = """
@app.upgrade("shop.export", 1)
def year_only(payload):
    return {"period": int(payload["period"][:4])}
"""


class Project:
    """A project folder whose `shop/contracts.py` the test rewrites."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "shop").mkdir()
        (root / "shop" / "__init__.py").write_text("")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")},
            "PYTHONPATH": os.pathsep.join([str(root), str(SOURCES)]),
            # Rewritten within one second at the same size, a module could be read back
            # from a stale .pyc: write none.
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def write(self, source: str) -> None:
        (self.root / "shop" / "contracts.py").write_text(textwrap.dedent(source))

    def offload(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "offload", "contracts", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def export(self) -> None:
        done = self.offload("export", "--app", APP)
        assert done.returncode == 0, done.stderr
        (self.root / "contracts.json").write_text(done.stdout)

    def check(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.offload("check", "--app", APP, "contracts.json", *args)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def test_export_then_check_passes_until_the_code_breaks_the_snapshot(project: Project) -> None:
    # Given a committed snapshot of the contracts
    project.write(V1)
    project.export()
    done = project.check()
    assert (done.returncode, done.stdout) == (0, "contracts.json: 2 kinds, as recorded\n")

    # When a field is removed and another narrowed in place, and a kind is dropped
    project.write(BROKEN_IN_PLACE)
    done = project.check()

    # Then check fails with one line per problem naming kind, version and field
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "shop.export v1, field period: type changed from string to integer",
        "shop.export v1, field user_id: removed (or renamed)",
        "shop.ping v1: kind removed: its queued jobs would never run (drain them, then pass "
        "--allow-removed shop.ping)",
    ]
    assert "3 breaking changes against contracts.json" in done.stderr


def test_a_new_version_passes_with_its_upgrader_and_a_removed_kind_when_allowed(
    project: Project,
) -> None:
    project.write(V1)
    project.export()

    # A new version without the upgrader from the committed one fails.
    project.write(VERSION_2.format(upgrader=""))
    done = project.check("--allow-removed", "shop.ping")
    assert done.returncode == 1
    assert done.stdout.splitlines() == ["shop.export v2: no upgrader from v1 (the snapshot has v1)"]

    # With the upgrader it passes, once the removed kind is allowed, and says to export.
    project.write(VERSION_2.format(upgrader=UPGRADER))
    assert project.check().returncode == 1
    done = project.check("--allow-removed", "shop.ping")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no breaking change; export again to record the changes" in done.stdout
    # (HTTP clients that post the v1 body would be refused: it warns, field by field)
    assert done.stderr.splitlines() == [
        "warning: shop.export v2, field period: type changed from string to integer: "
        "clients that post the v1 body get 422",
        "warning: shop.export v2, field user_id: removed (or renamed): clients that post the "
        "v1 body get 422",
    ]

    # Exported again, the snapshot records version 2 and its upgrader.
    project.export()
    done = project.check()
    assert (done.returncode, done.stdout) == (0, "contracts.json: 1 kind, as recorded\n")
    assert '"upgrades_from": [\n        1\n      ]' in (project.root / "contracts.json").read_text()


def test_a_missing_or_foreign_snapshot_is_a_usage_error(project: Project) -> None:
    project.write(V1)
    done = project.check()
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot read contracts.json")
    (project.root / "contracts.json").write_text('{"kinds": {}}')
    done = project.check()
    assert done.returncode == 2
    assert "contracts.json is not an offload contracts snapshot" in done.stderr
    done = project.offload("export", "--app", "shop.nothing:app")
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot import 'shop.nothing'")
