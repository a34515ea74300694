"""The tenant page of licensing, included under t/<tenant_slug>/."""

from django.urls import path

from licensing import views

urlpatterns = [path("usage/", views.tenant_usage, name="tenant-usage")]
