"""Routes of the REST API, version 1, for backup accounts, devices, commands and jobs: mounted at /api/v1/."""

from django.urls import include, path

from devices import api

tenant_patterns = [
    path("accounts/", api.AccountList.as_view(), name="api-accounts"),
    path("accounts/<int:account_id>/", api.AccountDetail.as_view(), name="api-account"),
    path(
        "accounts/<int:account_id>/reset-password/",
        api.AccountPasswordReset.as_view(),
        name="api-account-reset-password",
    ),
    path("accounts/<int:account_id>/vaults/", api.AccountVaultList.as_view(), name="api-account-vaults"),
    path(
        "accounts/<int:account_id>/vaults/<str:vault_id>/credentials/",
        api.AccountVaultCredentials.as_view(),
        name="api-account-vault-credentials",
    ),
    path("accounts/<int:account_id>/commands/", api.AccountCommands.as_view(), name="api-account-commands"),
    path("devices/", api.DeviceList.as_view(), name="api-devices"),
    path("devices/<int:device_pk>/", api.DeviceDetail.as_view(), name="api-device"),
    path("devices/<int:device_pk>/commands/", api.DeviceCommandList.as_view(), name="api-device-commands"),
    path("devices/<int:device_pk>/jobs/", api.DeviceJobList.as_view(), name="api-device-jobs"),
    path("commands/bulk/", api.BulkCommands.as_view(), name="api-commands-bulk"),
    path("commands/<int:command_pk>/", api.CommandDetail.as_view(), name="api-command"),
    path("jobs/<int:job_pk>/", api.JobDetail.as_view(), name="api-job"),
]

urlpatterns = [
    path("t/<slug:tenant_slug>/", include(tenant_patterns)),
]
