"""Which local process sent an OTLP request: the owner of the client's end of its connection.

Plain OpenTelemetry SDKs (Java, Go, Python) do not put ``process.pid`` in their resource,
so their spans would get no process share. Every such client on this host, in the agent's
network namespace, has its end of the TCP connection in ``/proc/net/tcp`` or
``/proc/net/tcp6``: the row whose local address is the gRPC peer address and whose remote
port is the receiver's names the socket's inode and the uid that created it, and the
process holding ``socket:[INODE]`` among ``/proc/*/fd`` is the sender (what ``ss -p`` does).

Cost: one lookup per connection, not per request. A hit is a dict lookup and one ``stat`` of
the ``/proc/PID/fd/N`` link the socket was found at, which proves the connection is still the
one resolved: after a client closes, the kernel may give its port to another process's new
connection, and the cached pid would then be wrong. Misses are remembered for
:data:`NEGATIVE_TTL_S`, resolutions run one at a time, and a walk of ``/proc/*/fd`` stops
after :data:`SCAN_BUDGET_S`.

Not resolvable (the records keep ``pid = None``):

* clients on other hosts, and clients in another network namespace (a container with its
  own network, a Kubernetes pod talking to a node agent): their sockets are not in the
  agent's ``/proc/net/tcp``;
* clients whose process the agent may not look into: another user's process when the agent
  is neither root nor holds ``CAP_SYS_PTRACE``, or any process outside the agent's pid
  namespace (an agent in a container without ``hostPID``);
* the agent's own process (an in-process client): watching itself would charge the agent's
  CPU time to the spans;
* Unix-domain sockets: grpc-python gives neither the connection's descriptor (for
  ``SO_PEERCRED``) nor anything in ``context.peer()`` (``"unix:"``) or ``auth_context()``
  that tells two clients apart, so the receiver offers no such listener.

A socket shared by several processes (inherited across ``fork``, as in multiprocessing's
workers) is attributed to the oldest ancestor among its holders: the process that opened
the connection.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

from wattspan.agent.pids import stat_field

__all__ = [
    "MAX_ENTRIES",
    "NEGATIVE_TTL_S",
    "SCAN_BUDGET_S",
    "PeerPids",
    "parse_peer",
    "proc_net_hex",
]

log = logging.getLogger(__name__)

MAX_ENTRIES = 1024
"""Connections remembered; the oldest entry goes first (``otlp.max_connections`` is 256 by
default, and closed connections' entries linger until pushed out)."""

NEGATIVE_TTL_S = 30.0
"""How long a peer that could not be resolved is not tried again (a remote client would
otherwise cost a ``/proc/net/tcp`` read on every request)."""

SCAN_BUDGET_S = 0.5
"""Longest walk of ``/proc/*/fd`` for one connection. Its first request waits for it; on a
node with thousands of processes a full walk can take seconds, and the sender's uid (from
``/proc/net/tcp``) is searched first, so the budget only runs out on such nodes."""

_CHECK_EVERY_FDS = 256
_PROC = "/proc"


@dataclass(frozen=True, slots=True)
class _Hit:
    pid: int
    fd_path: str  # /proc/PID/fd/N where the socket was found
    inode: int


@dataclass(frozen=True, slots=True)
class _Miss:
    until: float  # time.monotonic()


def parse_peer(peer: str) -> tuple[socket.AddressFamily, bytes, int] | None:
    """``context.peer()`` as (family, packed address, port); None for anything but TCP.

    grpc writes ``ipv4:127.0.0.1:PORT`` and ``ipv6:[::1]:PORT``, the brackets %-encoded by
    recent releases (``ipv6:%5B::1%5D:PORT``).
    """
    if peer.startswith("ipv4:"):
        family, rest = socket.AF_INET, peer[5:]
    elif peer.startswith("ipv6:"):
        family, rest = socket.AF_INET6, unquote(peer[5:])
    else:
        return None
    host, _, port_s = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]").partition("%")[0]  # scope: fe80::1%eth0
    try:
        port = int(port_s)
        packed = socket.inet_pton(family, host)
    except (ValueError, OSError):
        return None
    if not 0 < port <= 65535:
        return None
    return family, packed, port


def proc_net_hex(packed: bytes) -> str:
    """An address as ``/proc/net/tcp{,6}`` prints it: each 32-bit word of the network-order
    address printed as a native-endian integer (``127.0.0.1`` is ``0100007F`` on x86)."""
    return "".join(
        f"{int.from_bytes(packed[i : i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4)
    )


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def _candidates(family: socket.AddressFamily, packed: bytes) -> list[tuple[str, str]]:
    """(file, local address in its hex form) where the client's socket may be listed: an
    IPv4 client of a dual-stack listener is still an AF_INET socket, and an AF_INET6 client
    socket talking IPv4 is listed in tcp6 with a v4-mapped address."""
    if family == socket.AF_INET6 and packed.startswith(_V4_MAPPED):
        family, packed = socket.AF_INET, packed[12:]
    if family == socket.AF_INET:
        return [("tcp", proc_net_hex(packed)), ("tcp6", proc_net_hex(_V4_MAPPED + packed))]
    return [("tcp6", proc_net_hex(packed))]


class PeerPids:
    """Maps ``context.peer()`` of a receiver's connection to the pid of the local process at
    its other end (see the module docstring for what cannot be resolved).

    Args:
        server_port: the receiver's bound TCP port (the client socket's remote port).
        max_entries, negative_ttl_s, scan_budget_s: see the module constants.

    Thread-safe. ``scans`` counts connections looked up in ``/proc/net`` (cache misses),
    ``scan_timeouts`` those whose walk of ``/proc/*/fd`` ran out of budget.
    """

    def __init__(
        self,
        server_port: int,
        *,
        max_entries: int = MAX_ENTRIES,
        negative_ttl_s: float = NEGATIVE_TTL_S,
        scan_budget_s: float = SCAN_BUDGET_S,
    ) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self._port_suffix = f":{server_port:04X}"
        self._max_entries = max_entries
        self._negative_ttl_s = negative_ttl_s
        self._scan_budget_s = scan_budget_s
        self._own_pid = os.getpid()
        self._cache: dict[str, _Hit | _Miss] = {}
        # One resolution at a time: each is a /proc walk on the receiver's worker threads,
        # and two at once only compete for the same GIL; the second usually finds the
        # first's answer in the cache (two requests of one new connection).
        self._resolve_lock = threading.Lock()
        self.scans = 0
        self.scan_timeouts = 0

    def __len__(self) -> int:
        return len(self._cache)

    def pid_of(self, peer: str) -> int | None:
        """The sending process's pid, or None when it cannot be found."""
        entry = self._cache.get(peer)
        if entry is not None and self._still_valid(entry):
            return entry.pid if isinstance(entry, _Hit) else None
        with self._resolve_lock:
            entry = self._cache.get(peer)
            if entry is not None and self._still_valid(entry):
                return entry.pid if isinstance(entry, _Hit) else None
            self.scans += 1
            entry = self._resolve(peer)
            self._remember(peer, entry)
        return entry.pid if isinstance(entry, _Hit) else None

    def _still_valid(self, entry: _Hit | _Miss) -> bool:
        if isinstance(entry, _Miss):
            return time.monotonic() < entry.until
        try:
            # The fd link of a closed socket is gone, or names another file now.
            return os.stat(entry.fd_path).st_ino == entry.inode
        except OSError:
            return False

    def _remember(self, peer: str, entry: _Hit | _Miss) -> None:
        cache = self._cache
        cache.pop(peer, None)  # re-inserted at the end: the oldest entries go first
        while len(cache) >= self._max_entries:
            del cache[next(iter(cache))]
        cache[peer] = entry

    def _miss(self, peer: str, why: str) -> _Miss:
        log.debug("OTLP peer %s: no process id (%s)", peer, why)
        return _Miss(time.monotonic() + self._negative_ttl_s)

    def _resolve(self, peer: str) -> _Hit | _Miss:
        parsed = parse_peer(peer)
        if parsed is None:
            return self._miss(peer, "not a TCP peer")
        family, packed, port = parsed
        found = None
        for name, addr in _candidates(family, packed):
            found = self._socket_of(f"{_PROC}/net/{name}", f"{addr}:{port:04X}")
            if found is not None:
                break
        if found is None:
            return self._miss(peer, "its socket is not in this network namespace")
        inode, uid = found
        deadline = time.monotonic() + self._scan_budget_s
        owner = self._owner(inode, uid, deadline)
        if owner is None:
            return self._miss(peer, f"no visible process holds socket {inode}")
        pid, fd_path = owner
        log.debug("OTLP peer %s: process %d", peer, pid)
        return _Hit(pid, fd_path, inode)

    def _socket_of(self, path: str, local: str) -> tuple[int, int] | None:
        """(inode, uid) of the socket whose local address is ``local`` (hex ``ADDR:PORT``)
        and whose remote port is the receiver's."""
        try:
            with open(path, "rb") as f:
                table = f.read()
        except OSError:
            return None
        key = f": {local} ".encode()
        suffix = self._port_suffix.encode()
        at = table.find(key)
        while at >= 0:
            end = table.find(b"\n", at)
            # From the local address on: local, remote, st, tx:rx, tr:when, retrnsmt, uid,
            # timeout, inode.
            fields = table[at + 2 : end if end >= 0 else len(table)].split()
            if len(fields) > 8 and fields[1].endswith(suffix):
                inode, uid = int(fields[8]), int(fields[6])
                if inode:  # 0: no longer owned by a file (TIME_WAIT, orphaned)
                    return inode, uid
            at = table.find(key, at + 1)
        return None

    def _owner(self, inode: int, uid: int, deadline: float) -> tuple[int, str] | None:
        """(pid, fd link) of the process holding ``socket:[inode]``."""
        target = f"socket:[{inode}]"
        if self._fd_of(self._own_pid, target, deadline) is not None:
            return None  # an in-process client: see the module docstring
        try:
            names = os.listdir(_PROC)
        except OSError:
            return None
        # Newest first: a short program, the client that cannot wait for a second attempt,
        # has just started. The sender's own uid first: the socket's creator.
        pids = sorted((int(n) for n in names if n.isdigit()), reverse=True)
        others = []
        for pid in pids:
            if time.monotonic() > deadline:
                self.scan_timeouts += 1
                return None
            if pid == self._own_pid:
                continue
            try:
                mine = os.stat(f"{_PROC}/{pid}").st_uid == uid
            except OSError:
                continue
            if not mine:
                others.append(pid)
                continue
            fd = self._fd_of(pid, target, deadline)
            if fd is not None:
                return self._opener(pid, fd, target, deadline)
        for pid in others:
            if time.monotonic() > deadline:
                self.scan_timeouts += 1
                return None
            fd = self._fd_of(pid, target, deadline)
            if fd is not None:
                return self._opener(pid, fd, target, deadline)
        return None

    def _opener(self, pid: int, fd: str, target: str, deadline: float) -> tuple[int, str]:
        """Walks up from a holder while the parent holds the socket too: a forked worker
        inherits its parent's connection, and the parent is who sends on it."""
        while True:
            ppid = _parent(pid)
            if ppid is None or ppid <= 1 or ppid == self._own_pid:
                return pid, fd
            parent_fd = self._fd_of(ppid, target, deadline)
            if parent_fd is None:
                return pid, fd
            pid, fd = ppid, parent_fd

    def _fd_of(self, pid: int, target: str, deadline: float) -> str | None:
        """``/proc/PID/fd/N`` if process ``pid`` holds ``target``."""
        base = f"{_PROC}/{pid}/fd"
        try:
            fds = os.listdir(base)
        except OSError:  # gone, or not ours to look into
            return None
        readlink = os.readlink
        for i, name in enumerate(fds):
            if i % _CHECK_EVERY_FDS == _CHECK_EVERY_FDS - 1 and time.monotonic() > deadline:
                return None
            path = f"{base}/{name}"
            try:
                if readlink(path) == target:
                    return path
            except OSError:
                continue
        return None


def _parent(pid: int) -> int | None:
    return stat_field(pid, 4, _PROC)
