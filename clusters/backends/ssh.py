"""SSH to a cluster's command nodes: a small connection pool on paramiko.

- One persistent `paramiko.Transport` per command node, on a socket made with
  `socket.create_connection` and TCP_NODELAY (paramiko leaves Nagle on, which
  costs ~45 ms per command on loopback instead of ~3 ms), with keepalives.
- Host keys are checked STRICTLY against pinned known_hosts text: a node whose
  key is unknown or different is never talked to (`HostKeyMismatch`).
- Failover: nodes are tried in the given order; a node that fails is skipped
  (and tried last for `retry_after` seconds); if every node fails,
  `BackendUnavailable` names each node's error. `Result.node` says which node
  served a command.
- Commands are argv lists; EVERY element is `shlex.quote`d, so nothing typed by
  a user is ever interpreted by the remote shell. Scripts travel on stdin.
- Thread-safe: one lock per node guards creating its transport; channels on
  a transport are opened concurrently.

A command is retried on another node only if it could not be started (the
channel did not open). Once it was sent, a broken connection raises
`BackendUnavailable` without a retry: the command may have run (callers that
submit jobs find out by job name).
"""
import io
import logging
import re
import select
import shlex
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import paramiko

from .base import BackendError, BackendUnavailable, HostKeyMismatch, InvalidRequest, RemoteFileMissing

log = logging.getLogger(__name__)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


@dataclass
class Result:
    stdout: str
    stderr: str
    exit_status: int
    node: str  # "host:port" of the command node that ran it


@dataclass
class RemoteStat:
    size: int
    mtime: int | None
    mode: int | None
    uid: int | None


def load_private_key(text):
    """A paramiko key from OpenSSH/PEM private key text (unencrypted)."""
    if isinstance(text, bytes):
        text = text.decode()
    errors = []
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise BackendError("Cannot load the SSH private key (" + "; ".join(errors) + ")")


def parse_known_hosts(text):
    """`paramiko.HostKeys` from known_hosts text (plain or hashed names,
    `[host]:port` forms). Markers (@revoked, @cert-authority) are not
    supported and make the line ignored."""
    keys = paramiko.HostKeys()
    for lineno, line in enumerate((text or "").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("@"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
        except (paramiko.SSHException, ValueError) as exc:
            log.warning("known_hosts line %d ignored: %s", lineno, exc)
            continue
        if entry is None or entry.key is None:
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
    return keys


def host_key_name(host, port):
    return host if int(port) == 22 else f"[{host}]:{int(port)}"


def quote_argv(argv):
    if isinstance(argv, (str, bytes)) or not argv:
        raise TypeError("argv must be a non-empty list of strings")
    return " ".join(shlex.quote(str(a)) for a in argv)


class SSHPool:
    """Persistent SSH connections to an ordered list of command nodes."""

    def __init__(self, nodes, username, private_key_text, known_hosts_text, connect_timeout=5, env=None,
                 keepalive=15, retry_after=30, on_node_status=None):
        nodes = [(str(h), int(p)) for h, p in nodes]
        if not nodes:
            raise ValueError("at least one (host, port) node is needed")
        self.nodes = nodes
        self.username = username
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.retry_after = retry_after
        self.env = dict(env or {})
        for name in self.env:
            if not ENV_NAME.match(name):
                raise ValueError(f"invalid environment variable name: {name!r}")
        self._pkey = load_private_key(private_key_text)
        self._host_keys = parse_known_hosts(known_hosts_text)
        self._transports = {}
        self._node_locks = {n: threading.Lock() for n in nodes}
        self._failed_until = {}
        self.last_errors = {}  # "host:port" -> last connection error (str)
        # on_node_status((host, port), error_or_None): told which node served a
        # command and which failed (the portal records it on CommandNode).
        self.on_node_status = on_node_status
        self._closed = False

    # -- connections -------------------------------------------------------------

    @staticmethod
    def node_label(node):
        return f"{node[0]}:{node[1]}"

    def _connect(self, node):
        host, port = node
        pinned = self._host_keys.lookup(host_key_name(host, port))
        if not pinned:
            raise HostKeyMismatch(f"no pinned host key for {host_key_name(host, port)}")
        sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            transport = paramiko.Transport(sock)
        except Exception:
            sock.close()
            raise
        try:
            # Only negotiate host key types we have pinned for this node, so a
            # server holding several keys presents one we can compare.
            opts = transport.get_security_options()
            wanted = [t for t in opts.key_types if t in pinned or _base_type(t) in pinned]
            if not wanted:
                raise HostKeyMismatch(f"pinned key types {sorted(pinned.keys())} not supported")
            opts.key_types = wanted
            transport.start_client(timeout=self.connect_timeout)
            server_key = transport.get_remote_server_key()
            expected = pinned.get(server_key.get_name())
            if expected is None or expected.asbytes() != server_key.asbytes():
                raise HostKeyMismatch(
                    f"host key of {host_key_name(host, port)} ({server_key.get_name()} "
                    f"{server_key.fingerprint}) does not match the pinned key"
                )
            transport.auth_publickey(self.username, self._pkey)
            if not transport.is_authenticated():
                raise BackendUnavailable(f"authentication as {self.username} failed")
            transport.set_keepalive(self.keepalive)
        except Exception:
            transport.close()
            raise
        return transport

    def _transport_for(self, node):
        """The live transport of `node`, connecting if needed (raises)."""
        t = self._transports.get(node)
        if t is not None and t.is_active():
            return t
        with self._node_locks[node]:
            t = self._transports.get(node)
            if t is not None and t.is_active():
                return t
            if t is not None:
                t.close()
                self._transports.pop(node, None)
            if self._closed:
                raise BackendUnavailable("pool is closed")
            t = self._connect(node)
            self._transports[node] = t
            return t

    def _ordered_nodes(self):
        now = time.monotonic()
        fresh = [n for n in self.nodes if self._failed_until.get(n, 0) <= now]
        failed = [n for n in self.nodes if self._failed_until.get(n, 0) > now]
        return fresh + failed

    def _drop(self, node, transport=None):
        with self._node_locks[node]:
            current = self._transports.get(node)
            if transport is None or current is transport:
                self._transports.pop(node, None)
                if current is not None:
                    current.close()

    def _with_node(self, action):
        """Run `action(node, transport)` on the first node that works.
        `action` raises _NotStarted when the transport turned out dead before
        anything was sent; that node is then dropped and the next one tried."""
        errors = {}
        mismatch = False
        for node in self._ordered_nodes():
            label = self.node_label(node)
            for attempt in (1, 2):  # a stale transport gets one reconnect
                try:
                    transport = self._transport_for(node)
                except HostKeyMismatch as exc:
                    mismatch = True
                    errors[label] = f"{exc}"
                    log.error("SSH %s: %s", label, exc)
                    break
                except (OSError, EOFError, paramiko.SSHException, BackendError) as exc:
                    errors[label] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    break
                try:
                    result = action(node, transport)
                except _NotStarted as exc:
                    self._drop(node, transport)
                    errors[label] = f"{exc.__cause__ or exc}"
                    continue
                self._failed_until.pop(node, None)
                self.last_errors.pop(label, None)
                self._report(node, None)
                return result
            self._failed_until[node] = time.monotonic() + self.retry_after
            self.last_errors[label] = errors.get(label, "failed")
            log.warning("SSH node %s failed: %s", label, errors.get(label))
            self._report(node, self.last_errors[label])
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
        cls = HostKeyMismatch if mismatch else BackendUnavailable
        exc = cls(f"no command node reachable ({detail})")
        exc.errors = errors
        raise exc

    def _report(self, node, error):
        if self.on_node_status is None:
            return
        try:
            self.on_node_status(node, error)
        except Exception:  # noqa: BLE001 - reporting must never break a command
            log.exception("recording the state of SSH node %s failed", self.node_label(node))

    # -- commands ----------------------------------------------------------------

    def command_line(self, argv, env=None):
        """The remote command line: `env NAME=value ... argv`, all quoted."""
        merged = {**self.env, **(env or {})}
        prefix = []
        if merged:
            for name in merged:
                if not ENV_NAME.match(str(name)):
                    raise InvalidRequest(f"invalid environment variable name: {name!r}")
            prefix = ["env"] + [f"{k}={v}" for k, v in merged.items()]
        return quote_argv(prefix + [str(a) for a in argv])

    def run(self, argv, *, stdin=None, timeout=60, env=None):
        """Run argv on the first working node; returns Result (never raises on
        a non-zero exit status; raises BackendUnavailable if no node works or
        the connection broke / timed out while the command ran)."""
        result = self.run_parallel([(argv, stdin, env)], timeout=timeout)[0]
        if isinstance(result, BackendUnavailable):
            raise result
        return result

    def run_parallel(self, commands, *, timeout=60):
        """Run several commands at once on the first working node, each on a
        channel of its own over the node's one connection, all followed by
        one select loop in the calling thread. `commands` are (argv, stdin,
        env). Returns one entry per command, in order: its Result, or the
        BackendUnavailable it met (it broke or timed out mid-way, or did not
        start after others had). Raises BackendUnavailable if no node could
        start the first command (nothing ran then)."""
        prepared = [_closing_last(self.command_line(argv, env), stdin.encode() if isinstance(stdin, str) else stdin)
                    for argv, stdin, env in commands]
        if not prepared:
            return []

        def action(node, transport):
            label = self.node_label(node)
            running, results = [], [None] * len(prepared)
            try:
                for i, (command, stdin) in enumerate(prepared):
                    try:
                        running.append(self._start(i, transport, command, stdin, timeout))
                    except _NotStarted as exc:
                        if not running:
                            raise  # nothing started: the next node may
                        results[i] = BackendUnavailable(
                            f"command not started on {label}: {exc.__cause__ or exc}", command=command)
                self._collect(running, results, timeout, label)
            finally:
                for run in running:
                    run.chan.close()
            return results

        return self._with_node(action)

    def _start(self, index, transport, command, stdin, timeout):
        """Open a channel, exec `command`, send stdin and EOF; a _Running.
        Raises _NotStarted when the command could not be sent."""
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _NotStarted("cannot open a channel") from exc
        chan.settimeout(timeout)
        try:
            chan.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            raise _NotStarted("exec request refused") from exc
        run = _Running(index, chan, command)
        if not stdin:
            return run  # it reads /dev/null (see _closing_last)
        try:
            chan.sendall(stdin)
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            run.error = exc  # sent in part, so it may run: reported as broken
        return run

    def _collect(self, running, results, timeout, label):
        """Read every running command to its end and exit status, within
        `timeout` seconds from now, filling `results` with a Result or a
        BackendUnavailable each."""
        deadline = time.monotonic() + timeout
        waiting = list(running)
        while waiting:
            for run in list(waiting):
                outcome = run.poll(deadline, label)
                if outcome is not None:
                    results[run.index] = outcome
                    waiting.remove(run)
            if not waiting:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for run in waiting:
                    results[run.index] = run.failed(f"command timed out after {timeout}s on {label}")
                break
            # A channel's fileno is readable on data and on EOF.
            select.select([run.chan for run in waiting], [], [], min(remaining, 1.0))

    # -- SFTP --------------------------------------------------------------------

    @contextmanager
    def sftp(self):
        """A fresh SFTP session on the first working node (closed after use)."""
        def action(node, transport):
            try:
                return paramiko.SFTPClient.from_transport(transport)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise _NotStarted("cannot open an SFTP channel") from exc

        client = self._with_node(action)
        try:
            yield client
        finally:
            client.close()

    def sftp_read(self, path, offset=0, max_bytes=1 << 20):
        """Up to max_bytes of the remote file from offset (a negative offset
        counts from the end, like a tail)."""
        with self.sftp() as sftp:
            try:
                with sftp.open(path, "rb") as fh:
                    if offset < 0:
                        size = fh.stat().st_size
                        offset = max(0, size + offset)
                    fh.seek(offset)
                    return _read_exactly(fh, max_bytes)
            except OSError as exc:
                raise _sftp_error(path, exc) from exc

    def sftp_stat(self, path):
        with self.sftp() as sftp:
            try:
                st = sftp.stat(path)
            except OSError as exc:
                raise _sftp_error(path, exc) from exc
        return RemoteStat(size=st.st_size or 0, mtime=st.st_mtime, mode=st.st_mode, uid=st.st_uid)

    def close(self):
        self._closed = True
        for node in list(self._transports):
            self._drop(node)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _closing_last(command, stdin):
    """(command, stdin) such that the node cannot close the channel while we
    may still send on it: a command without stdin reads /dev/null and is sent
    no EOF; one with stdin is followed by `cat >/dev/null`, so the channel
    stays open until all of stdin and its EOF have arrived, whether or not
    the command read them (sudo refusing, say, exits at once).

    Why: paramiko's own thread answers the node's CLOSE with ours at once,
    while a data or EOF message another thread has just built is sent after
    it; OpenSSH then drops the WHOLE connection ("ieof packet referred to
    nonexistent channel"), breaking every command running on it."""
    if not stdin:
        return f"{command} </dev/null", None
    return f"{command}; s=$?; cat >/dev/null; exit $s", stdin


class _Running:
    """A command sent on a channel of its own: what it has printed so far."""

    def __init__(self, index, chan, command):
        self.index, self.chan, self.command = index, chan, command
        self.out, self.err, self.error = [], [], None

    def failed(self, message):
        return BackendUnavailable(message, command=self.command, stderr=b"".join(self.err).decode(errors="replace"))

    def poll(self, deadline, label):
        """Read what has come; the Result or BackendUnavailable once the
        command has ended, else None."""
        chan = self.chan
        try:
            while chan.recv_ready():
                self.out.append(chan.recv(65536))
            while chan.recv_stderr_ready():
                self.err.append(chan.recv_stderr(65536))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.error = exc
        if self.error is not None:
            return self.failed(f"connection to {label} broke during the command: {self.error}")
        if not ((chan.eof_received or chan.closed) and not chan.recv_ready() and not chan.recv_stderr_ready()):
            return None
        # The exit status may come just after the EOF; after the EOF the
        # channel is always readable, so it is waited for here.
        if not chan.status_event.wait(max(0.0, deadline - time.monotonic()) + 0.5):
            return None  # the caller reports the timeout
        if chan.exit_status == -1:
            return self.failed(f"connection to {label} closed without an exit status")
        return Result(stdout=b"".join(self.out).decode(errors="replace"),
                      stderr=b"".join(self.err).decode(errors="replace"), exit_status=chan.exit_status, node=label)


class _NotStarted(Exception):
    """The node's transport failed before the command was sent."""


def _base_type(key_type):
    # rsa-sha2-256/512 are signature variants of an ssh-rsa host key.
    return "ssh-rsa" if key_type.startswith("rsa-sha2-") else key_type


def _read_exactly(fh, max_bytes):
    chunks, left = [], max_bytes
    while left > 0:
        data = fh.read(min(left, 1 << 16))
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def _sftp_error(path, exc):
    import errno

    if getattr(exc, "errno", None) == errno.ENOENT or isinstance(exc, FileNotFoundError):
        return RemoteFileMissing(f"remote file not found: {path}")
    return BackendError(f"cannot read remote file {path}: {exc}")


# -- per-process registry ----------------------------------------------------------

_POOLS = {}
_POOLS_LOCK = threading.Lock()


def pool_for(key, factory):
    """The pool registered under `key`, created with `factory()` on first
    use and reused by later calls in this process."""
    pool = _POOLS.get(key)
    if pool is not None:
        return pool
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = factory()
            _POOLS[key] = pool
        return pool


def close_all():
    """Close every registered pool (tests, worker shutdown)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()
