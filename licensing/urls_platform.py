"""Platform staff pages of licensing, included under platform/."""

from django.urls import path

from licensing import views, views_billing

urlpatterns = [
    path("usage-reports/", views.usage_reports, name="platform-usage-reports"),
    path("usage-reports/raw/", views.usage_report_raw, name="platform-usage-report-raw"),
    path("usage-reports/run/", views.usage_reports_run, name="platform-usage-reports-run"),
    path("billing/", views_billing.billing, name="platform-billing"),
    path("billing/register/", views_billing.billing_register, name="platform-billing-register"),
    path("billing/export.csv", views_billing.billing_export, name="platform-billing-export"),
]
