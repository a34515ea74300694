"""The licensing service's endpoints for portals, included under licensing/."""

from django.urls import path

from licensing import api

urlpatterns = [
    path("v1/reports/", api.reports, name="licensing-reports"),
    path("v1/erasures/", api.erasures, name="licensing-erasures"),
]
