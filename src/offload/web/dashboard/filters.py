"""The jobs page's filter: read from a query string or a form, turned into the App's
`JobFilter`, and written back into links (pagination, bulk actions)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from ..._options import MAX_OWNER_LENGTH
from ...contract import JobFilter, JobState
from ..problems import Problem

#: The longest value a filter field takes (ids, kinds, queues, search text); an owner's is
#: as long as an owner may be (`MAX_OWNER_LENGTH`).
MAX_FIELD_LENGTH = 200
#: Rows per page of the jobs list.
DEFAULT_PAGE_SIZE = 50


def _moment(name: str, value: str) -> datetime:
    """A `datetime-local` or `date` input's value (UTC, as the dashboard shows times), or
    an RFC 3339 date-time, as an aware datetime.

    Raises:
        Problem: 422 for anything else.
    """
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(
            422,
            f"{name} is not a date or date-time: {value[:40]!r}",
            slug="invalid-filter",
            errors=[{"loc": ["query", name], "msg": "expected a date or date-time"}],
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


@dataclass(frozen=True, slots=True)
class JobQuery:
    """What the operator filters by, as the form's fields hold it (empty: any)."""

    state: str = ""
    kind: str = ""
    queue: str = ""
    owner: str = ""
    created_after: str = ""
    created_before: str = ""
    id: str = ""
    text: str = ""

    @classmethod
    def of(cls, values: Mapping[str, str]) -> JobQuery:
        """The filter in a query string or form (other keys are ignored).

        Raises:
            Problem: 422 for an unknown state, a bad date or an over-long field.
        """
        fields = {}
        for f in dataclasses.fields(cls):
            value = str(values.get(f.name, "") or "").strip()
            if len(value) > (MAX_OWNER_LENGTH if f.name == "owner" else MAX_FIELD_LENGTH):
                raise Problem(422, f"{f.name} is too long", slug="invalid-filter")
            fields[f.name] = value
        query = cls(**fields)
        query.to_filter()  # refuse what cannot be one now, not when it is used
        return query

    def to_filter(self) -> JobFilter:
        """The App's filter of the same jobs.

        Raises:
            Problem: 422 for an unknown state or a bad date.
        """
        if self.state and self.state not in JobState.__members__.values():
            raise Problem(
                422,
                f"no job state {self.state[:40]!r}",
                slug="invalid-filter",
                errors=[{"loc": ["query", "state"], "msg": "not a job state"}],
            )
        after = _moment("created_after", self.created_after) if self.created_after else None
        before = _moment("created_before", self.created_before) if self.created_before else None
        try:
            return self._filter(after, before)
        except ValueError as exc:
            raise Problem(422, f"not a filter: {exc}", slug="invalid-filter") from None

    def _filter(self, after: datetime | None, before: datetime | None) -> JobFilter:
        return JobFilter(
            state=self.state or None,
            kind=self.kind or None,
            queue=self.queue or None,
            owner=self.owner or None,
            created_after=after,
            created_before=before,
            id_prefix=self.id or None,
            text=self.text or None,
        )

    def items(self) -> list[tuple[str, str]]:
        """The fields that filter something, as query-string pairs."""
        return [(k, v) for k, v in dataclasses.asdict(self).items() if v]

    def query_string(self, **extra: Any) -> str:
        """This filter (and `extra`) as a query string, without the `?`."""
        pairs = self.items() + [(k, str(v)) for k, v in extra.items() if v is not None]
        return urlencode(pairs)

    @property
    def empty(self) -> bool:
        return not self.items()

    def describe(self) -> str:
        """The filter in words, for confirmations: `state dead, kind reports.export`."""
        names = {"id": "id starting", "text": "message containing"}
        parts = [f"{names.get(k, k.replace('_', ' '))} {v}" for k, v in self.items()]
        return ", ".join(parts) or "every job"
