"""offload as cloud functions: the web tier as an HTTP function, the worker queue-triggered."""
