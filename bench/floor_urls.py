"""Bench only, not the product: the portal's URLs plus three floor views for bench/api_floor.py.

Each view does less than an API request does, through the same middleware stack, so that the
steps between them show what each layer of an API request costs.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.models import Device


def plain(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def one_select(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"name": Device.objects.filter(pk=pk).values_list("name", flat=True).first()})


class Authenticated(APIView):
    """The API's default authentication (the bearer key), permission and throttles; no query of its own."""

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


urlpatterns = [
    path("bench/floor/django", plain),
    path("bench/floor/orm/<int:pk>", one_select),
    path("bench/floor/drf", Authenticated.as_view()),
    path("", include("portal.urls")),
]
