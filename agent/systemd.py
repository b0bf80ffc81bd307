"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

``Type=notify`` units learn that the agent is ready (its endpoints are listening) and when it
is stopping; with ``WatchdogSec=`` set, ``watchdog_interval`` says how often to ping.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Sends ``state`` (e.g. ``READY=1``); False when not run under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, when systemd's watchdog is on for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
