"""What callers see of a job: status records with blob references turned into signed links."""

from __future__ import annotations

from .._links import Presenter, blob_refs

__all__ = ["Presenter", "blob_refs"]
