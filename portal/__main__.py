"""The two commands of the README, for a machine with nothing but Python 3.11+.

    python3 -m portal run [--host H] [--port P] [--no-worker]   run the whole portal with demo data
    python3 -m portal test [pytest arguments]                    run the test suite
    python3 -m portal bootstrap                                  only prepare .venv (CI uses this)

Each first makes sure that .venv exists and holds requirements.txt (reinstalled only when the file
changes), then continues inside it. This module uses the standard library alone: it runs before
any dependency is installed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements.txt"
# Written after a successful install: the hash of the requirements.txt that .venv holds.
STAMP = VENV / ".requirements.sha256"
PYTEST_NO_TESTS = 5
USAGE = __doc__.split("\n\n")[1]


def say(message: str) -> None:
    print(f"portal: {message}", flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"portal: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


@contextmanager
def bootstrap_lock() -> Iterator[None]:
    """Keep two commands started at once from building the same .venv side by side."""
    try:
        import fcntl
    except ImportError:  # Not on a POSIX system: no lock, the race is unlikely there anyway.
        yield
        return
    name = "portal-bootstrap-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:16] + ".lock"
    with open(Path(tempfile.gettempdir()) / name, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _runs(*argv: str | Path) -> bool:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0  # noqa: S603


def ensure_venv() -> Path:
    """Create .venv and install requirements.txt into it, unless it holds this very file already."""
    python = venv_python()
    wanted = requirements_hash()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return python
    with bootstrap_lock():
        if python.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
            return python  # Another command finished the job while this one waited.
        if not python.exists() or not _runs(python, "-m", "pip", "--version"):
            say(f"creating the virtual environment in {VENV.name}/")
            created = subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)])  # noqa: S603
            if created.returncode != 0:
                fail(
                    "could not create the virtual environment. On Debian or Ubuntu install the venv module "
                    "first: apt-get install python3-venv"
                )
        say("installing requirements.txt (only when it changes; the first time takes a few minutes)")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(REQUIREMENTS)]
        if subprocess.run(pip).returncode != 0:  # noqa: S603
            fail("installing requirements.txt failed (see pip's output above)")
        STAMP.write_text(wanted + "\n")
    return python


def command_run(python: Path, args: list[str]) -> NoReturn:
    """Replace this process with the demo supervisor, so that Ctrl-C and SIGTERM reach it directly."""
    os.chdir(ROOT)
    argv = [str(python), "manage.py", "rundemo", *args]
    os.execv(python, argv)  # noqa: S606


def command_test(python: Path, args: list[str]) -> int:
    process = subprocess.Popen([str(python), "-m", "pytest", *args], cwd=ROOT)  # noqa: S603
    # pytest receives Ctrl-C itself (same terminal) and prints its summary; wait for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = process.wait()
    if code == PYTEST_NO_TESTS:
        say("pytest collected no tests (exit code 5): that is a failure, check the paths and -k/-m arguments")
    return code


def main(argv: list[str]) -> int:
    # Any python3 on the PATH may run this file, not only the one the project targets.
    if sys.version_info < (3, 11):  # noqa: UP036
        fail(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command not in {"run", "test", "bootstrap"}:
        print(USAGE, file=sys.stderr)
        fail(f"unknown command {command!r}", code=2)
    python = ensure_venv()
    if command == "run":
        command_run(python, args)
    if command == "test":
        return command_test(python, args)
    say(f"the virtual environment is ready: {python.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
