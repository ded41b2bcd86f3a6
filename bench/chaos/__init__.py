"""The fault-injection suite: real web and worker processes, random faults, then checks.

`python -m bench.chaos --engine sqlite|postgres|redis --seed N` runs one engine; `make chaos`
runs every engine and setting and writes the table to docs/guarantees.md.
"""
