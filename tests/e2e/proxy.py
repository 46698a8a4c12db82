"""A TCP proxy a test owns, in front of a real server (PostgreSQL), that the test can cut.

``cut()`` closes every forwarded connection and stops listening, so new connections are
refused, as when the database server is stopped; ``restore()`` listens again on the same
port. The service under test is pointed at :attr:`port` instead of the server itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self.connections = 0

    def start(self) -> TcpProxy:
        self.restore()
        return self

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:  # the pipes end and close them
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    stop = cut

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
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
                self.connections += 1
            pipes = [threading.Thread(target=self._pipe, args=(a, b), name="proxy-pipe", daemon=True)
                     for a, b in ((client, upstream), (upstream, client))]
            for pipe in pipes:
                pipe.start()
            threading.Thread(target=self._close_after, args=(pipes, client, upstream), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _close_after(self, pipes: list[threading.Thread], *sockets: socket.socket) -> None:
        for pipe in pipes:
            pipe.join()
        with self._lock:
            for s in sockets:
                self._sockets.discard(s)
                s.close()
