"""Reads of the licensing service: registered portals and what the billing pages show."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.db.models import Count, Max, OuterRef, QuerySet, Subquery
from django.http import Http404

from licensing import conf
from licensing import payload as payload_format
from licensing.models_service import ErasureReceipt, ReceivedReport, RegisteredPortal
from licensing.schema import Booster, UsageReportPayload, allowed_values

BOOSTERS: tuple[str, ...] = allowed_values(Booster)
TREND_PERIODS = 90


def portals_for_billing() -> QuerySet[RegisteredPortal]:
    latest = ReceivedReport.objects.filter(portal=OuterRef("pk")).order_by("-period")
    return RegisteredPortal.objects.annotate(
        report_count=Count("reports"),
        last_period=Max("reports__period"),
        latest_devices=Subquery(latest.values("devices_with_protected_items")[:1]),
    ).order_by("name", "serial")


def portal_get_for_billing(*, serial: str) -> RegisteredPortal:
    portal = RegisteredPortal.objects.filter(serial=serial).first()
    if portal is None:
        raise Http404
    return portal


def billing_trend(*, portal: RegisteredPortal, periods: int = TREND_PERIODS) -> list[ReceivedReport]:
    """The figures of the latest `periods` reports, oldest first (no bodies)."""
    rows = list(portal.reports.defer("body").order_by("-period")[:periods])
    return rows[::-1]


def report_for_billing(*, portal: RegisteredPortal, period: date | None = None) -> ReceivedReport | None:
    reports = portal.reports.order_by("-period")
    return (reports.filter(period=period) if period else reports).first()


def report_payload(report: ReceivedReport) -> UsageReportPayload:
    return payload_format.parse(payload_format.decompress(bytes(report.body), limit=conf.MAX_PAYLOAD_BYTES))


@dataclass(frozen=True)
class Usernames:
    admins: list[str]
    backup_accounts: list[str]


def usernames_of(payload: UsageReportPayload) -> Usernames:
    """The billed usernames of one report, each once, sorted."""
    admins = sorted({name for tenant in payload["tenants"] for name in tenant["admins"]})
    accounts = sorted({name for tenant in payload["tenants"] for name in tenant["backup_accounts"]})
    return Usernames(admins=admins, backup_accounts=accounts)


def erasures_of(*, portal: RegisteredPortal) -> QuerySet[ErasureReceipt]:
    return portal.erasures.order_by("-erased_at")


class _Echo:
    def write(self, value: str) -> str:
        return value


def trend_csv_rows(*, portal: RegisteredPortal) -> Iterator[str]:
    """CSV lines: one per report, the billing figures and a column per booster."""
    writer = csv.writer(_Echo())
    yield writer.writerow(
        ["period", "devices", "devices_with_protected_items", *[f"booster_{name}" for name in BOOSTERS]]
        + ["admins", "backup_accounts", "received_at", "portal_ip", "receipt_id"]
    )
    for report in portal.reports.defer("body").order_by("period").iterator(chunk_size=500):
        yield writer.writerow(
            [report.period.isoformat(), report.devices, report.devices_with_protected_items]
            + [report.boosters.get(name, 0) for name in BOOSTERS]
            + [report.admins, report.backup_accounts, report.received_at.isoformat(), report.source_ip or ""]
            + [str(report.receipt_id)]
        )


def device_csv_rows(*, report: ReceivedReport) -> Iterator[str]:
    """CSV lines of one report: a line per device (its tenant only as a number within the report)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(["period", "tenant_number", "device", "account", "boosters"])
    payload = report_payload(report)
    for number, tenant in enumerate(payload["tenants"], start=1):
        for device in tenant["devices"]:
            yield writer.writerow(
                [report.period.isoformat(), number, device["name"], device["account"], " ".join(device["boosters"])]
            )


def trend_chart(*, reports: list[ReceivedReport], width: int = 720, height: int = 220) -> dict[str, Any]:
    """Coordinates of a bar chart of devices with protected items per period (for an inline SVG)."""
    left, bottom, top = 48, 28, 12
    plot_width, plot_height = width - left - 8, height - bottom - top
    peak = max((report.devices_with_protected_items for report in reports), default=0)
    scale_max = max(peak, 1)
    slot = plot_width / max(len(reports), 1)
    bars = []
    for index, report in enumerate(reports):
        value = report.devices_with_protected_items
        bar_height = plot_height * value / scale_max
        bars.append(
            {
                "x": round(left + index * slot + slot * 0.1, 1),
                "y": round(top + plot_height - bar_height, 1),
                "width": round(max(slot * 0.8, 1), 1),
                "height": round(bar_height, 1),
                "label": f"{report.period.isoformat()}: {value} devices with protected items",
            }
        )
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "left": left,
        "baseline": top + plot_height,
        "top": top,
        "right": width - 8,
        "peak": peak,
        "first": reports[0].period.isoformat() if reports else "",
        "last": reports[-1].period.isoformat() if reports else "",
        "label_y": height - 8,
    }
