"""The shop's pages and Django's own sign-in and sign-out views."""

from django.contrib.auth import views as auth_views
from django.urls import path

from shop import views

urlpatterns = [
    path("", views.home, name="home"),
    path("exports/", views.export, name="export"),
    path("exports/<str:result_id>/", views.export_status, name="export-status"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]
