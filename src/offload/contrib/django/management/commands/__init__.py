"""`manage.py offload_worker`."""
