"""The kubelet's log endpoint, so ``kubectl logs`` works: kube-apiserver proxies
``GET /containerLogs/<namespace>/<pod>/<container>`` to the node's address and port (the Node's
``daemonEndpoints.kubeletEndpoint``), over TLS. ``previous``, ``tailLines``, ``limitBytes`` and
``follow`` are honoured; the logs are the files under ``.devstack/logs/pods/``.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

# (namespace, pod, container, previous) -> (log file, still running) or an error message
Find = Callable[[str, str, str, bool], "tuple[Path, Callable[[], bool]] | str"]


def serve(find: Find, cert: Path, key: Path, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            return

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self._text(404, f"{url.path}: devstack's node serves /containerLogs only\n")
                return
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            found = find(parts[1], parts[2], parts[3], query.get("previous") == "true")
            if isinstance(found, str):
                self._text(400 if "previous" in found else 404, found + "\n")
                return
            path, running = found
            data = path.read_bytes() if path.exists() else b""
            if "tailLines" in query:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-int(query["tailLines"]):]) if int(query["tailLines"]) else b""
            if "limitBytes" in query:
                data = data[: int(query["limitBytes"])]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(data)
            if query.get("follow") == "true":
                self._follow(path, path.stat().st_size if path.exists() else 0, running)

        def _follow(self, path: Path, offset: int, running: Callable[[], bool]) -> None:
            while True:
                alive = running()
                size = path.stat().st_size if path.exists() else 0
                if size > offset:
                    with open(path, "rb") as f:
                        f.seek(offset)
                        self.wfile.write(f.read(size - offset))
                        self.wfile.flush()
                    offset = size
                elif not alive:
                    return
                time.sleep(0.3)

        def _text(self, code: int, text: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(text.encode())

    server = ThreadingHTTPServer((host, 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="kubelet-logs", daemon=True).start()
    return server
