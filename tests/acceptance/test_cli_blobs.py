"""`offload worker` checks its blob store at start-up: a missing bucket or an unwritable
folder is one line and a non-zero exit, not a worker whose jobs later die one by one; and
the banner says where the blobs go."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from offload import App, Context, Message, Settings
from offload.cli import cli

from ..moto_support import create_bucket, moto_endpoint, unique_bucket

__all__ = ["moto_endpoint"]

APP_REF = f"{__name__}:app"
app = App("cli-blobs")


@app.message("blobs.report")
class Report(Message):
    period: str


@app.handles(Report)
def report(msg: Report, ctx: Context) -> None:
    return None


@pytest.fixture(autouse=True)
def fresh_settings(workdir: Path) -> None:
    app.configure(Settings.from_env())


def worker(blobs_url: str, *args: str) -> Result:
    env = {"OFFLOAD_BLOBS_URL": blobs_url, "OFFLOAD_SECRET_KEY": "k" * 32}
    app.configure(Settings.from_env(env))
    args = args or ("--exit-when-idle", "0")
    return CliRunner().invoke(cli, ["worker", "--app", APP_REF, *args], env=env)


def blobs_field(output: str) -> str:
    shown = [line.split(None, 1)[1] for line in output.splitlines() if line.startswith("  blobs ")]
    assert len(shown) == 1, output
    return shown[0].strip()


@pytest.mark.parametrize("args", [(), ("--autoscale", "1:2")], ids=["worker", "autoscaled"])
def test_a_worker_with_a_missing_bucket_stops_with_one_line(
    moto_endpoint: str, args: tuple[str, ...]
) -> None:
    url = f"s3://no-such-bucket/offload?endpoint_url={moto_endpoint}&addressing_style=path"
    result = worker(url, *args)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last == (
        f"error: blob store s3://no-such-bucket/offload at {moto_endpoint}: "
        "the bucket does not exist (NoSuchBucket)"
    )
    assert "worker started" not in result.output


def test_a_worker_with_a_good_bucket_shows_it_in_its_banner(moto_endpoint: str) -> None:
    bucket = unique_bucket()
    asyncio.run(create_bucket(moto_endpoint, bucket))
    result = worker(f"s3://{bucket}/jobs?endpoint_url={moto_endpoint}")
    assert result.exit_code == 0, result.output
    assert blobs_field(result.output) == f"s3://{bucket}/jobs at {moto_endpoint}"
    assert "testing" not in result.output  # the fixture's credentials are never shown


def test_a_worker_shows_its_blob_folder_resolved(workdir: Path) -> None:
    result = worker("files/blobs")
    assert result.exit_code == 0, result.output
    assert blobs_field(result.output) == str(workdir / "files" / "blobs")
    assert (workdir / "files" / "blobs").is_dir()  # made at start-up, probe file gone
    assert list((workdir / "files" / "blobs").iterdir()) == []


def test_a_worker_whose_blob_folder_cannot_be_made_stops_with_one_line(workdir: Path) -> None:
    (workdir / "a-file").write_text("not a folder")
    result = worker("a-file/blobs")
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"error: blob store folder {workdir / 'a-file' / 'blobs'} ")
    assert "not writable" in last
