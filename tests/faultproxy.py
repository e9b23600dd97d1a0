"""A fault-injecting HTTP proxy for tests: sits in front of the moto S3 server on 127.0.0.1 and,
on a seeded fraction of requests, answers 503 SlowDown or 500, resets the connection (before or
after the request reached S3, so a write may have happened with its answer lost), stalls past the
client's read timeout, or cuts the response body short."""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("slowdown", "internal", "reset_before", "reset_after", "stall", "truncate")
_ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected</Message>'
              '<RequestId>fault</RequestId></Error>')


class FaultProxy:
    """Forward to `target` (host, port); inject a fault on `rate` of requests (seeded)."""

    def __init__(self, target: tuple[str, int], rate: float = 0.1, seed: int = 1, stall_s: float = 1.5,
                 faults: tuple[str, ...] = FAULTS) -> None:
        self.target, self.rate, self.stall_s, self.faults = target, rate, stall_s, faults
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter = Counter()
        self.requests = 0
        self.enabled = True
        self.scripted: list[tuple[str, str, str]] = []  # (method, path substring, fault), used once each
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                return

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(*proxy.target, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                return resp.status, resp.getheaders(), data

            def _reply(self, status, headers, data, truncate=False):
                self.send_response_only(status)
                head = self.command == "HEAD"  # keep the object's length; no body
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection") and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if head:
                    return
                self.wfile.write(data[: len(data) // 2] if truncate else data)
                if truncate:
                    self.close_connection = True

            def _handle(self):
                body = self._read_body()
                fault = proxy._scripted(self.command, self.path) or proxy._pick()
                if fault in ("slowdown", "internal"):
                    code, status = ("SlowDown", 503) if fault == "slowdown" else ("InternalError", 500)
                    xml = _ERROR_XML.format(code=code).encode()
                    self._reply(status, [("Content-Type", "application/xml")], xml)
                    return
                if fault == "reset_before":
                    self._reset()
                    return
                status, headers, data = self._forward(body)
                if fault == "reset_after":  # the request happened; its answer is lost
                    self._reset()
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                    self._reset()
                    return
                self._reply(status, headers, data, truncate=fault == "truncate" and len(data) > 1)

            def _reset(self):
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass
                self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def script(self, method: str, path_contains: str, fault: str) -> None:
        """Inject `fault` into the next `method` request whose path contains `path_contains`."""
        assert fault in FAULTS, fault
        with self.lock:
            self.scripted.append((method, path_contains, fault))

    def _scripted(self, method: str, path: str) -> str | None:
        with self.lock:
            for i, (m, sub, fault) in enumerate(self.scripted):
                if m == method and sub in path:
                    del self.scripted[i]
                    self.injected[fault] += 1
                    return fault
        return None

    def _pick(self) -> str | None:
        with self.lock:
            self.requests += 1
            if not self.enabled or self.rng.random() >= self.rate:
                return None
            fault = self.rng.choice(self.faults)
            self.injected[fault] += 1
            return fault

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
