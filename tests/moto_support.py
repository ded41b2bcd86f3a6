"""A real AWS API on loopback for tests: moto's server mode (S3, SQS …), one per session.

Use the `moto_endpoint` fixture (import it into a test module or a conftest): it starts
`moto.server.ThreadedMotoServer` on 127.0.0.1 and a free port, points the standard AWS
environment at dummy credentials while it runs, and stops the server after the session.
Where moto is not installed the tests that use it are skipped, or fail under
OFFLOAD_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from .services import unavailable

#: What the AWS SDKs read while the server runs: moto accepts any credentials, and none
#: of the developer's real ones should reach even a loopback server.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_UNSET = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """`http://127.0.0.1:PORT` of a moto server that serves every AWS service it mocks."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable("moto server", f"{exc} (pip install 'moto[server]')")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # 0: a free port
    server.start()
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_TEST_ENV.items():
            env.setenv(name, value)
        for name in _UNSET:
            env.delenv(name, raising=False)
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def unique_bucket(stem: str = "offload-t") -> str:
    """A bucket name no other test uses (the server is shared by the session)."""
    return f"{stem}-{secrets.token_hex(5)}"


async def create_bucket(endpoint: str, bucket: str) -> None:
    """Make `bucket` on the moto server at `endpoint`."""
    import aioboto3

    async with aioboto3.Session().client("s3", endpoint_url=endpoint) as s3:
        await s3.create_bucket(Bucket=bucket)
