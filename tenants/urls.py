from django.urls import path

from tenants import views, views_access, views_erasure

urlpatterns = [
    path("", views.dashboard, name="tenant-dashboard"),
    path("suspended/", views.suspended, name="tenant-suspended"),
    path("logo/", views.logo, name="tenant-logo"),
    path("team/", views.team, name="tenant-team"),
    path("team/invite/", views.team_invite, name="tenant-team-invite"),
    path("team/<int:membership_id>/role/", views.team_change_role, name="tenant-team-role"),
    path("team/<int:membership_id>/remove/", views.team_remove, name="tenant-team-remove"),
    path("team/invitations/<int:invitation_id>/revoke/", views.invitation_revoke, name="tenant-invitation-revoke"),
    path("settings/", views.settings_page, name="tenant-settings"),
    path("settings/logo/", views.settings_logo, name="tenant-settings-logo"),
    path("settings/security/", views.settings_security, name="tenant-settings-security"),
    path("audit/", views.audit_log, name="tenant-audit"),
    path("audit/export.csv", views.audit_export, name="tenant-audit-export"),
    path("audit/verify/", views.audit_verify, name="tenant-audit-verify"),
    path("api-keys/", views.api_keys, name="tenant-api-keys"),
    path("api-keys/<int:key_id>/revoke/", views.api_key_revoke, name="tenant-api-key-revoke"),
    path("staff-access/", views_access.staff_access, name="tenant-staff-access"),
    path(
        "staff-access/<int:request_id>/approve/", views_access.staff_access_approve, name="tenant-staff-access-approve"
    ),
    path("staff-access/<int:request_id>/deny/", views_access.staff_access_deny, name="tenant-staff-access-deny"),
    path("staff-access/<int:request_id>/revoke/", views_access.staff_access_revoke, name="tenant-staff-access-revoke"),
    path("staff-access/log/", views_access.consent_log, name="tenant-consent-log"),
    path("staff-access/log/export.csv", views_access.consent_log_export_csv, name="tenant-consent-log-csv"),
    path("staff-access/log/export.json", views_access.consent_log_export_json, name="tenant-consent-log-json"),
    path("staff-access/policy/", views_access.staff_access_policy, name="tenant-staff-access-policy"),
    path("privacy/", views_erasure.privacy_requests, name="tenant-privacy"),
    path("privacy/requests.csv", views_erasure.privacy_requests_csv, name="tenant-privacy-csv"),
    path("privacy/settings/", views_erasure.privacy_settings, name="tenant-privacy-settings"),
    path("privacy/erasures/new/", views_erasure.erasure_new, name="tenant-erasure-new"),
    path("privacy/erasures/<int:erasure_id>/", views_erasure.erasure_detail, name="tenant-erasure"),
    path("privacy/erasures/<int:erasure_id>/act/", views_erasure.erasure_act, name="tenant-erasure-act"),
    path("privacy/erasures/<int:erasure_id>/receipt/", views_erasure.erasure_receipt, name="tenant-erasure-receipt"),
    path("privacy/exports/new/", views_erasure.export_new, name="tenant-export-new"),
    path("privacy/exports/<int:export_id>/download/", views_erasure.export_download, name="tenant-export-download"),
]
