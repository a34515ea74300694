"""Tenant pages for backup accounts and devices, included under t/<tenant_slug>/."""

from django.urls import path

from devices import views

urlpatterns = [
    path("accounts/", views.account_list, name="tenant-accounts"),
    path("accounts/<int:account_id>/", views.account_detail, name="tenant-account"),
    path("accounts/<int:account_id>/suspend/", views.account_suspend, name="tenant-account-suspend"),
    path(
        "accounts/<int:account_id>/reset-password/",
        views.account_reset_password,
        name="tenant-account-reset-password",
    ),
    path("accounts/<int:account_id>/commands/", views.account_commands, name="tenant-account-commands"),
    path("devices/", views.device_list, name="tenant-devices"),
    path("devices/<int:device_pk>/", views.device_detail, name="tenant-device"),
    path("devices/<int:device_pk>/jobs/", views.device_jobs, name="tenant-device-jobs"),
    path("devices/<int:device_pk>/jobs/<int:job_pk>/log/", views.job_log, name="tenant-device-job-log"),
    path("devices/<int:device_pk>/commands/", views.device_commands, name="tenant-device-commands"),
    path("devices/<int:device_pk>/commands/<int:command_pk>/", views.command_result, name="tenant-device-command"),
    path("devices/<int:device_pk>/revoke/", views.device_revoke, name="tenant-device-revoke"),
]
