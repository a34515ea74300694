"""The live fleet end to end: real reference agents connected to a real portal (uvicorn), commands
issued through the REST API, results in the database and pushed to a browser's websocket.

On the embedded default this runs on SQLite and the in-memory channel layer; in CI (DATABASE_URL and
REDIS_URL set) on PostgreSQL and channels-redis. The fault test starts a Redis of its own, kills it
while the fleet is connected, and checks that every command still runs exactly once.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets

from devices.agent.backup import stable_id
from devices.agent.config import STATE_FILE
from tests.live import REPO, LivePortal, free_port, live_portal, wait_for

ACCOUNT_PASSWORD = "fleet-account-password"

SEED = """
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.auth import SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY
from devices import services as device_services
from tenants import services
from tenants.audit import SYSTEM
from tenants.models import Membership, Tenant

tenant = Tenant.objects.create(slug="acme", name="Acme")
owner = get_user_model().objects.create_user("acme-owner", "owner@acme.example", "owner-password-1")
Membership.objects.create(tenant=tenant, user=owner, role="owner")
key = services.api_key_create(actor=SYSTEM, tenant=tenant, user=owner, name="e2e").raw_key
device_services.account_create(actor=SYSTEM, tenant=tenant, username="office", password=arguments["password"])
session = SessionStore()
session[SESSION_KEY] = str(owner.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = owner.get_session_auth_hash()
session.create()
print(json.dumps({"api_key": key, "session": session.session_key}))
"""


@dataclass
class Agent:
    portal: LivePortal
    root: Path
    name: str
    process: subprocess.Popen | None = None

    def start(self) -> None:
        documents = self.root / "documents"
        documents.mkdir(parents=True, exist_ok=True)
        for number in range(5):
            (documents / f"file-{number}.txt").write_text(f"{self.name} file {number}\n" * 100)
        with open(self.root / "agent.log", "a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "devices.agent",
                    "--server", self.portal.url, "--tenant", "acme", "--username", "office",
                    "--password-env", "AGENT_PASSWORD", "--state-dir", str(self.root / "state"),
                    "--name", self.name, "--protect", str(documents), "--vault-dir", str(self.root / "vault"),
                    "--quiet",
                ],
                cwd=REPO,
                env={**self.portal.env, "AGENT_PASSWORD": ACCOUNT_PASSWORD},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def snapshots(self) -> list[Path]:
        return list((self.root / "vault" / "snapshots").glob("*"))


@dataclass
class Fleet:
    portal: LivePortal
    agents: list[Agent] = field(default_factory=list)

    @property
    def api_key(self) -> str:
        return self.portal.seeded["api_key"]

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(  # noqa: S310 - our own server
            self.portal.url + "/api/v1/t/acme/" + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def devices(self) -> list[dict[str, Any]]:
        status, body = self.api("GET", "devices/?page_size=100")
        assert status == 200, body
        return body["results"]

    def live_devices(self) -> list[dict[str, Any]]:
        return [device for device in self.devices() if device["is_live"]]

    def issue(self, device_pk: int, kind: str, parameters: dict[str, Any] | None = None) -> int:
        started = time.monotonic()
        status, body = self.api(
            "POST", f"devices/{device_pk}/commands/", {"kind": kind, "parameters": parameters or {}}
        )
        assert status == 202, body
        # The API never waits for the device.
        assert time.monotonic() - started < 2
        return body["id"]

    def command(self, command_pk: int) -> dict[str, Any]:
        status, body = self.api("GET", f"commands/{command_pk}/")
        assert status == 200, body
        return body

    def wait_finished(self, command_pks: list[int], timeout: float = 60) -> dict[int, dict[str, Any]]:
        def finished() -> dict[int, dict[str, Any]] | None:
            commands = {pk: self.command(pk) for pk in command_pks}
            done = all(command["status"] in ("succeeded", "failed", "cancelled") for command in commands.values())
            return commands if done else None

        return wait_for(finished, timeout=timeout, what=f"commands {command_pks} to finish")

    def backup_parameters(self, device_pk: int) -> dict[str, str]:
        """Return a run_backup's parameters for this device's own folder and vault, once it reported them."""

        def reported() -> dict[str, str] | None:
            _, device = self.api("GET", f"devices/{device_pk}/")
            agent = next(agent for agent in self.agents if agent.name == device["name"])
            parameters = {
                "protected_item_id": stable_id("files", agent.root / "documents"),
                "vault_id": stable_id("local", agent.root / "vault"),
            }
            _, vaults = self.api("GET", f"accounts/{device['account']}/vaults/")
            items = {item["item_id"] for item in device["protected_items"]}
            vault_ids = {vault["vault_id"] for vault in vaults["results"]}
            reported = parameters["protected_item_id"] in items and parameters["vault_id"] in vault_ids
            return parameters if reported else None

        return wait_for(reported, timeout=20, what="the device's status report")


@pytest.fixture
def make_fleet(tmp_path: Path):
    started: list[Fleet] = []
    contexts = []

    def make(count: int, **portal_options: Any) -> Fleet:
        context = live_portal(
            tmp_path / "portal", seed=SEED, seed_arguments={"password": ACCOUNT_PASSWORD}, **portal_options
        )
        contexts.append(context)
        fleet = Fleet(portal=context.__enter__())
        for number in range(count):
            agent = Agent(portal=fleet.portal, root=tmp_path / f"agent-{number}", name=f"office-pc-{number}")
            agent.start()
            fleet.agents.append(agent)
        wait_for(lambda: len(fleet.live_devices()) == count, timeout=60, what=f"{count} live devices")
        started.append(fleet)
        return fleet

    yield make
    for fleet in started:
        for agent in fleet.agents:
            agent.stop()
    for context in reversed(contexts):
        context.__exit__(None, None, None)


async def _watch_fleet_socket(portal: LivePortal, events: list[dict[str, Any]], stop: asyncio.Event) -> None:
    url = portal.url.replace("http://", "ws://") + "/ws/t/acme/fleet/"
    headers = {"Cookie": f"sessionid={portal.seeded['session']}", "Origin": portal.url}
    async with websockets.connect(url, additional_headers=headers) as socket:
        while not stop.is_set():
            try:
                events.append(json.loads(await asyncio.wait_for(socket.recv(), 0.2)))
            except TimeoutError:
                continue


def test_it_runs_api_commands_on_live_agents_and_streams_the_results(make_fleet):
    fleet = make_fleet(2)
    events: list[dict[str, Any]] = []
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    watcher = loop.create_task(_watch_fleet_socket(fleet.portal, events, stop))
    loop.run_until_complete(asyncio.sleep(0.5))

    devices = fleet.devices()
    pings = [fleet.issue(device["id"], "ping") for device in devices]
    backup = fleet.issue(devices[0]["id"], "run_backup", fleet.backup_parameters(devices[0]["id"]))
    loop.run_until_complete(asyncio.sleep(0))
    commands = fleet.wait_finished([*pings, backup])
    assert {command["status"] for command in commands.values()} == {"succeeded"}, [
        (command["kind"], command["status"], command["error"]) for command in commands.values()
    ]
    assert all("pong" in commands[pk]["result"] for pk in pings)

    # The browser's socket saw each command reach "succeeded", without polling anything.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.2))
        succeeded = {e["command"] for e in events if e.get("kind") == "command_status" and e["status"] == "succeeded"}
        if succeeded >= {*pings, backup}:
            break
    assert succeeded >= {*pings, backup}, events
    assert any(event.get("kind") == "job" and event["status"] == "succeeded" for event in events)
    stop.set()
    loop.run_until_complete(watcher)
    loop.close()

    _, jobs = fleet.api("GET", f"devices/{devices[0]['id']}/jobs/")
    assert jobs["results"][0]["status"] == "succeeded" and jobs["results"][0]["files_done"] == 5
    backed_up = [agent for agent in fleet.agents if agent.snapshots()]
    assert len(backed_up) == 1 and len(backed_up[0].snapshots()) == 1


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), directory=tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self._answers, timeout=10, what="redis-server to start")

    def _answers(self) -> bool:
        done = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
        return done.stdout.strip() == "PONG"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _connection_names(fleet: Fleet) -> list[str]:
    return fleet.portal.django(
        "from devices.models import Device\n"
        "print(json.dumps(list(Device.objects.order_by('pk').values_list('connection_channel', flat=True))))"
    )


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server program")
def test_it_runs_every_command_exactly_once_across_a_redis_restart(make_fleet, own_redis):
    fleet = make_fleet(3, redis_url=own_redis.url)
    devices = fleet.devices()
    parameters = {device["id"]: fleet.backup_parameters(device["id"]) for device in devices}
    connections_before = _connection_names(fleet)

    own_redis.stop()
    # While Redis is down the API still takes commands: they are stored before anything is pushed.
    during_outage = [fleet.issue(device["id"], "run_backup", parameters[device["id"]]) for device in devices]
    time.sleep(2)
    own_redis.start()

    after_restart = [fleet.issue(device["id"], "ping") for device in devices]
    commands = fleet.wait_finished([*during_outage, *after_restart], timeout=120)
    assert {command["status"] for command in commands.values()} == {"succeeded"}, [
        (command["kind"], command["status"], command["error"]) for command in commands.values()
    ]
    wait_for(lambda: len(fleet.live_devices()) == 3, timeout=60, what="every device back online")
    # The device sockets do not depend on Redis: they stayed up, and the pushes after the restart
    # reached them through their process's channel again.
    assert _connection_names(fleet) == connections_before and all(connections_before)
    # Exactly once: one snapshot per agent, though the commands may have been delivered twice.
    assert sorted(len(agent.snapshots()) for agent in fleet.agents) == [1, 1, 1]


def test_it_gives_an_offline_device_its_commands_when_it_reconnects(make_fleet):
    fleet = make_fleet(1)
    agent = fleet.agents[0]
    device = fleet.devices()[0]
    agent.stop()
    wait_for(lambda: not fleet.live_devices(), timeout=30, what="the device to go offline")
    command = fleet.issue(device["id"], "ping")
    assert fleet.command(command)["status"] == "queued"
    agent.start()
    assert fleet.wait_finished([command])[command]["status"] == "succeeded"


def test_it_never_delivers_an_expired_command(make_fleet):
    fleet = make_fleet(1)
    agent = fleet.agents[0]
    device = fleet.devices()[0]
    agent.stop()
    wait_for(lambda: not fleet.live_devices(), timeout=30, what="the device to go offline")
    status, body = fleet.api("POST", f"devices/{device['id']}/commands/", {"kind": "ping", "ttl_seconds": 60})
    assert status == 202, body
    # Let its lifetime run out (the API's shortest is a minute).
    fleet.portal.django(
        "from devices.models import Command\n"
        "from django.utils import timezone\n"
        "print(Command.objects.filter(pk=arguments['pk']).update(expires_at=timezone.now()))",
        pk=body["id"],
    )
    agent.start()
    wait_for(lambda: fleet.live_devices(), timeout=30, what="the device to reconnect")
    time.sleep(1)
    assert fleet.command(body["id"])["status"] == "queued"
    executed = json.loads((agent.root / "state" / STATE_FILE).read_text())["executed_commands"]
    assert body["command_id"] not in executed
