"""A small app used by the end-to-end tests: contracts and handlers in separate modules."""
