"""The project's ASGI app (`uvicorn djproj.asgi:application`): Django, with offload's status
API mounted at /offload for the signed-in user (their own jobs only)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")
django_app = get_asgi_application()

from offload.contrib.django.asgi import mount  # noqa: E402  (after Django is set up)

application = mount(django_app, prefix="/offload")
