"""A TCP forwarder on 127.0.0.1 between bakfs and radosgw that a test can stop, start and
make misbehave, without touching the shared radosgw: the store going away (connections
refused), hanging (requests accepted, nothing answered), resetting connections in the middle
of a response body, or answering slowly."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType
from urllib.parse import urlsplit

MODES = ("pass", "hang", "reset", "reset-once", "slow")


class TcpProxy:
    """`mode` applies to what the store sends back, from the moment it is set:

    pass        forward everything
    hang        forward nothing (the client waits for its read timeout)
    reset       let RESET_AFTER bytes of each connection's answers through, then reset it
    reset-once  the same for the next connection that answers, then `pass` again
    slow        forward SLOW_RATE bytes a second per connection
    """

    RESET_AFTER = 16 * 1024
    SLOW_RATE = 256 * 1024

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "pass"
        self.resets = 0  # connections reset so far
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
            self._listener = None
        self.cut()

    def cut(self) -> None:
        """Close every open connection (the listener stays)."""
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        sent = 0
        try:
            while data := source.recv(16384):
                if answers:
                    data = self._shape(data, sent, sink)
                    if data is None:
                        return
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _shape(self, data: bytes, sent: int, sink: socket.socket) -> bytes | None:
        """What to forward of the store's answer in the current mode (None: reset)."""
        mode = self.mode
        if mode == "hang":
            while self.mode == "hang":
                time.sleep(0.05)
            return data if self.mode == "pass" else None
        if mode in ("reset", "reset-once") and sent + len(data) > self.RESET_AFTER:
            with self._lock:
                if self.mode == "reset-once":
                    self.mode = "pass"
                self.resets += 1
            with contextlib.suppress(OSError):
                sink.sendall(data[:max(0, self.RESET_AFTER - sent)])
                sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sink.close()  # RST: the client sees "connection reset" mid-body
            return None
        if mode == "slow":
            time.sleep(len(data) / self.SLOW_RATE)
        return data

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.mode = "pass"
        self.stop()
