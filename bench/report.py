"""Render the results table of bench/README.md from bench/results/*.json.

    python bench/report.py            # print the table
    python bench/report.py --write    # replace the table between the markers in bench/README.md

Each row is one target of the "Fleet scale" issue: the target, the figure measured, the bare
baseline measured in the same run where the scenario has one, and their ratio. A scenario whose
result file is missing shows "not measured". Run it after any bench so that the table stays what
the files say.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- results table: bench/report.py --write -->", "<!-- end of results table -->"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ok(flag: bool | None) -> str:
    return "met" if flag else ("**missed**" if flag is not None else "")


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        value = f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{value}{unit}"


def capacity_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for step in result.get("comparison", []):
        devices = step["devices"]
        rows.append(
            [
                f"1. capacity, {devices:,} devices: memory per connection",
                "≤ 40 KiB",
                fmt(step.get("portal_kib_per_connection"), " KiB"),
                fmt(step.get("baseline_kib_per_connection"), " KiB"),
                fmt(step.get("memory_ratio"), "×"),
                ok(step.get("meets_memory_target") and step.get("held_all")),
            ]
        )
        rows.append(
            [
                f"1. capacity, {devices:,} devices: server CPU, heartbeat 30 s",
                "≤ 1.5× baseline",
                fmt(step.get("portal_cpu_percent"), " %"),
                fmt(step.get("baseline_cpu_percent"), " %"),
                fmt(step.get("cpu_ratio"), "×"),
                ok(step.get("meets_cpu_target")),
            ]
        )
    return rows


def commands_rows(result: dict[str, Any], label: str) -> list[list[str]]:
    summary = result.get("summary", {})
    first = summary.get("round_trip_at_lowest_rate", {})
    echo = summary.get("echo_p50_ms")
    p50, p99 = first.get("p50_ms"), first.get("p99_ms")
    best = summary.get("highest_rate_meeting_latency_targets")
    highest = summary.get("highest_completed_per_second")
    lost = summary.get("lost_in_all_levels")
    rate = summary.get("lowest_rate")
    return [
        [
            f"2. command round trip, {label}, {fmt(rate)}/s: p50 / p99",
            "≤ 25 / ≤ 100 ms",
            f"{fmt(p50)} / {fmt(p99)} ms",
            f"echo p50 {fmt(echo)} ms",
            fmt(round(p50 / echo, 1) if p50 and echo else None, "×"),
            ok(p50 is not None and p99 is not None and p50 <= 25 and p99 <= 100),
        ],
        [
            f"2. command round trip, {label}: sustained commands/s",
            "≥ 500/s",
            f"{fmt(highest)}/s completed at best; targets held up to {fmt(best)}/s; {fmt(lost)} lost; "
            f"{fmt(summary.get('server_cpu_ms_per_command'))} ms of server CPU a command "
            f"(≤ {fmt(summary.get('commands_per_second_per_core_at_most'))}/s per core)",
            "",
            "",
            ok(best is not None and best >= 500 and not lost),
        ],
    ]


def ingest_rows(result: dict[str, Any]) -> list[list[str]]:
    best = result.get("best", {})
    raw = result.get("raw", {})
    return [
        [
            "3. status ingest, last-seen and inventory persisted",
            "≥ 5,000 msg/s",
            fmt(best.get("accepted_per_second"), " msg/s"),
            f"COPY {fmt(raw.get('copy_rows_per_second'))} rows/s, INSERT {fmt(raw.get('insert_rows_per_second'))}",
            f"{fmt(best.get('ratio_to_raw_copy'))} of COPY, {fmt(best.get('ratio_to_raw_insert'))} of INSERT",
            ok(best.get("meets_target")),
        ]
    ]


def pages_rows(result: dict[str, Any]) -> list[list[str]]:
    return [
        [
            f"4. pages at 100k devices: {case['case']}",
            "median ≤ 50, p95 ≤ 100 ms, ≤ 10 queries",
            f"{fmt(case['median_ms'])} / {fmt(case['p95_ms'])} ms, {case['queries']} queries",
            "",
            "",
            ok(case.get("meets_targets")),
        ]
        for case in result.get("cases", [])
    ]


def storm_rows(result: dict[str, Any], label: str) -> list[list[str]]:
    commands = result.get("commands", {})
    t99, t100 = result.get("t99_s"), result.get("t100_s")
    before, after = result.get("redis_clients_before"), result.get("redis_clients_after")
    lost, twice = commands.get("lost"), commands.get("run_twice")
    dropped = result.get("dropped")
    cut = "" if dropped is None else f" ({dropped:,} cut)"
    return [
        [
            f"5. reconnect storm, {result['settings']['devices']:,} devices, {label}: 99 % / all back",
            "≤ 60 / ≤ 120 s",
            f"{fmt(t99)} / {fmt(t100)} s{cut}",
            "",
            "",
            ok(t99 is not None and t100 is not None and t99 <= 60 and t100 <= 120),
        ],
        [
            f"5. reconnect storm, {label}: commands lost / run twice; Redis clients before → after",
            "0 / 0; no growth",
            f"{fmt(lost)} / {fmt(twice)} of {fmt(commands.get('issued'))}; {fmt(before)} → {fmt(after)}",
            "",
            "",
            ok(lost == 0 and twice == 0 and (before is None or after is None or after <= before)),
        ],
    ]


def bulk_rows(result: dict[str, Any]) -> list[list[str]]:
    statuses = result.get("statuses", {})
    delivered = result.get("all_delivered_s")
    live = result.get("live_devices")
    return [
        [
            f"6. bulk command to {fmt(live)} live devices: all delivered",
            "≤ 10 s, none dropped",
            f"{fmt(delivered)} s (issue call {fmt(result.get('issue_seconds'))} s); results {statuses}",
            "",
            "",
            ok(delivered is not None and delivered <= 10 and statuses.get("succeeded") == live),
        ]
    ]


def table() -> str:
    rows: list[list[str]] = []
    sections = [
        ("capacity", capacity_rows),
        ("commands", lambda result: commands_rows(result, "1k connected")),
        ("commands-20k", lambda result: commands_rows(result, "20k connected")),
        ("ingest", ingest_rows),
        ("pages", pages_rows),
        ("storm", lambda result: storm_rows(result, "every connection dropped")),
        ("storm-restart", lambda result: storm_rows(result, "both workers restarted")),
        ("storm-redis", lambda result: storm_rows(result, "Redis restarted")),
        ("bulk", bulk_rows),
    ]
    for name, render in sections:
        result = load(name)
        if result is None:
            rows.append([f"`{name}`", "", "not measured", "", "", ""])
            continue
        started = result.get("started", "")[:16]
        for row in render(result):
            rows.append([*row[:5], f"{row[5]} ({name}.json, {started})" if row[5] else f"({name}.json, {started})"])
    lines = [
        "| scenario | target | figure | bare baseline | ratio | verdict (file, run) |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the table in bench/README.md")
    args = parser.parse_args()
    rendered = table()
    if not args.write:
        print(rendered)
        return
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"bench/README.md has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{rendered}\n{END}{tail}")
    print(f"wrote the table ({rendered.count(chr(10)) - 1} rows) into {README.name}")


if __name__ == "__main__":
    main()
