from datetime import timedelta

from django import forms

from tenants.models_access import AREA_CHOICES, AccessPolicy, AccessRequest

DURATION_CHOICES = [
    (minutes, f"{minutes // 60} h" if minutes >= 60 else f"{minutes} min")
    for minutes in (15, 30, 60, 120, 240, 480, 720, 1440)
]


def minutes(value: int) -> timedelta:
    return timedelta(minutes=value)


class AccessRequestForm(forms.Form):
    tenant = forms.IntegerField(widget=forms.HiddenInput)
    reason_code = forms.ChoiceField(label="Reason", choices=AccessRequest.Reason.choices)
    ticket_reference = forms.CharField(max_length=100, required=False, label="Ticket")
    justification = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Shown to the tenant.")
    areas = forms.MultipleChoiceField(choices=AREA_CHOICES, widget=forms.CheckboxSelectMultiple)
    scope_write = forms.BooleanField(required=False, label="Also make changes (read-only otherwise)")
    duration_minutes = forms.TypedChoiceField(
        label="Duration", choices=DURATION_CHOICES, coerce=int, initial=240, required=False
    )


class BreakGlassForm(forms.Form):
    tenant = forms.IntegerField(widget=forms.HiddenInput)
    incident_id = forms.CharField(max_length=100, label="Incident id")
    justification = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Shown to the tenant.")
    areas = forms.MultipleChoiceField(choices=AREA_CHOICES, widget=forms.CheckboxSelectMultiple)
    scope_write = forms.BooleanField(required=False, label="Also make changes (read-only otherwise)")


class ApproveForm(forms.Form):
    duration_minutes = forms.TypedChoiceField(label="For", choices=DURATION_CHOICES, coerce=int, required=False)
    areas = forms.MultipleChoiceField(choices=AREA_CHOICES, widget=forms.CheckboxSelectMultiple, required=False)
    read_only = forms.BooleanField(required=False, label="Read-only")


class DenyForm(forms.Form):
    note = forms.CharField(max_length=300, required=False)


class ConsentLogFilterForm(forms.Form):
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    grant = forms.IntegerField(required=False, min_value=1)


class AccessPolicyForm(forms.Form):
    default_minutes = forms.TypedChoiceField(label="Usual length", choices=DURATION_CHOICES, coerce=int)
    max_minutes = forms.TypedChoiceField(label="Longest grant", choices=DURATION_CHOICES, coerce=int)
    approvers = forms.ChoiceField(choices=AccessPolicy.Approvers.choices, label="Who approves")
    allow_break_glass = forms.BooleanField(
        required=False, label="Allow break-glass access (approved by a second staff member, at most 1 h)"
    )
