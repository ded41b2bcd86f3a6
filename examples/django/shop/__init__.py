"""The shop: a report export as a django.tasks task, the pages that start it and show it."""
