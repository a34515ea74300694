"""The personal-data registry covers every tenant-owned model that can hold personal data, so a new
model cannot be forgotten by export, erasure or the residue scan."""

from __future__ import annotations

from django.apps import apps
from django.db import models

from tenants import personal_data
from tenants.models import Tenant

OUR_APPS = ("tenants", "devices", "licensing")
PERSONAL_TYPES = (
    models.CharField,
    models.TextField,
    models.GenericIPAddressField,
    models.JSONField,
    models.BinaryField,
)


def _tenant_owned(model, seen=None) -> bool:
    """Return whether rows of the model belong to a tenant: a foreign key to Tenant, or to a model that does."""
    seen = seen or set()
    if model in seen:
        return False
    seen.add(model)
    for field in model._meta.concrete_fields:
        if isinstance(field, models.ForeignKey):
            target = field.related_model
            if target is Tenant or _tenant_owned(target, seen):
                return True
    return False


def _personal_fields(model) -> list[str]:
    return [field.name for field in model._meta.concrete_fields if isinstance(field, PERSONAL_TYPES)]


def test_it_covers_every_tenant_owned_model_with_personal_fields():
    covered, exempt = personal_data.covered_models(), set(personal_data.EXEMPT)
    forgotten = []
    for model in apps.get_models():
        label = model._meta.label
        if model._meta.app_label not in OUR_APPS or not (_tenant_owned(model) or model is Tenant):
            continue
        if label in covered or label in exempt:
            continue
        fields = [name for name in _personal_fields(model) if f"{label}.{name}" not in exempt]
        if fields:
            forgotten.append(f"{label} ({', '.join(fields)})")
    assert not forgotten, (
        "These models hold text, JSON or addresses about a tenant's people but no personal-data handler "
        f"covers them (register one in the app's personal_data.py, or exempt them with a reason): {forgotten}"
    )


def test_it_would_notice_a_forgotten_model():
    """The check above is not vacuous: a tenant-owned model with a text field, covered by nobody, is found."""

    class Note(models.Model):
        tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)
        text = models.TextField()

        class Meta:
            app_label = "tenants"

    assert _tenant_owned(Note) and _personal_fields(Note) == ["text"]
    assert Note._meta.label not in personal_data.covered_models() | set(personal_data.EXEMPT)
    apps.all_models["tenants"].pop("note", None)
    apps.clear_cache()


def test_it_names_only_models_that_exist_and_registers_from_each_app():
    labels = {model._meta.label for model in apps.get_models()}
    assert personal_data.covered_models() <= labels
    fields = {f"{model._meta.label}.{field.name}" for model in apps.get_models() for field in model._meta.fields}
    stale = set(personal_data.EXEMPT) - labels - fields
    assert not stale, f"Exemptions name models or fields that do not exist: {stale}"
    assert all(reason.strip() for reason in personal_data.EXEMPT.values())
    assert {handler.name for handler in personal_data.handlers()} >= {"devices", "records", "team"}
    kinds = {kind for handler in personal_data.handlers() for kind in handler.kinds}
    assert {"backup_account", "admin"} <= kinds
