"""Which delivery jobs a job's final state calls for, re-exported: the planning lives in
`notify.targets`, beside the rule for what a target is."""

from __future__ import annotations

from .targets import DELIVERY_KINDS, follow_ups, follow_ups_of_row, targets

__all__ = ["DELIVERY_KINDS", "follow_ups", "follow_ups_of_row", "targets"]
