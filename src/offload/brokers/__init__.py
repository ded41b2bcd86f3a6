"""Queue backends behind one seam; `open_backend(url)` picks one by URL scheme."""

from __future__ import annotations

from .base import Backend, Broker, Capability, JobStore
from .factory import open_backend

__all__ = ["Backend", "Broker", "Capability", "JobStore", "open_backend"]
