"""The shop's pages."""

from __future__ import annotations

from django.urls import path
from shop import views

urlpatterns = [
    path("", views.home),
    path("login/<str:name>/", views.login_as),
    path("export/", views.export),
    path("rollback/", views.rollback),
    path("results/<str:result_id>/", views.result),
    path("aexport/", views.aexport),
    path("aresults/<str:result_id>/", views.aresult),
]
