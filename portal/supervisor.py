"""Run a few long-lived processes side by side and stop them together.

Each child runs in its own session, so its process group holds the child and anything it forks
(Celery's pool processes, for one). Stopping a child means signalling its whole group: SIGTERM,
a grace period, then SIGKILL, so that nothing started here is left behind. Ctrl-C in the terminal
reaches only the supervisor, which then stops the children in that orderly way. If one child exits
on its own, the others are stopped too and the supervisor reports a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
COLOURS = {"web": "36", "worker": "35", "beat": "33"}


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    # A line of output that shows the child is ready to serve; on_ready is called when it appears.
    ready_text: str = ""
    # An essential child that exits stops everything; another (a demo device agent) may just end.
    essential: bool = True


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[str]
    reader: threading.Thread
    ready: bool = False


@dataclass
class Supervisor:
    specs: Sequence[ChildSpec]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    stop_timeout: float = 10.0
    out: TextIO = field(default_factory=lambda: sys.stdout)
    on_ready: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self._children: list[_Child] = []
        # Reentrant: a signal handler may print while the main thread holds it.
        self._write_lock = threading.RLock()
        self._stop_requested = threading.Event()
        self._signals_received = 0
        self._colour = self.out.isatty() and "NO_COLOR" not in os.environ
        self._width = max([len("run"), *(len(spec.name) for spec in self.specs)])

    # --- Output -----------------------------------------------------------------------------

    def say(self, name: str, line: str) -> None:
        """Write one line prefixed with the name of the process it belongs to."""
        prefix = name.ljust(self._width)
        if self._colour:
            prefix = f"\033[{COLOURS.get(name, '1')}m{prefix}\033[0m"
        with self._write_lock:
            try:
                self.out.write(f"{prefix} | {line.rstrip()}\n")
                self.out.flush()
            except (OSError, ValueError):
                # The terminal went away; keep supervising so the children are still stopped.
                pass

    def _pump(self, child_name: str, stream: TextIO, spec: ChildSpec) -> None:
        for line in stream:
            self.say(child_name, line)
            child = next((c for c in self._children if c.spec is spec), None)
            if spec.ready_text and child is not None and not child.ready and spec.ready_text in line:
                child.ready = True
                if self.on_ready is not None:
                    self.on_ready(child_name)

    # --- Lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        """Start every child, wait for a stop signal or for a child to exit, then stop them all.

        Return 0 after a requested stop and 1 when a child exited on its own.
        """
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            for spec in self.specs:
                self._start(spec)
                if self._stop_requested.is_set():
                    break
            failed = self._watch()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 1 if failed else 0

    def _start(self, spec: ChildSpec) -> None:
        process = subprocess.Popen(  # noqa: S603 - argv is built by the caller, not from input
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        assert process.stdout is not None
        reader = threading.Thread(
            target=self._pump, args=(spec.name, process.stdout, spec), name=f"output-{spec.name}", daemon=True
        )
        self._children.append(_Child(spec=spec, process=process, reader=reader))
        reader.start()
        self.say("run", f"started {spec.name} (pid {process.pid})")

    def _watch(self) -> bool:
        """Wait until a stop is requested (return False) or a child exits (return True)."""
        reported: set[str] = set()
        while not self._stop_requested.wait(0.2):
            for child in self._children:
                code = child.process.poll()
                if code is None or child.spec.name in reported:
                    continue
                if child.spec.essential:
                    self.say("run", f"{child.spec.name} stopped on its own ({_describe(code)}); stopping the others")
                    return True
                self.say("run", f"{child.spec.name} ended ({_describe(code)}); the rest keep running")
                reported.add(child.spec.name)
        return False

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals_received += 1
        if self._signals_received == 1:
            self.say("run", f"received {signal.Signals(signum).name}; stopping (again to kill at once)")
            self._stop_requested.set()
        else:
            self._kill_groups(signal.SIGKILL)

    def _signal_group(self, child: _Child, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signum)

    def _kill_groups(self, signum: int) -> None:
        for child in self._children:
            if self._child_alive(child):
                self._signal_group(child, signum)

    def _stop_all(self) -> None:
        if not self._children:
            return
        # The leader first: a Celery worker stops its own pool, and signalling the pool directly
        # made the worker wait for processes that were gone.
        for child in self._children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and any(c.process.poll() is None for c in self._children):
            time.sleep(0.1)
        # Then whatever is left in each group, leader or not.
        if self._anything_alive():
            self._kill_groups(signal.SIGTERM)
            grace = time.monotonic() + 2
            while time.monotonic() < grace and self._anything_alive():
                time.sleep(0.1)
        if self._anything_alive():
            names = ", ".join(c.spec.name for c in self._children if self._child_alive(c))
            self.say("run", f"{names} did not stop within {self.stop_timeout:.0f} s; killing")
            self._kill_groups(signal.SIGKILL)
            while self._anything_alive():
                time.sleep(0.05)
        for child in self._children:
            child.reader.join(timeout=2)
        summary = ", ".join(f"{c.spec.name} ({_describe(c.process.returncode)})" for c in self._children)
        self.say("run", f"stopped: {summary}")

    @staticmethod
    def _child_alive(child: _Child) -> bool:
        # poll() reaps the group leader; a group may outlive its leader by a few forked processes.
        return child.process.poll() is None or _group_alive(child.process.pid)

    def _anything_alive(self) -> bool:
        return any(self._child_alive(child) for child in self._children)


def _describe(returncode: int | None) -> str:
    if returncode is None:
        return "running"
    return f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit {returncode}"


def _group_alive(pgid: int) -> bool:
    """Return whether any process (zombies aside) is left in process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may itself contain spaces.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False
