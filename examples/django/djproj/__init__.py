"""A Django 6 project whose django.tasks backend is offload."""
