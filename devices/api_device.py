"""The REST side of the device protocol (docs/protocol.md): registration, token rotation, profile."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django.core.exceptions import ValidationError
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices import services
from devices.models import Device
from tenants.api_errors import error_body
from tenants.net import request_client_ip
from tenants.throttling import ResilientAnonRateThrottle


class DeviceTokenAuthentication(BaseAuthentication):
    """`Authorization: Device <token>`: the request acts as that device, not as any person."""

    def authenticate(self, request: Request) -> tuple[Any, Device] | None:
        scheme, _, token = get_authorization_header(request).decode("latin-1").partition(" ")
        if scheme.lower() != "device":
            return None
        device = services.device_authenticate(token=token.strip())
        if device is None:
            raise AuthenticationFailed("The device token is invalid or revoked.")
        return (None, device)

    def authenticate_header(self, request: Request) -> str:
        return 'Device realm="devices"'


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "devices.api_device.DeviceTokenAuthentication"
    name = "DeviceToken"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "The device token from registration: `Authorization: Device <token>`.",
        }


class IsDevice(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Device)


class RegistrationThrottle(ResilientAnonRateThrottle):
    scope = "device_registration"
    rate = "30/min"


def _device(request: Request) -> Device:
    """Return the device that DeviceTokenAuthentication authenticated (IsDevice guarantees one)."""
    assert isinstance(request.auth, Device)
    return request.auth


class RegisterSerializer(serializers.Serializer):
    tenant = serializers.SlugField()
    username = serializers.CharField(max_length=150)
    l_key = serializers.RegexField(r"^[0-9a-fA-F]{48}$")
    device_id = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    os = serializers.CharField(max_length=64, required=False, allow_blank=True)
    arch = serializers.CharField(max_length=32, required=False, allow_blank=True)
    client_version = serializers.CharField(max_length=32, required=False, allow_blank=True)
    timezone = serializers.CharField(max_length=64, required=False, allow_blank=True)


def _registration_error(error: services.RegistrationError) -> Response:
    return Response(error_body(error.code, error.message), status=error.status)


class RegisterView(APIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes = [AllowAny]
    throttle_classes = [RegistrationThrottle]

    @extend_schema(
        request=RegisterSerializer,
        responses={
            201: inline_serializer(
                "Registration",
                {
                    "device_id": serializers.CharField(),
                    "token": serializers.CharField(),
                    "protocol_version": serializers.IntegerField(),
                },
            )
        },
        tags=["device"],
    )
    def post(self, request: Request) -> Response:
        serializer = RegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            registration = services.device_register(
                tenant_slug=data["tenant"],
                username=data["username"],
                l_key_hex=data["l_key"],
                device_id=data["device_id"],
                inventory=data,
                ip_address=request_client_ip(request.META),
            )
        except services.RegistrationError as error:
            return _registration_error(error)
        body = {"device_id": registration.device.device_id, "token": registration.token, "protocol_version": 1}
        return Response(body, status=status.HTTP_201_CREATED)


class TokenRotateView(APIView):
    authentication_classes = [DeviceTokenAuthentication]
    permission_classes = [IsDevice]

    @extend_schema(
        request=None, responses={200: inline_serializer("Token", {"token": serializers.CharField()})}, tags=["device"]
    )
    def post(self, request: Request) -> Response:
        return Response({"token": services.device_token_rotate(device=_device(request))})


class ProfileSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=0)
    secrets = serializers.CharField(allow_blank=True, help_text="Base64; opaque to the server.")


class ProfileView(APIView):
    authentication_classes = [DeviceTokenAuthentication]
    permission_classes = [IsDevice]

    @extend_schema(responses={200: ProfileSerializer}, tags=["device"])
    def get(self, request: Request) -> Response:
        account = _device(request).account
        account.refresh_from_db(fields=["profile_secrets", "profile_secrets_version"])
        secrets = base64.b64encode(bytes(account.profile_secrets)).decode()
        return Response({"version": account.profile_secrets_version, "secrets": secrets})

    @extend_schema(request=ProfileSerializer, responses={200: ProfileSerializer}, tags=["device"])
    def put(self, request: Request) -> Response:
        serializer = ProfileSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            blob = base64.b64decode(serializer.validated_data["secrets"], validate=True)
        except (binascii.Error, ValueError):
            return Response(error_body("invalid", "'secrets' must be base64."), status=400)
        try:
            version = services.profile_secrets_put(
                device=_device(request), version=serializer.validated_data["version"], secrets_blob=blob
            )
        except services.RegistrationError as error:
            return _registration_error(error)
        except ValidationError as error:
            return Response(error_body("invalid", " ".join(error.messages)), status=400)
        return Response({"version": version, "secrets": serializer.validated_data["secrets"]})


class PasswordChangeSerializer(serializers.Serializer):
    old_l_key = serializers.RegexField(r"^[0-9a-fA-F]{48}$", help_text="L of the current password.")
    new_l_key = serializers.RegexField(r"^[0-9a-fA-F]{48}$", help_text="L of the new password.")
    version = serializers.IntegerField(min_value=0, help_text="The profile version the secrets were sealed from.")
    secrets = serializers.CharField(allow_blank=True, help_text="Base64: the profile secrets sealed under the new R.")


class PasswordChangeView(APIView):
    """Change the account's password from a device: new L and re-sealed profile secrets, swapped together."""

    authentication_classes = [DeviceTokenAuthentication]
    permission_classes = [IsDevice]
    throttle_classes = [RegistrationThrottle]

    @extend_schema(request=PasswordChangeSerializer, responses={200: ProfileSerializer}, tags=["device"])
    def post(self, request: Request) -> Response:
        serializer = PasswordChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            blob = base64.b64decode(data["secrets"], validate=True)
        except (binascii.Error, ValueError):
            return Response(error_body("invalid", "'secrets' must be base64."), status=400)
        try:
            version = services.account_password_change_by_device(
                device=_device(request),
                old_l_key_hex=data["old_l_key"],
                new_l_key_hex=data["new_l_key"],
                version=data["version"],
                secrets_blob=blob,
            )
        except services.RegistrationError as error:
            return _registration_error(error)
        except ValidationError as error:
            return Response(error_body("invalid", " ".join(error.messages)), status=400)
        return Response({"version": version, "secrets": data["secrets"]})
