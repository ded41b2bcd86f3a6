"""Benchmarks shipped with offload: `offload bench burst` (and the helpers bench/ scripts use)."""
