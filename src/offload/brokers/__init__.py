"""Queue backends behind one seam; `open_backend(url)` picks one by URL scheme."""

from __future__ import annotations

from .base import Backend, Broker, Capability, JobStore
from .factory import name_memory, open_backend

__all__ = ["Backend", "Broker", "Capability", "JobStore", "name_memory", "open_backend"]
