"""A Django 6 project on offload's django.tasks backend (tests/e2e/test_django.py)."""
