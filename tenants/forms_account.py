"""Forms of the account pages: sign-in, second factor, two-factor enrolment and invitations."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError

from tenants.services_account import normalise_code, second_factor_throttled, second_factor_verify

WRONG_CODE = "That code is not valid. Check your authenticator app, or use an unused recovery code."
THROTTLED = "Too many wrong codes in a row: wait a few seconds, then try again with a new code."


class LoginForm(AuthenticationForm):
    """Username and password, checked by authenticate(request=...) so that failures are counted."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That username and password do not match an account. Both are case-sensitive.",
    }


def _code_field(label: str, help_text: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        max_length=32,
        help_text=help_text,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autocapitalize": "none", "autofocus": True}),
    )


class SecondFactorForm(forms.Form):
    """A code from the person's authenticator app or one of their recovery codes.

    Checking the code is part of validation, as authenticate() is for AuthenticationForm: a valid
    form leaves the accepting device in `device` (a recovery code is then used up), and `failed`
    tells the view that a wrong secret was presented, so that it can count the failure.
    """

    code = _code_field("Code", "The 6-digit code your authenticator app shows, or one of your recovery codes.")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.device = None
        self.failed = False

    def clean_code(self) -> str:
        code = normalise_code(self.cleaned_data["code"])
        if not code:
            raise ValidationError("Enter a code.")
        return self._verify(code)

    def _verify(self, code: str) -> str:
        # Asked first: during the back-off every code is refused, and saying "wrong" would mislead.
        throttled = second_factor_throttled(user=self.user, code=code)
        self.device = second_factor_verify(user=self.user, code=code)
        if self.device is None:
            self.failed = True
            raise ValidationError(THROTTLED if throttled else WRONG_CODE)
        return code


class TwoFactorDisableForm(SecondFactorForm):
    """The current password and a current code, both needed to turn two-factor authentication off."""

    password = forms.CharField(
        label="Current password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )
    field_order = ["password", "code"]

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            self.failed = True
            raise ValidationError("That is not your current password.")
        return password

    def clean_code(self) -> str:
        code = normalise_code(self.cleaned_data["code"])
        if not code:
            raise ValidationError("Enter a code.")
        # Only spend a code (a recovery code is used up) once the password is known to be right.
        if "password" not in self.cleaned_data:
            return code
        return self._verify(code)


class EnrolmentConfirmForm(forms.Form):
    """The code the newly added authenticator app shows, proving it holds the secret."""

    code = forms.RegexField(
        label="Code from the app",
        regex=r"^\s*\d{3}\s?\d{3}\s*$",
        error_messages={"invalid": "Enter the 6 digits your authenticator app shows."},
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
    )

    def clean_code(self) -> str:
        return normalise_code(self.cleaned_data["code"])


class InvitationSignupForm(forms.Form):
    """A new account for an invited person; the e-mail address comes from the invitation."""

    username = forms.CharField(
        max_length=150,
        validators=[UnicodeUsernameValidator()],
        help_text="Letters, digits and @ . + - _ only.",
        widget=forms.TextInput(attrs={"autocomplete": "username", "autocapitalize": "none", "autofocus": True}),
    )
    email = forms.EmailField(label="E-mail", widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=username).exists():
            raise ValidationError("This username is taken.")
        return username

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        password1, password2 = cleaned.get("password1"), cleaned.get("password2")
        if password1 and password2 and password1 != password2:
            self.add_error("password2", "The two passwords differ.")
        elif password1:
            # An unsaved user, so that the similarity check compares with the chosen name and address.
            candidate = get_user_model()(username=cleaned.get("username", ""), email=cleaned.get("email", ""))
            try:
                password_validation.validate_password(password1, user=candidate)
            except ValidationError as error:
                self.add_error("password1", error)
        return cleaned
