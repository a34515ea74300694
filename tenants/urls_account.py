"""Routes about a person's own account. None is under a tenant (see tenants.views_account)."""

from django.contrib.auth.views import LogoutView
from django.urls import path

from tenants import views_account

urlpatterns = [
    path("", views_account.home, name="home"),
    path("login/", views_account.login, name="login"),
    path("login/verify/", views_account.login_verify, name="login-verify"),
    path("logout/", LogoutView.as_view(), name="logout"),
    path("account/password/", views_account.PasswordChange.as_view(), name="password-change"),
    path("account/two-factor/", views_account.two_factor_setup, name="two-factor-setup"),
    path("account/two-factor/recovery/", views_account.two_factor_recovery, name="two-factor-recovery"),
    path("account/two-factor/disable/", views_account.two_factor_disable, name="two-factor-disable"),
    path("invitations/<str:token>/", views_account.invitation_accept, name="invitation-accept"),
]
