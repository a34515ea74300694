"""Run the whole embedded portal: migrate, prepare the demo, then supervise web, worker, beat and demo devices."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.demo import DEMO_TENANT_SLUG, DemoFleet, demo_fleet_prepare, demo_prepare, demo_simulated_fleet_prepare
from portal.supervisor import ChildSpec, Supervisor
from tenants import secrets


def web_argv(*, host: str, port: int) -> list[str]:
    """Return the ASGI server's command line (one process; production runs several, see README)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "portal.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        # Measured: the sans-I/O websockets implementation with per-message deflate off held 20k
        # connections at ~34 KiB each; deflate on doubled memory, the legacy implementation collapsed.
        "--ws",
        "websockets-sansio",
        "--ws-per-message-deflate",
        "false",
        # Channels' router does not speak the lifespan protocol.
        "--lifespan",
        "off",
        # No proxy stands in front of the demo: believe no X-Forwarded-* header from a local client.
        "--no-proxy-headers",
        # Open websockets would otherwise hold a stop for as long as the devices stay connected.
        "--timeout-graceful-shutdown",
        "5",
    ]


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "portal", "worker", "--loglevel", "INFO", "--concurrency", "2"]


def beat_argv() -> list[str]:
    # Beat runs as its own process: inside the worker (worker -B) it was measured to survive a
    # SIGKILL as an orphan, and a restarted worker then ran a second beat.
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "portal",
        "beat",
        "--loglevel",
        "INFO",
        "--scheduler",
        "django_celery_beat.schedulers:DatabaseScheduler",
    ]


DEMO_AGENT_PASSWORD_VARIABLE = "DEMO_AGENT_PASSWORD"


def agent_argv(*, server: str, fleet: DemoFleet, root: Path, number: int) -> list[str]:
    """Return the command line of one demo device: the real reference agent, on demo folders."""
    argv = [
        sys.executable, "-m", "devices.agent",
        "--server", server, "--tenant", DEMO_TENANT_SLUG, "--username", fleet.username,
        "--password-env", DEMO_AGENT_PASSWORD_VARIABLE,
        "--state-dir", str(root / "state"), "--name", f"demo-pc-{number}",
        "--protect", str(root / "documents"), "--vault-dir", str(root / "vault"), "--quiet",
    ]  # fmt: skip
    # One device lets administrators browse its files, so the demo shows both cases.
    return [*argv, "--allow-browse"] if number == 1 else argv


DEMO_SIMULATOR_SECRET_VARIABLE = "DEMO_SIMULATOR_SECRET"


def simulator_argv(*, host: str, port: int, devices: int) -> list[str]:
    """Return the command line of the fleet simulator (bench/simulator.py) playing `devices` devices."""
    return [
        sys.executable, str(Path(settings.BASE_DIR) / "bench" / "simulator.py"),
        "--host", host, "--ports", str(port), "--devices", str(devices),
        "--secret-env", DEMO_SIMULATOR_SECRET_VARIABLE,
        # Stay connected until the demo stops; 30 connections a second, a gentle start.
        "--hold", "1e9", "--duration", "1e9", "--connect-rate", "30", "--ping-samples", "1",
    ]  # fmt: skip


def ensure_port_free(host: str, port: int) -> None:
    """Fail early, and clearly, when another program listens on the address the web server needs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise CommandError(
                f"Cannot listen on {host}:{port} ({error.strerror}); choose another with --port."
            ) from None


class Command(BaseCommand):
    help = (
        "Migrate the database, create the demo tenant and its owner (with a new random password), then run "
        "the ASGI server, a Celery worker and Celery beat until Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default 8000).")
        parser.add_argument(
            "--no-worker", action="store_true", help="Run the web server only: no Celery worker and no beat."
        )
        parser.add_argument(
            "--agents", type=int, default=3, help="Reference device agents to run as demo devices (default 3)."
        )
        parser.add_argument(
            "--simulated",
            type=int,
            default=0,
            help="Also run this many simulated devices (bench/simulator.py, the real protocol), e.g. 200.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        ensure_port_free(host, port)

        database = settings.DATABASES["default"]
        self.stdout.write(f"Migrating the database ({database['ENGINE'].rsplit('.', 1)[-1]}: {database['NAME']}) ...")
        call_command("migrate", interactive=False, verbosity=0)
        # Static files are served from the apps' folders (WhiteNoise's finders), so collectstatic is not
        # needed; the folder only has to exist, or WhiteNoise warns at every start.
        Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)
        login = demo_prepare()
        fleet = demo_fleet_prepare(data_dir=Path(settings.DATA_DIR), devices=max(0, options["agents"]))
        devices = len(fleet.device_roots)
        simulated = max(0, options["simulated"])
        simulator_secret = (
            demo_simulated_fleet_prepare(data_dir=Path(settings.DATA_DIR), devices=simulated) if simulated else ""
        )

        display_host = f"[{host}]" if ":" in host else host
        url = f"http://{display_host}:{port}/"
        if login.owner_created:
            account_line = "Created the demo owner. Log in with:"
        else:
            account_line = "The demo owner existed already; its password was reset. Log in with:"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  Portal:    {url}",
                    f"  API docs:  {url}api/docs/  (OpenAPI schema at {url}api/schema/)",
                    f"  Tenant:    {login.tenant.slug} ({login.tenant.name})",
                    "",
                    f"  {account_line}",
                    f"    username  {login.username}",
                    f"    password  {login.password}",
                    "  The password is random and changes every time this command starts.",
                    *([f"  Demo devices: {devices} agents of backup account {fleet.username}."] if devices else []),
                    *([f"  Simulated devices: {simulated} (backup account simulated-fleet)."] if simulated else []),
                    "",
                    "  Secrets at rest (TOTP seeds, vault credentials) are encrypted with keys "
                    + secrets.keyring_describe()
                    + ".",
                    "  Data is kept in " + str(settings.DATA_DIR) + ". Press Ctrl-C to stop everything.",
                    "",
                ]
            )
        )
        self.stdout.flush()

        specs = [ChildSpec("web", web_argv(host=host, port=port), ready_text="Uvicorn running on")]
        if not options["no_worker"]:
            specs += [ChildSpec("worker", worker_argv()), ChildSpec("beat", beat_argv())]
        # The agents run on this machine: they reach a server listening everywhere through loopback.
        listens_everywhere = host in ("0.0.0.0", "::")  # noqa: S104 - a comparison, not a binding
        server = f"http://{'127.0.0.1' if listens_everywhere else display_host}:{port}"
        specs += [
            ChildSpec(
                f"agent-{number}", agent_argv(server=server, fleet=fleet, root=root, number=number), essential=False
            )
            for number, root in enumerate(fleet.device_roots, start=1)
        ]
        if simulated:
            simulator_host = "127.0.0.1" if listens_everywhere else host
            specs.append(
                ChildSpec(
                    "simulator", simulator_argv(host=simulator_host, port=port, devices=simulated), essential=False
                )
            )

        supervisor = Supervisor(
            specs,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                DEMO_AGENT_PASSWORD_VARIABLE: fleet.password,
                DEMO_SIMULATOR_SECRET_VARIABLE: simulator_secret,
            },
            cwd=settings.BASE_DIR,
            on_ready=lambda name: supervisor.say("run", f"ready: {url} (log in as {login.username})"),
        )
        code = supervisor.run()
        if code:
            raise CommandError("A process of the portal stopped unexpectedly (see its output above).", returncode=code)
