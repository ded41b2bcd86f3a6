"""The sqs:// URL: the SQS queue, its options, and the PostgreSQL store of the job rows."""

from __future__ import annotations

import pytest

pytest.importorskip("aioboto3")

from offload.brokers.sqs.backend import delay_s, outbox_store_url, parse_url
from offload.errors import ConfigurationError


def test_the_store_url_comes_last_and_keeps_its_own_query() -> None:
    queue, options, store = parse_url(
        "sqs://jobs?endpoint_url=http://127.0.0.1:4566&region=eu-west-1"
        "&store=postgresql://app@db:5432/app?sslmode=require&pool_size=5"
    )
    assert queue == "jobs"
    assert options == {"endpoint_url": "http://127.0.0.1:4566", "region": "eu-west-1"}
    assert store == "postgresql://app@db:5432/app?sslmode=require&pool_size=5"


def test_a_percent_encoded_store_may_come_anywhere() -> None:
    _, options, store = parse_url(
        "sqs://jobs?store=postgresql%3A%2F%2Fapp%40db%2Fapp%3Fsslmode%3Drequire&region=us-east-1"
    )
    assert store == "postgresql://app@db/app?sslmode=require"
    assert options == {"region": "us-east-1"}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqs://jobs?region=us-east-1", "job rows in PostgreSQL"),
        ("sqs://jobs?store=redis://127.0.0.1", "job rows in PostgreSQL"),
        ("sqs://?store=postgresql://db/app", "queue name is missing"),
        ("sqs://jobs?visibility=30&store=postgresql://db/app", "unknown sqs:// option"),
    ],
)
def test_a_url_without_what_the_broker_needs_is_refused(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        parse_url(url)


def test_the_store_connections_turn_the_outbox_on_and_keep_their_options() -> None:
    url = outbox_store_url("postgresql://app@db/app?options=-csearch_path%3Dx&sslmode=require")
    assert url == (
        "postgresql://app@db/app?sslmode=require"
        "&options=-csearch_path%3Dx%20-c%20offload.outbox%3Don"
    )


@pytest.mark.parametrize(
    ("run_at", "now", "delay"),
    [(100.0, 100.0, 0), (90.0, 100.0, 0), (100.2, 100.0, 1), (105.0, 100.0, 5), (5000.0, 0.0, 900)],
)
def test_a_message_is_delayed_until_its_job_is_due_at_most_fifteen_minutes(
    run_at: float, now: float, delay: int
) -> None:
    assert delay_s(run_at, now) == delay


def test_the_sdk_retries_briefly_unless_the_operator_chose_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from offload.brokers.sqs.backend import sdk_config

    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    assert sdk_config().retries == {"mode": "standard", "total_max_attempts": 2}
    assert (sdk_config().connect_timeout, sdk_config().read_timeout) == (2, 10)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")  # theirs: the SDK reads it (it was overridden)
    assert sdk_config().retries is None


def test_an_sqs_out_of_service_or_throttling_counts_as_not_answering() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    from offload.brokers.sqs.backend import _unanswered

    def refused(code: str, status: int) -> ClientError:
        answer = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(answer, "GetQueueUrl")  # type: ignore[arg-type]

    assert _unanswered(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert _unanswered(refused("InternalError", 500))
    assert _unanswered(refused("ThrottlingException", 400))
    assert not _unanswered(refused("AWS.SimpleQueueService.NonExistentQueue", 400))
    assert not _unanswered(refused("AccessDenied", 403))
    assert not _unanswered(NoCredentialsError())
