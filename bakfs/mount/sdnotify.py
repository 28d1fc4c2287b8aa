"""Telling systemd that the mount is ready (`Type=notify` services, see
dist/systemd/bakfs@.service): `READY=1` once the file system serves, `STATUS=` with the
reason when it failed. Without $NOTIFY_SOCKET (not started by systemd) it does nothing.

Blocking code (one datagram); knows nothing of the mount.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable


def notifier() -> Callable[[str], None]:
    """A `notify(message)` for the daemon's life: "ready" or "error: ..."."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return lambda message: None

    def notify(message: str) -> None:
        send(address, "READY=1" if message == "ready" else f"STATUS={message}")

    return notify


def send(address: str, state: str) -> None:
    """One sd_notify datagram; an abstract socket is written with a leading @."""
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(state.encode())
