"""The connection loop: register, connect, say hello, report status, heartbeat, run commands, reconnect.

Everything here follows docs/protocol.md. Three rules shape the code:

- Commands and jobs belong to the agent, not to one connection: a backup keeps running while the
  connection is down, and the frames that must reach the portal (acknowledgements, results, job
  start and end) wait in an outbox that is sent right after the next `hello`.
- A command id is recorded in the state file before the command runs, so a command delivered
  twice (the portal resends unacknowledged commands after a reconnect) runs at most once, even
  across restarts; a repeat is acknowledged again, and answered with its result if the agent
  still holds it (the portal also resends commands whose acknowledgement never arrived).
- Sending is paced below the portal's limit of 20 messages a second, so the agent is never the
  one that gets dropped or disconnected for flooding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from devices import protocol
from devices.agent import commands, crypto, rest
from devices.agent.backup import BackupJob, Job, RetentionJob, tree_size
from devices.agent.commands import Outcome, failed
from devices.agent.config import AgentState
from devices.agent.inventory import inventory, local_vault, protected_folders
from devices.agent.logs import RingBufferHandler
from devices.agent.pacing import Backoff, SendPacer
from devices.agent.profile import AccountIdentity, Keyring, ProfileStore, profile_rewrap
from devices.agent.progress import ProgressDisplay
from devices.agent.rest import in_daemon_thread, is_loopback, tls_context
from devices.agent.restore import RestoreJob
from devices.agent.storage import LocalDirectoryStorage
from devices.agent.vault import Vault, VaultError, VaultKeyMissing, key_ids

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_REPLACED = 3

PROGRESS_INTERVAL_SECONDS = 0.25  # at most four job_progress frames a second per job, by default
RESULTS_KEPT = 200  # results answered again to a repeated command (in memory only)
MIN_PROGRESS_INTERVAL_SECONDS = 0.05  # the pacer keeps even this under the portal's message rate
DEFAULT_HEARTBEAT_SECONDS = 30.0
MIN_HEARTBEAT_SECONDS = 1.0
OPEN_TIMEOUT_SECONDS = 20.0
STOP_GRACE_SECONDS = 5.0
CANCEL_WAIT_SECONDS = 60.0
OUTBOX_FRAMES = 1000
INCOMING_FRAME_LIMIT = 1024 * 1024

logger = logging.getLogger("devices.agent")
# A command's outcome, and what to do once its result is sent (close, resend status...), if anything.
Handled = tuple[Outcome, Callable[[], Awaitable[None]] | None]


class FatalError(Exception):
    """A condition the agent cannot recover from by trying again; it exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_FATAL) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class AgentOptions:
    server: str
    tenant: str
    username: str
    name: str
    protect: list[Path]
    vault_dir: Path | None = None
    ca_file: str | None = None
    allow_browse: bool = False
    heartbeat_interval: float | None = None
    # A new password's (L, R): the agent changes the account's password to it once registered.
    new_password_keys: tuple[bytes, bytes] | None = None
    progress_interval: float = PROGRESS_INTERVAL_SECONDS


REFUSAL_MESSAGES = {
    "bad_credentials": (
        "The portal refused the credentials: unknown tenant, unknown username or wrong password. "
        "Check --tenant, --username and the password."
    ),
    "account_suspended": "The backup account is suspended; ask your provider.",
    "device_limit": "The backup account has reached its device limit; ask your provider to raise it.",
    "device_id_taken": (
        "Another backup account of this tenant registered this device id. Start the agent with another "
        "--state-dir to register as a new device."
    ),
}


class Agent:
    """One device: its state, its connection to the portal, its running commands and jobs."""

    def __init__(
        self,
        options: AgentOptions,
        state: AgentState,
        *,
        login_key: bytes,
        wrapping_key: bytes,
        ring: RingBufferHandler | None = None,
        display: ProgressDisplay | None = None,
        backoff: Backoff | None = None,
        profile_store: ProfileStore | None = None,
    ) -> None:
        self.options, self.state = options, state
        self._login_key = login_key
        # Only P = HKDF(R) is kept, in memory: it opens the profile secrets (the vaults' E keys).
        # Neither R nor P is ever written or sent.
        self.account = AccountIdentity(options.tenant, options.username)
        self._profile_key = crypto.profile_key(wrapping_key)
        self.ring = ring or RingBufferHandler()
        self.display = display or ProgressDisplay(None, bar=False)
        self.backoff = backoff or Backoff()
        self._close_reason = ""  # of the last connection, as the portal sent it
        self.items = {item.item_id: item for item in protected_folders(options.protect)}
        for item in self.items.values():
            if not item.path.exists():
                logger.warning("The protected path %s does not exist (yet).", item.path)
        self.vault = local_vault(options.vault_dir)
        self.vault_storage = LocalDirectoryStorage(self.vault.path) if self.vault is not None else None
        self.vault_key_id = ""  # the E in use, as last seen (an id, not a secret), for status reports
        self.tls = tls_context(options.server, options.ca_file)
        self.profile_store: ProfileStore = profile_store or rest.RemoteProfile(
            options.server, tls=self.tls, token=lambda: self.state.token
        )
        self.jobs: dict[str, Job] = {}
        self._job_done: dict[str, asyncio.Event] = {}
        # The result frames of the latest commands, sent again when the portal repeats a command:
        # a result written to a socket whose worker stopped before reading it is otherwise lost.
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._run_id, self._attempts = secrets.token_hex(8), 0
        self._ws: ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._pacer = SendPacer()
        self._outbox: deque[str] = deque(maxlen=OUTBOX_FRAMES)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self._exit_code: int | None = None
        self._registered_since_welcome = False
        host = urlsplit(options.server).hostname or ""
        if urlsplit(options.server).scheme == "http" and not is_loopback(host):
            logger.warning("%s is not https: the device token travels unencrypted.", options.server)

    # --- Lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Stay connected until stopped, replaced, uninstalled or refused; return the exit code."""
        try:
            while not self._stop.is_set():
                if not self.state.token:
                    await self._register()
                    continue
                if self.options.new_password_keys is not None:
                    await self._change_password()
                code = await self._connect_once()
                if self._stop.is_set():
                    break
                if code == protocol.CLOSE_REPLACED:
                    raise FatalError(
                        "Another agent connected as this device (close code 4002); this one stops.", EXIT_REPLACED
                    )
                if code in (protocol.CLOSE_UNAUTHENTICATED, protocol.CLOSE_REVOKED):
                    if self._registered_since_welcome:
                        raise FatalError(f"The portal refused a freshly issued device token (close code {code}).")
                    logger.warning("The portal no longer accepts this device's token (close code %s).", code)
                    self.state.set_token("")
                    continue
                delay = self._reconnect_delay(code)
                logger.info("Reconnecting in %.1f s.", delay)
                await self._sleep(delay)
        except FatalError as error:
            logger.error("%s", error)
            self._exit_code = error.exit_code
        finally:
            await self._finish()
        return self._exit_code if self._exit_code is not None else EXIT_OK

    def request_stop(self) -> None:
        """Stop cleanly (SIGINT, SIGTERM): cancel running jobs, let them report, close with 1000."""
        if self._stopping is None:
            logger.info("Stopping.")
            self._stopping = asyncio.get_running_loop().create_task(self._wind_down())

    async def _wind_down(self) -> None:
        await self._cancel_work()
        ws = self._ws
        if ws is not None:
            await ws.close(protocol.CLOSE_NORMAL)

    async def _cancel_work(self) -> None:
        """Cancel running jobs and give every command a moment to send its result while still connected."""
        self._stop.set()
        for job in list(self.jobs.values()):
            job.log("warning", "The agent is stopping.")
            job.cancel.set()
        current = asyncio.current_task()
        pending = [task for task in self._tasks if task is not current and not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)

    async def _finish(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._wind_down())
        with contextlib.suppress(Exception):
            await self._stopping
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_GRACE_SECONDS)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- Registration ------------------------------------------------------------------------

    async def _register(self) -> None:
        """Register with L until the portal answers; a refusal (4xx) is fatal, an outage is retried."""
        while not self._stop.is_set():
            body = {"device_id": self.state.device_id, **inventory(self.options.name)}
            call = asyncio.ensure_future(
                in_daemon_thread(
                    rest.register,
                    self.options.server,
                    tls=self.tls,
                    tenant=self.options.tenant,
                    username=self.options.username,
                    l_key=self._login_key,
                    inventory=body,
                )
            )
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not call.done():
                call.cancel()
                return
            try:
                answer = call.result()
            except rest.PortalRefused as refusal:
                if refusal.status == 404:
                    raise FatalError(f"{self.options.server} has no device registration; check --server.") from None
                message = REFUSAL_MESSAGES.get(refusal.code, f"The portal refused the registration: {refusal}.")
                raise FatalError(message) from None
            except rest.PortalUnavailable as error:
                delay = self.backoff.next_delay()
                logger.warning("Cannot register (%s); trying again in %.1f s.", error, delay)
                await self._sleep(delay)
                continue
            token = answer.get("token")
            if not isinstance(token, str) or not token:
                raise FatalError("The portal's registration answer holds no token.")
            self.state.set_token(token)
            self._registered_since_welcome = True
            logger.info("Registered as device %s.", self.state.device_id)
            return

    async def _change_password(self) -> None:
        """Change the account's password: the profile secrets are sealed again under the new R here,
        and the portal receives the new L and that ciphertext together, never a password or a key."""
        assert self.options.new_password_keys is not None
        new_login_key, new_wrapping_key = self.options.new_password_keys
        new_profile_key = crypto.profile_key(new_wrapping_key)
        for _ in range(5):
            try:
                stored = await in_daemon_thread(self.profile_store.fetch)
                blob = profile_rewrap(
                    stored.blob, old_key=self._profile_key, new_key=new_profile_key, account=self.account
                )
                await in_daemon_thread(
                    rest.change_password,
                    self.options.server,
                    tls=self.tls,
                    token=self.state.token,
                    old_l_key=self._login_key,
                    new_l_key=new_login_key,
                    version=stored.version,
                    secrets=blob,
                )
            except rest.PortalRefused as refusal:
                if refusal.status == 409:
                    continue  # another device changed the profile meanwhile: seal its new version
                raise FatalError(f"The portal refused the password change: {refusal.message or refusal}.") from None
            except rest.PortalUnavailable as error:
                raise FatalError(f"Cannot change the password now ({error}); the old one still works.") from None
            except VaultError as error:
                raise FatalError(str(error)) from None
            self._login_key, self._profile_key = new_login_key, new_profile_key
            self.options.new_password_keys = None
            logger.warning("Changed the account's password; use the new one from now on, on every device.")
            return
        raise FatalError("The account's profile kept changing during the password change; try again.")

    # --- One connection ----------------------------------------------------------------------

    def _next_attempt_id(self) -> str:
        """`<run>.<n>`: this process's random run id and its n-th connection attempt."""
        self._attempts += 1
        return f"{self._run_id}.{self._attempts}"

    def _reconnect_delay(self, code: int | None) -> float:
        """The portal's own time when it turned us away busy (4013 with retry_after), else backoff.

        A busy portal gives each device it turns away its own slot, spread over the time it needs
        for all of them; that delay is not a failure of ours, so the backoff does not grow."""
        retry_after = protocol.retry_after_of(self._close_reason) if code == protocol.CLOSE_TRY_AGAIN_LATER else None
        if retry_after is not None:
            return self.backoff.after(retry_after)
        return self.backoff.next_delay()

    async def _connect_once(self) -> int | None:
        """Open the websocket and serve it until it closes; return the close code (None: no connection)."""
        url = rest.websocket_url(self.options.server)
        self._close_reason = ""
        extra: dict[str, Any] = {"ssl": self.tls} if self.tls is not None else {}
        opened_at = None
        try:
            async with connect(
                url,
                additional_headers={
                    "Authorization": f"Device {self.state.token}",
                    # Lets the portal tell this attempt from an earlier one of ours it serves late.
                    "Device-Connection": self._next_attempt_id(),
                },
                compression=None,
                open_timeout=OPEN_TIMEOUT_SECONDS,
                max_size=INCOMING_FRAME_LIMIT,
                user_agent_header=rest.USER_AGENT,
                **extra,
            ) as ws:
                opened_at = time.monotonic()
                return await self._serve(ws)
        except ConnectionClosed as closed:
            self._close_reason = closed.rcvd.reason if closed.rcvd is not None else ""
            return closed.rcvd.code if closed.rcvd is not None else 1006
        except InvalidStatus as error:
            logger.warning("The portal refused the websocket: HTTP %s.", error.response.status_code)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as error:
            logger.warning("Cannot connect to %s: %s", url, error or type(error).__name__)
        finally:
            self.backoff.connection_ended(time.monotonic() - opened_at if opened_at is not None else 0.0)
        return None

    async def _serve(self, ws: ClientConnection) -> int:
        """Say hello, send what waited in the outbox, then handle frames until the connection closes."""
        hello: dict[str, Any] = {
            "type": "hello",
            **inventory(self.options.name),
            "consents": {"allow_browse": self.options.allow_browse},
        }
        async with self._send_lock:
            # Frames queued while offline go out right after hello and before anything new, so that
            # a job's start reaches the portal before its progress.
            await self._pacer.wait()
            await ws.send(self._encode(hello))
            while self._outbox:
                await self._pacer.wait()
                await ws.send(self._outbox[0])
                self._outbox.popleft()
            self._ws = ws
        logger.info("Connected to %s.", self.options.server)
        if self._stop.is_set():
            await ws.close(protocol.CLOSE_NORMAL)
        self._spawn(self.send_status())
        heartbeat: asyncio.Task[None] | None = None
        try:
            while True:
                text = await ws.recv()
                message = self._decode(text)
                if message is None:
                    continue
                if message.get("type") == "welcome":
                    self._registered_since_welcome = False
                    if heartbeat is not None:
                        heartbeat.cancel()
                    heartbeat = asyncio.create_task(self._heartbeats(self._heartbeat_interval(message)))
                elif message.get("type") == "command":
                    self._on_command(message)
                elif message.get("type") == "error":
                    logger.warning(
                        "The portal reported %s: %s (in reply to %s).",
                        message.get("code"),
                        message.get("message"),
                        message.get("in_reply_to", "?"),
                    )
                else:
                    logger.debug("Ignored a %r frame.", message.get("type"))
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else 1006
            self._close_reason = closed.rcvd.reason if closed.rcvd is not None else ""
            level = logging.INFO if code == protocol.CLOSE_NORMAL else logging.WARNING
            logger.log(level, "The connection closed (code %s).", code)
            return code
        finally:
            self._ws = None
            if heartbeat is not None:
                heartbeat.cancel()

    def _decode(self, text: str | bytes) -> dict[str, Any] | None:
        if isinstance(text, bytes):
            logger.warning("Ignored a binary frame.")
            return None
        try:
            message = json.loads(text)
        except ValueError:
            logger.warning("Ignored a frame that is not JSON.")
            return None
        if not isinstance(message, dict):
            logger.warning("Ignored a frame that is not a JSON object.")
            return None
        return message

    def _heartbeat_interval(self, welcome: dict[str, Any]) -> float:
        """Return the server's interval, or --heartbeat-interval where that is shorter."""
        interval = welcome.get("heartbeat_interval")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            interval = DEFAULT_HEARTBEAT_SECONDS
        if self.options.heartbeat_interval:
            interval = min(interval, self.options.heartbeat_interval)
        return max(MIN_HEARTBEAT_SECONDS, float(interval))

    async def _heartbeats(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.send({"type": "heartbeat"})

    # --- Sending -----------------------------------------------------------------------------

    @staticmethod
    def _encode(frame: dict[str, Any]) -> str:
        return json.dumps({"v": protocol.VERSION, **frame}, separators=(",", ":"))

    async def send(self, frame: dict[str, Any], *, keep: bool = False) -> bool:
        """Send a frame, paced; with `keep`, a frame that cannot go now waits for the next connection."""
        text = self._encode(frame)
        if len(text) > protocol.MAX_FRAME_BYTES:
            logger.error("Did not send a %s frame of %d bytes: the limit is 64 KiB.", frame.get("type"), len(text))
            return False
        async with self._send_lock:
            ws = self._ws
            if ws is not None:
                await self._pacer.wait()
                try:
                    await ws.send(text)
                    return True
                except ConnectionClosed:
                    pass
            if keep:
                self._outbox.append(text)
            return False

    async def send_status(self) -> None:
        """Report protected items and vault usage (sizes are measured in a thread: trees can be big)."""
        frame = await asyncio.to_thread(self.status_frame)
        await self.send(frame)

    def status_frame(self) -> dict[str, Any]:
        exclude = self.vault.path if self.vault else None
        items = [
            {
                "item_id": item.item_id,
                "name": item.name,
                "engine": "files",
                "size_bytes": tree_size(item.path, exclude=exclude),
            }
            for item in self.items.values()
        ]
        vaults = []
        if self.vault is not None:
            vault: dict[str, Any] = {
                "vault_id": self.vault.vault_id,
                "name": self.vault.name,
                "kind": "local",
                "bytes_used": tree_size(self.vault.path),
            }
            # The key objects' names are the key ids: readable without opening the vault.
            stored_ids = key_ids(self.vault_storage) if self.vault_storage is not None else []
            if stored_ids:
                chosen = self.vault_key_id if self.vault_key_id in stored_ids else stored_ids[-1]
                vault.update(encryption_format=crypto.FORMAT_VERSION, key_id=chosen)
            vaults.append(vault)
        return {"type": "status", "protected_items": items, "vaults": vaults}

    # --- Commands ----------------------------------------------------------------------------

    def _on_command(self, message: dict[str, Any]) -> None:
        command_id, kind = message.get("command_id"), message.get("kind")
        parameters = message.get("parameters")
        if not isinstance(parameters, dict):
            parameters = {}
        if not isinstance(command_id, str) or not command_id or not isinstance(kind, str):
            logger.warning("Ignored a command frame without command_id or kind.")
            return
        # Decided here, synchronously, so that two copies arriving back to back cannot both run.
        repeat = self.state.has_executed(command_id)
        if not repeat:
            self.state.mark_executed(command_id)
        self._spawn(self._run_command(command_id, kind, parameters, repeat=repeat))

    async def _run_command(self, command_id: str, kind: str, parameters: dict[str, Any], *, repeat: bool) -> None:
        await self.send({"type": "command_ack", "command_id": command_id}, keep=True)
        if repeat:
            logger.info("Command %s (%s) was already executed; acknowledged it again.", command_id, kind)
            if (result := self._results.get(command_id)) is not None:
                await self.send(result, keep=True)
            return
        logger.info("Running command %s (%s).", command_id, kind)
        handler = self._handlers.get(kind)
        after: Callable[[], Awaitable[None]] | None = None
        try:
            if handler is None:
                outcome = failed(f"unknown command kind {kind!r}")
            else:
                outcome, after = await handler(self, command_id, parameters)
        except Exception as error:  # a bug in one command must not take the agent down
            logger.exception("Command %s (%s) failed.", command_id, kind)
            outcome = failed(f"the agent failed: {error}")
        logger.info("Command %s (%s) %s.", command_id, kind, outcome.status)
        frame = outcome.frame(command_id)
        self._results[command_id] = frame
        while len(self._results) > RESULTS_KEPT:
            self._results.popitem(last=False)
        await self.send(frame, keep=True)
        if after is not None:
            await after()

    async def _ping(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        return commands.ping(), None

    async def _browse_files(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        outcome = await asyncio.to_thread(commands.browse_files, parameters, allowed=self.options.allow_browse)
        return outcome, None

    async def _collect_logs(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        return commands.collect_logs(parameters, self.ring.recent(commands.COLLECT_LOGS_MAX)), None

    async def _update_software(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        return commands.update_software(parameters), None

    async def _refresh_profile(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        """Read the profile and check that this device can open it (the password is still current)."""
        try:
            version, secrets = await in_daemon_thread(self._keyring().read)
        except (rest.PortalRefused, rest.PortalUnavailable) as error:
            return failed(f"cannot fetch the profile: {error}"), None
        except VaultError as error:
            return failed(str(error)), None
        return Outcome("succeeded", {"profile_version": version, "vault_keys": len(secrets.vaults)}), self.send_status

    async def _drop_connection(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        ws = self._ws

        async def close() -> None:
            if ws is not None:
                await ws.close(protocol.CLOSE_NORMAL, "drop_connection")

        return Outcome("succeeded", {}), close

    async def _uninstall(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        remove_config = bool(parameters.get("remove_config"))

        async def forget_and_stop() -> None:
            self._exit_code = EXIT_OK
            await self._cancel_work()
            # Forget before closing: once the connection is down the main loop winds the agent up.
            self.state.forget(remove_directory=remove_config)
            logger.warning("Uninstalled: the device token and state were deleted. Stopping.")
            ws = self._ws
            if ws is not None:
                await ws.close(protocol.CLOSE_NORMAL)

        return Outcome("succeeded", {"remove_config": remove_config}), forget_and_stop

    async def _cancel_job(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        job_id = str(parameters.get("job_id", ""))
        job, done = self.jobs.get(job_id), self._job_done.get(job_id)
        if job is None or done is None:
            return failed("no such job"), None
        job.log("warning", f"Cancelled by command {command_id}.")
        job.cancel.set()
        # Answer after the job has said `job_finished`, so the portal sees the two in that order.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), CANCEL_WAIT_SECONDS)
        return Outcome("succeeded", {"job_id": job_id, "job_status": job.status}), None

    # --- Vault commands: backup, restore, retention, key rotation, snapshots --------------------

    def _vault_for(self, parameters: dict[str, Any]) -> LocalDirectoryStorage | None:
        if self.vault is None or self.vault_storage is None or parameters.get("vault_id") != self.vault.vault_id:
            return None
        return self.vault_storage

    def _keyring(self) -> Keyring:
        return Keyring(self.profile_store, profile_key=self._profile_key, account=self.account)

    async def _open_vault(self, storage: LocalDirectoryStorage, *, create: bool) -> Vault | Outcome:
        """Open the vault with its E from the profile (read afresh); an Outcome says why it cannot be."""
        assert self.vault is not None
        try:
            opened = await in_daemon_thread(self._keyring().open_vault, storage, self.vault.vault_id, create=create)
        except (rest.PortalRefused, rest.PortalUnavailable) as error:
            return failed(f"cannot read the account's profile secrets: {error}")
        except crypto.IntegrityError as error:
            return failed(f"the vault's key failed verification: {error}")
        except VaultKeyMissing as error:
            self.vault_key_id = ""  # the key is gone: the status report stops naming it
            return failed(str(error))
        except (VaultError, OSError) as error:
            return failed(str(error))
        self.vault_key_id = opened.keys.key_id
        return opened

    @staticmethod
    def _keep_snapshots(parameters: dict[str, Any]) -> int | None | Outcome:
        keep = parameters.get("keep_snapshots")
        if keep is None:
            return None
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            return failed("'keep_snapshots' must be a whole number of at least 1")
        return keep

    async def _job_outcome(self, job: Job, command_id: str, noun: str) -> Handled:
        status = await self.run_job(job, command_id=command_id)
        result = {"job_id": job.job_id, "job_status": status, **job.counters.snapshot(), **job.result}
        if status in ("succeeded", "warning"):
            return Outcome("succeeded", result), self.send_status
        if status == "cancelled":
            return Outcome("cancelled", result, f"the {noun} was cancelled"), self.send_status
        reason = next((line["message"] for line in reversed(job.log_lines) if line["level"] == "error"), "")
        return Outcome("failed", result, reason or f"the {noun} failed; see the job's log"), self.send_status

    async def _run_backup(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        item = self.items.get(str(parameters.get("protected_item_id", "")))
        if item is None:
            return failed("no such protected item on this device"), None
        storage = self._vault_for(parameters)
        if storage is None:
            return failed("no such vault on this device"), None
        keep = self._keep_snapshots(parameters)
        if isinstance(keep, Outcome):
            return keep, None
        if any(job.item_id == item.item_id and job.kind == "backup" for job in self.jobs.values()):
            return failed("a backup of this protected item is already running"), None
        opened = await self._open_vault(storage, create=True)
        if isinstance(opened, Outcome):
            return opened, None
        job = BackupJob(
            source=item.path,
            vault=opened,
            item_id=item.item_id,
            exclude=storage.root,
            keep_snapshots=keep,
            logger=logger,
        )
        return await self._job_outcome(job, command_id, "backup")

    async def _restore(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        storage = self._vault_for(parameters)
        if storage is None:
            return failed("no such vault on this device"), None
        target = parameters.get("target")
        if not isinstance(target, str) or not Path(target).expanduser().is_absolute():
            return failed("'target' must be an absolute path to a new or empty folder"), None
        snapshot_id, item_id = parameters.get("snapshot_id"), parameters.get("protected_item_id")
        if not isinstance(snapshot_id, str) and not isinstance(item_id, str):
            return failed(
                "name the snapshot (snapshot_id) or the protected item whose newest snapshot to restore"
            ), None
        opened = await self._open_vault(storage, create=False)
        if isinstance(opened, Outcome):
            return opened, None
        job = RestoreJob(
            vault=opened,
            target=Path(target).expanduser(),
            item_id=item_id if isinstance(item_id, str) else "",
            snapshot_id=snapshot_id if isinstance(snapshot_id, str) else None,
            logger=logger,
        )
        return await self._job_outcome(job, command_id, "restore")

    async def _apply_retention(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        storage = self._vault_for(parameters)
        if storage is None:
            return failed("no such vault on this device"), None
        item_id = parameters.get("protected_item_id")
        keep = self._keep_snapshots(parameters)
        if not isinstance(item_id, str) or not item_id or keep is None:
            return failed("name the protected item and how many snapshots to keep (keep_snapshots)"), None
        if isinstance(keep, Outcome):
            return keep, None
        opened = await self._open_vault(storage, create=False)
        if isinstance(opened, Outcome):
            return opened, None
        job = RetentionJob(vault=opened, item_id=item_id, keep=keep, logger=logger)
        return await self._job_outcome(job, command_id, "retention")

    async def _rotate_vault_key(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        storage = self._vault_for(parameters)
        if storage is None:
            return failed("no such vault on this device"), None
        assert self.vault is not None

        def rotate() -> tuple[str, str]:
            with storage.lock():
                return self._keyring().rotate(storage, self.vault.vault_id)  # type: ignore[union-attr]

        try:
            old_id, new_id = await in_daemon_thread(rotate)
        except (rest.PortalRefused, rest.PortalUnavailable) as error:
            return failed(f"cannot update the account's profile secrets: {error}"), None
        except (crypto.IntegrityError, VaultError, OSError) as error:
            return failed(f"the key was not rotated: {error}"), None
        self.vault_key_id = new_id
        logger.info("Rotated the key of vault %s: %s replaces %s.", self.vault.vault_id, new_id, old_id)
        return Outcome("succeeded", {"old_key_id": old_id, "key_id": new_id}), self.send_status

    async def _list_snapshots(self, command_id: str, parameters: dict[str, Any]) -> Handled:
        storage = self._vault_for(parameters)
        if storage is None:
            return failed("no such vault on this device"), None
        opened = await self._open_vault(storage, create=False)
        if isinstance(opened, Outcome):
            return opened, None

        def summaries() -> list[dict[str, Any]]:
            with storage.lock():
                return [
                    {
                        "snapshot_id": manifest["snapshot_id"],
                        "protected_item_id": manifest["item_id"],
                        "created_at": manifest["created_at"],
                        "files": len(manifest["files"]),
                        "bytes": sum(entry["size"] for entry in manifest["files"]),
                    }
                    for manifest in opened.manifests()
                ]

        try:
            listed = await asyncio.to_thread(summaries)
        except (crypto.IntegrityError, VaultError, OSError) as error:
            return failed(f"cannot list the snapshots: {error}"), None
        newest_first = sorted(listed, key=lambda summary: (summary["created_at"], summary["snapshot_id"]), reverse=True)
        return Outcome("succeeded", commands.fit_list({"snapshots": newest_first}, "snapshots", keep="head")), None

    _handlers: dict[str, Callable[[Agent, str, dict[str, Any]], Awaitable[Handled]]] = {
        "ping": _ping,
        "run_backup": _run_backup,
        "restore": _restore,
        "apply_retention": _apply_retention,
        "rotate_vault_key": _rotate_vault_key,
        "list_snapshots": _list_snapshots,
        "cancel_job": _cancel_job,
        "refresh_profile": _refresh_profile,
        "update_software": _update_software,
        "uninstall": _uninstall,
        "drop_connection": _drop_connection,
        "collect_logs": _collect_logs,
        "browse_files": _browse_files,
    }

    # --- Jobs --------------------------------------------------------------------------------

    async def run_job(self, job: Job, *, command_id: str | None) -> str:
        """Run a job in a worker thread, reporting start, progress and end; return its status."""
        self.jobs[job.job_id] = job
        self._job_done[job.job_id] = asyncio.Event()
        try:
            files_total = await asyncio.to_thread(job.scan)
            started: dict[str, Any] = {
                "type": "job_started",
                "job_id": job.job_id,
                "kind": job.kind,
                "protected_item_id": job.item_id,
                "vault_id": job.vault_id,
                "files_total": files_total,
            }
            if command_id:
                started["command_id"] = command_id
            await self.send(started, keep=True)
            reporter = asyncio.create_task(self._report_progress(job))
            try:
                status = await asyncio.to_thread(job.run)
            except Exception as error:  # anything unexpected still ends the job, as failed
                logger.exception("Job %s failed.", job.job_id)
                job.log("error", f"The {job.kind} stopped: {error}")
                status = job.status = "failed"
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
                self.display.finish(job.job_id)
            finished = {
                "type": "job_finished",
                "job_id": job.job_id,
                "status": status,
                **{key: value for key, value in job.counters.snapshot().items() if key != "percent"},
                "log_lines": job.finished_log_lines(),
            }
            if job.snapshot_id:
                finished["snapshot_id"] = job.snapshot_id
            await self.send(commands.fit_list(finished, "log_lines", keep="tail"), keep=True)
            return status
        finally:
            self.jobs.pop(job.job_id, None)
            self._job_done.pop(job.job_id).set()

    async def _report_progress(self, job: Job) -> None:
        last: dict[str, Any] | None = None
        label = job.label
        while True:
            await asyncio.sleep(max(MIN_PROGRESS_INTERVAL_SECONDS, self.options.progress_interval))
            snapshot = job.counters.snapshot()
            self.display.update(job.job_id, label, snapshot, time.monotonic() - job.started_at)
            if snapshot != last:
                last = snapshot
                await self.send({"type": "job_progress", "job_id": job.job_id, **snapshot})
