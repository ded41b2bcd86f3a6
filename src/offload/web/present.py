"""What callers see of a job: status records with blob references turned into signed links,
and every link under the path the web tier is mounted at."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from .._links import Presenter, result_refs

__all__ = ["Presenter", "presenter_of", "result_refs", "root_of"]


def root_of(conn: HTTPConnection) -> str:
    """The path the web tier is mounted at (the ASGI `root_path`), without a final slash:
    empty when it serves at the root."""
    root: str = conn.scope.get("root_path", "")
    return root.rstrip("/")


def presenter_of(conn: HTTPConnection) -> Presenter:
    """The web tier's presenter for this request: its links start with the mount path."""
    present: Presenter = conn.app.state.present
    return present.at(root_of(conn))
