"""Pages about a person's own account: home, sign-in with a second factor, password, two-factor
enrolment and invitation acceptance.

None of these pages is under a tenant, so TenantMiddleware leaves them alone: a person whose tenant
requires two-factor authentication is sent here to enrol and must be able to use them.

Wrong second-factor codes are counted by django-axes as failed sign-ins (the same username + address
counter as wrong passwords, AXES_FAILURE_LIMIT within AXES_COOLOFF_TIME). A counter in the session
would be reset by signing in with the password again; a separate cache counter would be a second
lockout with its own settings and its own page. django-otp's per-device back-off stays on as well
and slows down guessing spread over many addresses.
"""

from __future__ import annotations

import time
from base64 import b32encode
from typing import Any

import segno
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_lockout_response
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth import login as auth_login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.signals import user_login_failed
from django.contrib.auth.views import PasswordChangeView
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse_lazy
from django.utils.crypto import constant_time_compare
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST
from django_otp import login as otp_login
from django_otp.plugins.otp_static.models import StaticDevice

from tenants import services_account
from tenants.audit import actor_from_request
from tenants.forms_account import (
    EnrolmentConfirmForm,
    InvitationSignupForm,
    LoginForm,
    SecondFactorForm,
    TwoFactorDisableForm,
)
from tenants.models import AuthenticatorDevice
from tenants.net import request_client_ip
from tenants.selectors import invitation_by_token, memberships_for_user
from tenants.services import invitation_accept as invitation_accept_service
from tenants.services import user_create_for_invitation

# Between a correct password and a correct second factor the person is not signed in; the session
# only remembers who they claim to be, for a few minutes.
PENDING_LOGIN_KEY = "account_pending_login"
PENDING_LOGIN_SECONDS = 5 * 60
# Recovery codes are shown once, on the page after the one that created them.
NEW_RECOVERY_CODES_KEY = "account_new_recovery_codes"
PASSWORD_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _next_url(request: HttpRequest, default: str = "home") -> str:
    """Return the `next` parameter if it points into this site, else the default page."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return resolve_url(default)


def _lockout_response(request: HttpRequest, username: str) -> HttpResponse | None:
    """Return django-axes' lockout page if `username` is locked out from this address, else None."""
    credentials = {"username": username}
    if AxesProxyHandler.is_locked(request, credentials):
        return get_lockout_response(request, None, credentials)
    return None


def _second_factor_failed(request: HttpRequest, username: str) -> None:
    """Count a wrong code as a failed sign-in, as a wrong password is; the fifth one locks."""
    user_login_failed.send(sender=__name__, credentials={"username": username}, request=request)
    _record_if_just_locked(request, username)


def _record_if_just_locked(request: HttpRequest, username: str) -> None:
    # axes sets the count only when it recorded a failure; it equals the limit once, at the lock.
    if getattr(request, "axes_failures_since_start", None) == settings.AXES_FAILURE_LIMIT:
        services_account.login_lockout_record(
            username=username,
            ip_address=request_client_ip(request.META),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
        )


# --- Home -----------------------------------------------------------------------------------


@login_required
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_staff:
        return redirect("platform-dashboard")
    memberships = list(memberships_for_user(user=request.user))
    if len(memberships) == 1:
        return redirect("tenant-dashboard", tenant_slug=memberships[0].tenant.slug)
    return render(request, "account/home.html", {"memberships": memberships})


# --- Sign-in --------------------------------------------------------------------------------


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
def login(request: HttpRequest) -> HttpResponse:
    next_url = _next_url(request)
    if request.user.is_authenticated and request.method != "POST":
        return redirect(next_url)
    form = LoginForm(request, data=request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if form.is_valid():
            user = form.get_user()
            if not services_account.has_second_factor(user=user):
                auth_login(request, user)
                return redirect(next_url)
            request.session[PENDING_LOGIN_KEY] = {
                "user_id": user.pk,
                "backend": user.backend,
                "auth_hash": user.get_session_auth_hash(),
                "expires": time.time() + PENDING_LOGIN_SECONDS,
                "next": next_url,
            }
            return redirect("login-verify")
        _record_if_just_locked(request, request.POST.get("username", ""))
    return render(request, "registration/login.html", {"form": form, "next": next_url})


def _pending_user(request: HttpRequest) -> tuple[Any, dict[str, Any]] | tuple[None, None]:
    pending = request.session.get(PENDING_LOGIN_KEY)
    if not pending or pending.get("expires", 0) < time.time():
        request.session.pop(PENDING_LOGIN_KEY, None)
        return None, None
    user = get_user_model().objects.filter(pk=pending["user_id"], is_active=True).first()
    # A password changed since the first step ends the pending sign-in, as it ends sessions.
    if user is None or not constant_time_compare(pending["auth_hash"], user.get_session_auth_hash()):
        request.session.pop(PENDING_LOGIN_KEY, None)
        return None, None
    return user, pending


@sensitive_post_parameters("code")
@csrf_protect
@never_cache
def login_verify(request: HttpRequest) -> HttpResponse:
    user, pending = _pending_user(request)
    if user is None or pending is None:
        messages.error(request, "Your sign-in timed out or was interrupted. Please enter your password again.")
        return redirect("login")
    username = user.get_username()
    if (locked := _lockout_response(request, username)) is not None:
        request.session.pop(PENDING_LOGIN_KEY, None)
        return locked
    form = SecondFactorForm(data=request.POST if request.method == "POST" else None, user=user)
    if request.method == "POST":
        if form.is_valid():
            del request.session[PENDING_LOGIN_KEY]
            auth_login(request, user, backend=pending["backend"])
            otp_login(request, form.device)
            if isinstance(form.device, StaticDevice):
                left = services_account.recovery_codes_remaining(user=user)
                messages.warning(
                    request, f"You signed in with a recovery code; {left} remain. Make new ones if you are running out."
                )
            return redirect(pending["next"])
        if form.failed:
            _second_factor_failed(request, username)
    return render(request, "registration/login_verify.html", {"form": form})


# --- Password -------------------------------------------------------------------------------


@method_decorator(never_cache, name="dispatch")
class PasswordChange(PasswordChangeView):
    """Django's password change (it keeps this session signed in), plus an audit event."""

    template_name = "account/password_change.html"
    success_url = reverse_lazy("password-change")

    def form_valid(self, form: Any) -> HttpResponse:
        with transaction.atomic():
            form.save()
            services_account.password_changed_record(actor=actor_from_request(self.request), user=form.user)
        update_session_auth_hash(self.request, form.user)
        messages.success(self.request, "Your password was changed. Other sessions have been signed out.")
        return redirect(self.get_success_url())


# --- Two-factor authentication --------------------------------------------------------------


def _qr_code_svg(device: AuthenticatorDevice) -> str:
    return segno.make(device.config_url, error="m").svg_inline(scale=4, light="#fff", title="QR code for your app")


def _grouped_secret(device: AuthenticatorDevice) -> str:
    secret = b32encode(device.bin_key).decode()
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@login_required
@sensitive_post_parameters("code", "password")
@never_cache
def two_factor_setup(request: HttpRequest) -> HttpResponse:
    user = request.user
    if services_account.authenticator_device(user=user) is None:
        return _two_factor_enrol(request)
    if not user.is_verified():  # type: ignore[union-attr]
        return _two_factor_verify_session(request)
    return _two_factor_status(request, TwoFactorDisableForm(user=user))


def _tenants_requiring_two_factor(user: Any) -> list[Any]:
    return [membership.tenant for membership in memberships_for_user(user=user) if membership.tenant.require_two_factor]


def _two_factor_status(request: HttpRequest, disable_form: TwoFactorDisableForm) -> HttpResponse:
    context = {
        "state": "enabled",
        "disable_form": disable_form,
        "recovery_codes_left": services_account.recovery_codes_remaining(user=request.user),
        "requiring_tenants": _tenants_requiring_two_factor(request.user),
    }
    return render(request, "account/two_factor.html", context)


def _two_factor_enrol(request: HttpRequest) -> HttpResponse:
    actor = actor_from_request(request)
    device = services_account.two_factor_enrolment_start(actor=actor, user=request.user)
    form = EnrolmentConfirmForm(data=request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        # Asked first: during django-otp's back-off every code is refused, and "wrong" would mislead.
        throttled = not device.verify_is_allowed()[0]
        codes = services_account.two_factor_confirm(actor=actor, device=device, code=form.cleaned_data["code"])
        if codes is not None:
            device.refresh_from_db()
            otp_login(request, device)
            request.session[NEW_RECOVERY_CODES_KEY] = codes
            messages.success(request, "Two-factor authentication is on.")
            return redirect("two-factor-recovery")
        form.add_error(
            "code",
            "Too many wrong codes in a row: wait a few seconds, then try the newest code."
            if throttled
            else "That code does not match. Check the app's clock and enter the code it shows now.",
        )
    context = {
        "state": "enrol",
        "form": form,
        "qr_svg": _qr_code_svg(device),
        "secret": _grouped_secret(device),
        "requiring_tenants": _tenants_requiring_two_factor(request.user),
    }
    return render(request, "account/two_factor.html", context)


def _two_factor_verify_session(request: HttpRequest) -> HttpResponse:
    username = request.user.get_username()
    if (locked := _lockout_response(request, username)) is not None:
        return locked
    form = SecondFactorForm(data=request.POST if request.method == "POST" else None, user=request.user)
    if request.method == "POST":
        if form.is_valid():
            otp_login(request, form.device)
            messages.success(request, "This session is now verified.")
            return redirect("two-factor-setup")
        if form.failed:
            _second_factor_failed(request, username)
    return render(request, "account/two_factor.html", {"state": "verify", "form": form})


@login_required
@never_cache
def two_factor_recovery(request: HttpRequest) -> HttpResponse:
    user = request.user
    if services_account.authenticator_device(user=user) is None or not user.is_verified():  # type: ignore[union-attr]
        return redirect("two-factor-setup")
    if request.method == "POST":
        codes = services_account.recovery_codes_regenerate(actor=actor_from_request(request), user=user)
        request.session[NEW_RECOVERY_CODES_KEY] = codes
        messages.success(request, "New recovery codes were made; the old ones no longer work.")
        return redirect("two-factor-recovery")
    context = {
        "codes": request.session.pop(NEW_RECOVERY_CODES_KEY, None),
        "recovery_codes_left": services_account.recovery_codes_remaining(user=user),
    }
    return render(request, "account/recovery_codes.html", context)


@login_required
@require_POST
@sensitive_post_parameters("code", "password")
def two_factor_disable(request: HttpRequest) -> HttpResponse:
    user = request.user
    if services_account.authenticator_device(user=user) is None:
        return redirect("two-factor-setup")
    username = user.get_username()
    if (locked := _lockout_response(request, username)) is not None:
        return locked
    form = TwoFactorDisableForm(data=request.POST, user=user)
    if form.is_valid():
        services_account.two_factor_disable(actor=actor_from_request(request), user=user)
        messages.success(request, "Two-factor authentication is off, and your recovery codes were deleted.")
        return redirect("two-factor-setup")
    if form.failed:
        _second_factor_failed(request, username)
    return _two_factor_status(request, form)


# --- Invitations ----------------------------------------------------------------------------


@sensitive_post_parameters("password1", "password2")
@csrf_protect
@never_cache
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    invitation = invitation_by_token(token=token)
    if request.user.is_authenticated:
        if request.method == "POST":
            try:
                membership = invitation_accept_service(
                    actor=actor_from_request(request), invitation=invitation, user=request.user
                )
            except ValidationError:
                raise Http404 from None  # used up by a request that raced this one
            messages.success(request, f"You joined {membership.tenant.title} as {membership.get_role_display()}.")
            return redirect("tenant-dashboard", tenant_slug=membership.tenant.slug)
        return render(request, "account/invitation.html", {"invitation": invitation})

    form = InvitationSignupForm(
        data=request.POST if request.method == "POST" else None, initial={"email": invitation.email}
    )
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                user = user_create_for_invitation(
                    username=form.cleaned_data["username"],
                    email=form.cleaned_data["email"],
                    password=form.cleaned_data["password1"],
                )
                membership = invitation_accept_service(
                    actor=actor_from_request(request), invitation=invitation, user=user
                )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            auth_login(request, user, backend=PASSWORD_BACKEND)
            messages.success(
                request, f"Welcome! You joined {membership.tenant.title} as {membership.get_role_display()}."
            )
            return redirect("tenant-dashboard", tenant_slug=membership.tenant.slug)
    return render(request, "account/invitation.html", {"invitation": invitation, "form": form})
