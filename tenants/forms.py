from django import forms

from tenants.models import Tenant
from tenants.roles import Role


class InviteForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=Role.choices, initial=Role.ADMIN)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class TenantSettingsForm(forms.Form):
    name = forms.CharField(max_length=200)
    display_name = forms.CharField(max_length=200, required=False, help_text="Shown in the portal's header.")
    accent_colour = forms.RegexField(
        regex=r"^#[0-9a-fA-F]{6}$",
        widget=forms.TextInput(attrs={"type": "color"}),
        error_messages={"invalid": "Use a colour like #1f6feb."},
    )


class LogoForm(forms.Form):
    logo = forms.FileField()


class SecurityForm(forms.Form):
    require_two_factor = forms.BooleanField(required=False, label="Require two-factor authentication for everyone")


class AuditFilterForm(forms.Form):
    action = forms.CharField(required=False, label="Action starts with")
    actor = forms.CharField(required=False)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    expires_on = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))


class TenantCreateForm(forms.Form):
    slug = forms.SlugField(max_length=50)
    name = forms.CharField(max_length=200)
    owner_email = forms.EmailField(required=False, help_text="The first owner receives an invitation.")

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"]
        if Tenant.objects.filter(slug=slug).exists():
            raise forms.ValidationError("A tenant with this slug exists.")
        return slug
