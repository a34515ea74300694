"""The embedded demo: its data, the process supervisor, and `manage.py rundemo` end to end.

The end-to-end test always runs the embedded default (SQLite, in-memory channel layer, filesystem
broker) in a temporary data folder, even when this suite runs against PostgreSQL and Redis: that is
what `python3 -m portal run` gives a newcomer, so it must work everywhere the suite runs.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from django.conf import global_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import check_password

from portal.demo import DEMO_OWNER_USERNAME, demo_prepare
from portal.supervisor import ChildSpec, Supervisor, _group_alive
from tenants.models import AuditEvent, Membership
from tenants.roles import Role

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")

ROOT = Path(__file__).resolve().parents[2]
# The demo must not pick up the services or secrets of the environment the suite runs in.
SERVICE_VARIABLES = {
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "DEBUG",
    "CELERY_TASK_ALWAYS_EAGER",
}


# --- Demo data ------------------------------------------------------------------------------


def test_it_creates_the_demo_tenant_and_owner(db):
    login = demo_prepare()

    owner = get_user_model().objects.get(username=DEMO_OWNER_USERNAME)
    assert login.owner_created
    assert login.tenant.slug == "demo"
    assert owner.check_password(login.password)
    assert Membership.objects.get(tenant=login.tenant, user=owner).role == Role.OWNER
    assert AuditEvent.objects.filter(action="tenant.created").count() == 1
    assert AuditEvent.objects.filter(tenant=login.tenant, action="team.member_added").count() == 1


def test_it_resets_the_owner_password_on_every_start(db):
    first = demo_prepare()

    second = demo_prepare()

    owner = get_user_model().objects.get(username=DEMO_OWNER_USERNAME)
    assert not second.owner_created
    assert second.tenant == first.tenant
    assert second.password != first.password
    assert owner.check_password(second.password)
    assert not owner.check_password(first.password)
    assert Membership.objects.filter(user=owner).count() == 1
    assert AuditEvent.objects.filter(tenant=first.tenant, action="account.password_reset").count() == 1


def test_it_gives_the_owner_back_its_role(db):
    login = demo_prepare()
    Membership.objects.filter(tenant=login.tenant).update(role=Role.AUDITOR)

    demo_prepare()

    assert Membership.objects.get(tenant=login.tenant).role == Role.OWNER


# --- Supervisor -----------------------------------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(); it is not running.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"


def test_it_stops_everything_when_one_child_exits():
    spawns_a_grandchild = python(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('grandchild', child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    ignores_sigterm = python(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\n"
        "time.sleep(60)\n"
    )
    out = io.StringIO()
    supervisor = Supervisor(
        [
            ChildSpec("parent", spawns_a_grandchild),
            ChildSpec("stubborn", ignores_sigterm),
            ChildSpec("quitter", python("import time, sys; time.sleep(3); sys.exit(3)")),
        ],
        stop_timeout=1,
        out=out,
    )

    started = time.monotonic()
    code = supervisor.run()

    output = out.getvalue()
    assert code == 1
    assert time.monotonic() - started < 15
    assert "quitter stopped on its own (exit 3); stopping the others" in output
    assert "stubborn did not stop" in output
    pids = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", output)]
    grandchild = int(re.search(r"grandchild (\d+)", output).group(1))
    assert len(pids) == 3
    assert not any(alive(pid) for pid in [*pids, grandchild])
    assert not any(_group_alive(pid) for pid in pids)


def test_it_lets_a_child_that_is_not_essential_end_alone():
    out = io.StringIO()
    supervisor = Supervisor(
        [
            ChildSpec("device", python("import sys; sys.exit(0)"), essential=False),
            ChildSpec("quitter", python("import time, sys; time.sleep(2); sys.exit(3)")),
        ],
        stop_timeout=1,
        out=out,
    )

    assert supervisor.run() == 1
    output = out.getvalue()
    assert "device ended (exit 0); the rest keep running" in output
    # The essential child was not stopped early: it ran until it exited by itself.
    assert "quitter stopped on its own (exit 3)" in output


def test_it_prefixes_each_line_with_the_name_of_its_process():
    out = io.StringIO()
    ready: list[str] = []
    supervisor = Supervisor(
        [ChildSpec("web", python("print('listening'); print('second line')"), ready_text="listening")],
        out=out,
        on_ready=ready.append,
    )

    assert supervisor.run() == 1  # It exited on its own, which a supervised child must not do.

    assert "web | listening\n" in out.getvalue()
    assert "web | second line\n" in out.getvalue()
    assert ready == ["web"]


# --- rundemo, end to end --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Output:
    """Collect a process's output lines in a thread, so that the test can wait for one."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while (match := re.search(pattern, "".join(self.lines))) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout} s in:\n" + "".join(self.lines))
                self._changed.wait(remaining)
        return match


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def wait_for_page(url: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def log_in(base_url: str, username: str, password: str) -> urllib.error.HTTPError:
    """Log in through the login page, CSRF token and all; return the response (a redirect)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), NoRedirects())
    with opener.open(base_url + "login/", timeout=10) as response:
        page = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password})
    try:
        opener.open(base_url + "login/", data=form.encode(), timeout=10)
    except urllib.error.HTTPError as redirect:
        return redirect
    raise AssertionError("the login form was shown again: the credentials were refused")


def read_row(database: Path, query: str, *params: object):
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
        return connection.execute(query, params).fetchone()


def wait_for_row(database: Path, query: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (row := read_row(database, query)) is not None:
                return row
        except sqlite3.OperationalError:  # The table is not there yet, or a writer holds a lock.
            pass
        time.sleep(0.5)
    return None


def test_it_runs_the_demo_and_stops_every_process_on_ctrl_c(tmp_path, settings):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/"
    env = {name: value for name, value in os.environ.items() if name not in SERVICE_VARIABLES}
    env.update({"PORTAL_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "portal.settings", "PYTHONUNBUFFERED": "1"})
    demo = subprocess.Popen(
        [sys.executable, "manage.py", "rundemo", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(demo.stdout)
    child_pids: list[int] = []
    try:
        password = output.wait_for(r"password +(\S+)", timeout=60).group(1)
        assert "Created the demo owner" in output.text
        assert f"{base_url}api/docs/" in output.text
        for name in ("web", "worker", "beat", "agent-1", "agent-2", "agent-3"):
            child_pids.append(int(output.wait_for(rf"started {name} \(pid (\d+)\)", timeout=10).group(1)))

        wait_for_page(base_url + "login/", timeout=30)
        response = log_in(base_url, DEMO_OWNER_USERNAME, password)
        assert response.status == 302
        assert not response.headers["Location"].startswith("/login/")

        database = tmp_path / "portal.sqlite3"
        (hashed,) = read_row(database, "SELECT password FROM auth_user WHERE username = ?", DEMO_OWNER_USERNAME)
        # The suite's fast test hasher cannot read the demo's real hashes.
        settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
        assert check_password(password, hashed)

        # Beat sends the heartbeat 30 s after it starts; the worker takes it from the filesystem
        # broker and writes the row: proof that all three processes work together.
        heartbeat = wait_for_row(
            database, "SELECT detail FROM tenants_serviceheartbeat WHERE service = 'worker'", timeout=45
        )
        assert heartbeat is not None, "no heartbeat from the worker:\n" + output.text
        assert "Sending due task platform heartbeat" in output.text

        # The three demo devices are real reference agents, registered and live.
        live = wait_for_row(
            database, "SELECT 1 FROM devices_device WHERE is_live GROUP BY is_live HAVING COUNT(*) = 3", timeout=30
        )
        assert live is not None, "the demo devices did not come online:\n" + output.text

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0, output.text
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        leftovers = [pid for pid in child_pids if _group_alive(pid)]
        for pid in leftovers:
            os.killpg(pid, signal.SIGKILL)

    assert leftovers == [], "processes left running:\n" + output.text
    assert "stopped: web" in output.text
