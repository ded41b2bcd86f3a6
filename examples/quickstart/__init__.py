"""A small offload app: message classes in contracts.py, handlers in worker.py."""
