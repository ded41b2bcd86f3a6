"""The management commands of `offload.contrib.django`."""
