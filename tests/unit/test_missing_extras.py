"""A feature whose extra is not installed says which extra to install, not a bare
ModuleNotFoundError of a package the user never named (the packages are hidden here as
pip would have left them out: `None` in sys.modules)."""

from __future__ import annotations

import importlib
import sys

import pytest

from offload.brokers import open_backend
from offload.errors import ConfigurationError


def _forget(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Have the next import of `packages` (and their submodules) run again."""
    for name in list(sys.modules):
        if name.partition(".")[0] in packages or name.startswith(packages):
            monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize("missing", ["mangum", "aioboto3", "psycopg"])
def test_the_aws_functions_name_their_extras(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    _forget(monkeypatch, "offload.serverless", "offload.brokers.sqs", "offload.brokers.postgres")
    _forget(monkeypatch, missing)
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ImportError, match=rf"needs '{missing}' .*offload\[aws,postgres\]"):
        importlib.import_module("offload.serverless.aws")


def test_the_django_integration_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _forget(monkeypatch, "offload.contrib.django", "django")
    monkeypatch.setitem(sys.modules, "django", None)
    with pytest.raises(ImportError, match=r"needs Django 6 .*offload\[django\]"):
        importlib.import_module("offload.contrib.django")


@pytest.mark.parametrize(
    ("url", "package", "extra"),
    [
        ("postgresql://127.0.0.1/test", "psycopg", "postgres"),
        ("redis://127.0.0.1:6379/0", "redis", "redis"),
        ("sqs://jobs?store=postgresql://127.0.0.1/test", "aioboto3", "aws,postgres"),
    ],
)
def test_a_backend_url_names_its_extra_wherever_it_came_from(
    monkeypatch: pytest.MonkeyPatch, url: str, package: str, extra: str
) -> None:
    _forget(monkeypatch, "offload.brokers.postgres", "offload.brokers.redis", "offload.brokers.sqs")
    _forget(monkeypatch, package)
    monkeypatch.setitem(sys.modules, package, None)
    says = rf"the backend URL \(OFFLOAD_URL, --url or url=\) names .*offload\[{extra}\]"
    with pytest.raises(ConfigurationError, match=says):
        open_backend(url)


def test_import_offload_loads_no_web_client_server_or_driver() -> None:
    # A script that enqueues, and the command line's --help, start without them
    import subprocess

    heavy = ("httpx", "fastapi", "starlette", "jinja2", "uvicorn", "rich", "psycopg", "redis")
    code = f"import sys, offload; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
