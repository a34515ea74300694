"""Shapes of the REST API's requests and responses. Serializers validate and present; they never write:
writes go through tenants.services."""

from __future__ import annotations

import unicodedata

from rest_framework import serializers

from tenants.models import ApiKey, AuditEvent, Invitation, Membership, Tenant
from tenants.roles import Role


def single_line(value: str) -> None:
    """Refuse control characters and line breaks: a tenant's name goes into e-mail subject lines."""
    if any(unicodedata.category(character) in ("Cc", "Zl", "Zp") for character in value):
        raise serializers.ValidationError("Use one line of text, without control characters.")


# --- Team -----------------------------------------------------------------------------------


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    # Not an EmailField: an account made without an address has an empty one.
    email = serializers.CharField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "username", "email", "role", "created_at"]
        read_only_fields = fields


class MembershipRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationSerializer(serializers.ModelSerializer):
    """An invitation as the API shows it: never its token or link, which go to the invitee by e-mail."""

    email = serializers.CharField(read_only=True)

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "expires_at"]
        read_only_fields = fields


class InvitationCreateSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices)


# --- Settings -------------------------------------------------------------------------------


class TenantSettingsSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["slug", "name", "display_name", "accent_colour", "require_two_factor"]
        read_only_fields = fields


class TenantSettingsUpdateSerializer(serializers.Serializer):
    """A partial update: fields left out keep their current values."""

    name = serializers.CharField(max_length=200, required=False, validators=[single_line])
    display_name = serializers.CharField(max_length=200, required=False, allow_blank=True, validators=[single_line])
    # Surrounding whitespace is trimmed first; the length bound keeps anything `$` lets through out.
    accent_colour = serializers.RegexField(r"^#[0-9a-fA-F]{6}$", max_length=7, required=False)


class TwoFactorPolicySerializer(serializers.Serializer):
    require_two_factor = serializers.BooleanField()


# --- Audit log ------------------------------------------------------------------------------


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label", read_only=True)
    ip_address = serializers.CharField(read_only=True, allow_null=True)
    before = serializers.JSONField(read_only=True, allow_null=True)
    after = serializers.JSONField(read_only=True, allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "actor_role",
            "action",
            "target_type",
            "target_id",
            "ip_address",
            "user_agent",
            "before",
            "after",
        ]
        read_only_fields = fields


class AuditEventQuerySerializer(serializers.Serializer):
    """The audit log's filters, read from the query string."""

    action = serializers.CharField(required=False, max_length=64, help_text="Actions that start with this.")
    actor = serializers.CharField(required=False, max_length=150, help_text="Actors whose name contains this.")
    since = serializers.DateTimeField(required=False, help_text="Events at or after this time (ISO 8601).")
    until = serializers.DateTimeField(required=False, help_text="Events before this time (ISO 8601).")


# --- API keys -------------------------------------------------------------------------------


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]
        read_only_fields = fields


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself. It is shown this once and never again.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, help_text="Leave out for no expiry.")


# --- The caller -----------------------------------------------------------------------------


class MyMembershipSerializer(serializers.ModelSerializer):
    tenant_slug = serializers.CharField(source="tenant.slug", read_only=True)
    tenant_name = serializers.CharField(source="tenant.name", read_only=True)

    class Meta:
        model = Membership
        fields = ["tenant_slug", "tenant_name", "role"]
        read_only_fields = fields


class MeSerializer(serializers.Serializer):
    username = serializers.CharField(read_only=True)
    memberships = MyMembershipSerializer(many=True, read_only=True)


# --- Platform -------------------------------------------------------------------------------


class PlatformTenantSerializer(serializers.ModelSerializer):
    """What platform staff see of a tenant: its identity and size, none of its data."""

    member_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Tenant
        fields = ["id", "slug", "name", "status", "created_at", "member_count"]
        read_only_fields = fields


class PlatformTenantCreateSerializer(serializers.Serializer):
    slug = serializers.SlugField(max_length=50)
    name = serializers.CharField(max_length=200, validators=[single_line])
    owner_email = serializers.EmailField(
        max_length=254, required=False, allow_blank=True, help_text="If given, this address is invited as owner."
    )
