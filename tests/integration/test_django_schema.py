"""offload.contrib.django on the same PostgreSQL database as Django, in another schema:
the enqueue must not be written on Django's connection (whose search_path lacks offload's
tables) but stored after the commit. A subprocess, so its Django settings are its own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from ..services import PG_URL, PgSchema, require_pg

pytest.importorskip("django", minversion="6.0")
pytestmark = pytest.mark.postgres

SCRIPT = """
import sys
import django
from django.conf import settings

host, port, name, user, url = sys.argv[1:]
settings.configure(
    USE_TZ=True,
    INSTALLED_APPS=["offload.contrib.django"],
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": user,
        "HOST": host, "PORT": port, "OPTIONS": {"options": "-c search_path=app_schema"},
    }},
    TASKS={"default": {"BACKEND": "offload.contrib.django.OffloadBackend",
                       "OPTIONS": {"url": url}}},
)
django.setup()
from django.db import transaction
from django.tasks import task, task_backends

@task()
def add(a: int, b: int) -> int:
    return a + b

with transaction.atomic():
    result = add.enqueue(1, 2)
print(task_backends["default"].get_result(result.id).status)
"""


@pytest.fixture
def offload_schema() -> Iterator[str]:
    require_pg()
    schema = PgSchema()
    url = schema.create_sync()
    try:
        yield url
    finally:
        schema.drop_sync()


def test_same_database_other_schema_enqueues_after_the_commit(offload_schema: str) -> None:
    parts = urlsplit(PG_URL)
    args = [
        parts.hostname or "localhost",
        str(parts.port or 5432),
        parts.path.lstrip("/"),
        parts.username or "",
        offload_schema,
    ]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "READY"
