"""Run the reference device agent: `python -m devices.agent --help`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from devices import keys
from devices.agent import __version__
from devices.agent.client import EXIT_FATAL, Agent, AgentOptions
from devices.agent.config import AgentState
from devices.agent.logs import setup_logging

EPILOG = """\
The password is read from the environment variable named by --password-env, or asked for on the
terminal; it is never accepted as an argument (other users could read it in the process list).
Only the login key L derived from it is sent to the portal, and only to register. The wrapping key R
derived with it never leaves this process: it opens the account's vault keys (docs/crypto.md).

exit status: 0 stopped (signal, or the uninstall command), 1 fatal error (for example the portal
refused the credentials), 2 bad arguments, 3 replaced by another agent using the same device id.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devices.agent",
        description="Connect this machine to a backup portal as a device and run its commands.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server", required=True, help="the portal's URL, e.g. https://backup.example.com")
    parser.add_argument("--tenant", required=True, help="your provider's tenant slug")
    parser.add_argument("--username", required=True, help="the backup account's username")
    parser.add_argument(
        "--password-env", metavar="VARIABLE", help="read the account password from this environment variable"
    )
    parser.add_argument(
        "--state-dir",
        default="~/.backup-agent",
        type=Path,
        help="where the device id and token are kept (default: %(default)s)",
    )
    parser.add_argument(
        "--new-password-env",
        metavar="VARIABLE",
        help="change the account password to the one in this environment variable, then carry on with it",
    )
    parser.add_argument("--name", default="", help="the device's name (default: the host name)")
    parser.add_argument(
        "--protect",
        metavar="PATH",
        type=Path,
        action="extend",
        nargs="+",
        default=[],
        help="a file or folder to protect (repeatable)",
    )
    parser.add_argument("--vault-dir", metavar="DIR", type=Path, help="a local folder to use as a storage vault")
    parser.add_argument("--ca-file", metavar="FILE", help="trust this CA bundle instead of the system's (https only)")
    parser.add_argument(
        "--allow-browse", action="store_true", help="let the portal's administrators list this machine's folders"
    )
    parser.add_argument(
        "--heartbeat-interval",
        metavar="SECONDS",
        type=float,
        help="send heartbeats at least this often (the portal's interval is used when shorter)",
    )
    parser.add_argument(
        "--progress-interval",
        metavar="SECONDS",
        type=float,
        default=0.25,
        help="report a running job's progress this often (default %(default)s, at least 0.05)",
    )
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only; no progress bar")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def read_password(variable: str | None) -> str:
    """Return the account password from the environment, or ask for it on the terminal."""
    if variable:
        password = os.environ.pop(variable, None)  # popped: child processes do not inherit it
        if password is None:
            raise SystemExit(f"error: the environment variable {variable} is not set")
    elif sys.stdin.isatty():
        password = getpass.getpass("Backup account password: ")
    else:
        raise SystemExit("error: no terminal to ask for the password; use --password-env")
    if not password:
        raise SystemExit("error: the password is empty")
    return password


async def serve(agent: Agent) -> int:
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signal_number, agent.request_stop)
        except (NotImplementedError, RuntimeError):  # Windows' event loops have no signal handlers
            signal.signal(signal_number, lambda *_: loop.call_soon_threadsafe(agent.request_stop))
    return await agent.run()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    server = urlsplit(args.server)
    if server.scheme not in ("http", "https") or not server.hostname or server.query or server.fragment:
        parser.error("--server must be an http:// or https:// URL, e.g. https://backup.example.com")
    if args.heartbeat_interval is not None and args.heartbeat_interval <= 0:
        parser.error("--heartbeat-interval must be more than 0")
    if args.progress_interval < 0.05:
        parser.error("--progress-interval must be at least 0.05")
    ring, display = setup_logging(quiet=args.quiet)
    try:
        password = read_password(args.password_env)
        login_key, wrapping_key = keys.derive_keys(args.tenant, args.username, password)
        new_password_keys = None
        if args.new_password_env:
            new_password = read_password(args.new_password_env)
            new_password_keys = keys.derive_keys(args.tenant, args.username, new_password)
            del new_password
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    del password
    try:
        state = AgentState.load(
            args.state_dir.expanduser(), server=args.server, tenant=args.tenant, username=args.username
        )
    except OSError as error:
        print(f"error: cannot use the state folder {args.state_dir}: {error}", file=sys.stderr)
        return EXIT_FATAL
    options = AgentOptions(
        server=args.server.rstrip("/"),
        tenant=args.tenant,
        username=args.username,
        name=args.name,
        protect=args.protect,
        vault_dir=args.vault_dir,
        ca_file=args.ca_file,
        allow_browse=args.allow_browse,
        heartbeat_interval=args.heartbeat_interval,
        new_password_keys=new_password_keys,
        progress_interval=args.progress_interval,
    )
    try:
        agent = Agent(options, state, login_key=login_key, wrapping_key=wrapping_key, ring=ring, display=display)
    except (OSError, ValueError) as error:  # an unreadable --ca-file, for one
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FATAL
    return asyncio.run(serve(agent))


if __name__ == "__main__":
    sys.exit(main())
