"""HTTP: Prometheus remote-read, label/series endpoints, health, readiness and /metrics."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
import decimal
import json
import math
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, unquote, urlparse

import cramjam
import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError

from blocks.log import log_request
from blocks.units import parse_time_ms
from blocks.errors import InvalidInputError, StrataError, classify, http_status_for
from blocks.selectors import parse_selector
from blocks.reader import list_tenants
from blocks.auth import TenantAuth
from query_gateway.sql import SqlLimit, SqlSession, TenantBlocks
from query_gateway.ui import UI_PAGE, bucket_document
from query_gateway.convert import REPLAY_COLUMNS, derived_samples, prefers_raw, replay_mode, replay_windows
from query_gateway.engine import Engine, Matcher, SeriesData, parse_matchers
from query_gateway.memory import release as release_memory
from query_gateway.metrics import GatewayMetrics, log_event
from query_gateway.pb import prom_remote_pb2
from query_gateway.wire import (
    Pieces, chunked_read_frame, labels_bytes, prom_chunk_groups, prom_chunk_groups_of, snappy_block,
    timeseries_bytes, uvarint,
)

MAX_BODY = 32 << 20               # a request body (remote-read requests are a few KB)
MAX_DECOMPRESSED = 32 << 20       # what a snappy request body may claim to expand to
STREAM_FRAME_BYTES = 1 << 20


class HttpError(Exception):
    """An error with its HTTP status and Prometheus errorType."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def _time_param(values: dict, name: str, default: int) -> int:
    v = values.get(name)
    if not v:
        return default
    text = v[-1]
    try:
        return int(round(float(text) * 1000))
    except ValueError:
        try:
            return parse_time_ms(text)
        except InvalidInputError:
            raise HttpError(400, "bad_data", f"invalid parameter {name!r}: {text!r}") from None


def _selector_matchers(text: str) -> list[Matcher]:
    return list(parse_selector(text).matchers)


@dataclass(frozen=True)
class Route:
    """One HTTP endpoint: its metrics/log name, the Handler method serving it, POST only or not."""

    api: str
    handler: str
    post_only: bool = False
    what: str = ""  # how a 405 names it


# The route table: adding an endpoint is a row here plus a Handler method.
ROUTES: dict[str, Route] = {
    "/-/healthy": Route("healthy", "_healthy"),
    "/-/ready": Route("ready", "_ready"),
    "/metrics": Route("metrics", "_metrics"),
    "/api/v1/read": Route("remote_read", "_remote_read", post_only=True, what="remote read"),
    "/api/v1/labels": Route("labels", "_labels"),
    "/api/v1/series": Route("series", "_series"),
    "/api/v1/sql": Route("sql", "_sql", post_only=True, what="SQL"),
    "/api/v1/bucket": Route("bucket", "_bucket"),
    "/": Route("ui", "_ui"),
    "/index.html": Route("ui", "_ui"),
}
LABEL_VALUES = Route("label_values", "_label_values")  # /api/v1/label/<name>/values


def find_route(path: str) -> tuple[Route, tuple]:
    """(route, handler arguments) of a path; HttpError 404 when none serves it."""
    route = ROUTES.get(path)
    if route is not None:
        return route, ()
    if path.startswith("/api/v1/label/") and path.endswith("/values"):
        return LABEL_VALUES, (unquote(path[len("/api/v1/label/"):-len("/values")]),)
    raise HttpError(404, "not_found", f"no such endpoint {path}")


class Gateway:
    """Everything the HTTP handlers need."""

    def __init__(self, engine: Engine, auth: TenantAuth, metrics: GatewayMetrics, *,
                 compress_remote_read: bool = False, request_timeout_s: float = 60.0,
                 max_connections: int = 128, sql_max_rows: int = 100_000, sql_timeout_s: float = 30.0,
                 retention_info: Callable[[str], dict] | None = None) -> None:
        self.engine, self.auth, self.metrics = engine, auth, metrics
        # POST /api/v1/sql: rows and time per query; the UI's retention panel (policy + plan).
        self.sql_max_rows, self.sql_timeout_s = sql_max_rows, sql_timeout_s
        self.retention_info = retention_info
        self.access_log, self.slow_query_s = True, 5.0  # one line per API request; warn above slow_query_s
        # A socket read or write stalled this long ends the connection; a request body must
        # arrive within it in all. Connections beyond max_connections get 503 at once.
        self.request_timeout_s, self.max_connections = request_timeout_s, max_connections
        self.ready = threading.Event()
        # Remote-read SAMPLES bodies are snappy *framed* but by default not compressed: the
        # gateway usually sits next to its Prometheus, and compressing costs about 3 ms of
        # gateway CPU per MB (plus the reader's decompression) for a 0.66 ratio on this data.
        self.compress_remote_read = compress_remote_read


def _handler(gw: Gateway):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "strata-gateway"
        timeout = gw.request_timeout_s  # per socket operation (headers, body, each write)

        def log_message(self, fmt, *args):  # quiet; /metrics has the numbers
            return

        def setup(self) -> None:
            super().setup()
            # Responses go out in several writes (headers, then the body as it is made). With
            # Nagle's algorithm on, a short write waits for the ACK of the previous one, which the
            # client delays (~40 ms on Linux): a fifth of small remote reads took 45-50 ms
            # instead of 5.
            try:
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not TCP (tests may hand over other sockets)
                pass

        # ---- plumbing ------------------------------------------------------------------------
        def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, doc: dict) -> None:
            self._send(status, json.dumps(doc).encode(), "application/json")

        def _body(self) -> bytes:
            """The request body: Content-Length only, bounded in size and in time."""
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise HttpError(411, "bad_data", "send the body with a Content-Length, not Transfer-Encoding")
            raw = self.headers.get("Content-Length")
            if raw is None:
                return b""
            if not raw.strip().isdigit():
                self.close_connection = True
                raise HttpError(400, "bad_data", f"invalid Content-Length {raw[:40]!r}")
            n = int(raw)
            if n > MAX_BODY:
                self.close_connection = True
                raise HttpError(413, "bad_data", f"request body of {n} bytes exceeds {MAX_BODY}")
            deadline = time.monotonic() + gw.request_timeout_s
            chunks, got = [], 0
            while got < n:
                if time.monotonic() > deadline:
                    self.close_connection = True
                    raise HttpError(408, "timeout", f"request body not received within {gw.request_timeout_s:g}s")
                try:
                    chunk = self.rfile.read1(min(n - got, 1 << 20))
                except TimeoutError:
                    chunk = None
                if chunk is None:
                    self.close_connection = True
                    raise HttpError(408, "timeout", f"request body stalled for {gw.request_timeout_s:g}s")
                if not chunk:
                    self.close_connection = True
                    raise HttpError(400, "bad_data", f"request body ended after {got} of {n} bytes")
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

        def _params(self) -> dict:
            url = urlparse(self.path)
            values = parse_qs(url.query, keep_blank_values=True)
            if self.command == "POST" and "form-urlencoded" in (self.headers.get("Content-Type") or ""):
                try:
                    form = self._body().decode()
                except UnicodeDecodeError:
                    raise HttpError(400, "bad_data", "form body is not UTF-8") from None
                for k, v in parse_qs(form, keep_blank_values=True).items():
                    values.setdefault(k, []).extend(v)
            return values

        def _tenant(self) -> str:
            return gw.auth.resolve(self.headers.get("X-Scope-OrgID"), self.headers.get("Authorization"))

        def _dispatch(self) -> None:
            path = urlparse(self.path).path
            t0 = time.perf_counter()
            api, status = "unknown", 200
            self._tiers: set[str] = set()  # tiers a read request touched (latency by tier)
            try:
                route, args = find_route(path)
                api = route.api
                if route.post_only and self.command != "POST":
                    raise HttpError(405, "bad_data", f"{route.what} needs POST")
                status = getattr(self, route.handler)(*args) or 200
            except HttpError as e:
                status = e.status
                self._json(e.status, {"status": "error", "errorType": e.kind, "error": str(e)})
            except StrataError as e:  # the error table decides status and errorType
                status = http_status_for(e)
                if status >= 500:
                    log_event("http_error", level="error", api=api, error=repr(e))
                self._json(status, {"status": "error", "errorType": classify(e).error_type, "error": str(e)})
            except Exception as e:  # a bug or a storage failure: 500/503, logged, never a dropped connection
                status = http_status_for(e)
                log_event("http_error", level="error", api=api, error=repr(e))
                self._json(status, {"status": "error", "errorType": "internal", "error": str(e)})
            finally:
                gw.metrics.observe(api, str(status), time.perf_counter() - t0)
                request_log(gw, api, status, time.perf_counter() - t0, method=self.command, path=path,
                            tenant=self.headers.get("X-Scope-OrgID"), client=self.client_address[0],
                            tiers=sorted(self._tiers))
                if self._tiers and status == 200:
                    gw.metrics.observe_tiers(api, self._tiers, time.perf_counter() - t0)
                if api in ("remote_read", "series", "labels", "label_values"):
                    release_memory()

        def _dispatch_safely(self) -> None:
            try:
                self._dispatch()
            except OSError:  # the client went away mid-answer (or stalled past the timeout)
                self.close_connection = True

        do_GET = do_POST = _dispatch_safely

        # ---- small routes --------------------------------------------------------------------
        def _healthy(self) -> int:
            self._send(200, b"Healthy.\n", "text/plain")
            return 200

        def _ready(self) -> int:
            ok = gw.ready.is_set()
            self._send(200 if ok else 503, b"Ready.\n" if ok else b"Not ready.\n", "text/plain")
            return 200 if ok else 503

        def _metrics(self) -> int:
            self._send(200, gw.metrics.exposition(), "text/plain; version=0.0.4")
            return 200

        def _ui(self) -> int:
            self._send(200, UI_PAGE, "text/html; charset=utf-8",
                       {"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                   "script-src 'self' 'unsafe-inline'"})
            return 200

        # ---- Prometheus HTTP API -------------------------------------------------------------
        def _range(self, values: dict, tenant: str) -> tuple[int, int] | None:
            """[start, end] of a label/series request; None when it asks for none and the tenant
            holds no data (an empty answer, as Prometheus gives for an empty TSDB)."""
            lo, hi = gw.engine.time_range(tenant)
            if hi < lo and not values.get("start") and not values.get("end"):
                return None
            return _time_param(values, "start", lo), _time_param(values, "end", hi)

        def _matchers(self, values: dict) -> list[list[Matcher]]:
            return [_selector_matchers(m) for m in values.get("match[]", [])]

        def _labels(self) -> None:
            values, tenant = self._params(), self._tenant()
            span = self._range(values, tenant)
            names: set[str] = set()
            for ms in (self._matchers(values) or [[]]) if span else []:
                names.update(gw.engine.label_names(tenant, ms, *span))
            self._json(200, {"status": "success", "data": sorted(names)})

        def _label_values(self, name: str) -> None:
            values, tenant = self._params(), self._tenant()
            span = self._range(values, tenant)
            out: set[str] = set()
            for ms in (self._matchers(values) or [[]]) if span else []:
                out.update(gw.engine.label_values(tenant, name, ms, *span))
            self._json(200, {"status": "success", "data": sorted(out)})

        def _series(self) -> None:
            values, tenant = self._params(), self._tenant()
            selectors = self._matchers(values)
            if not selectors:
                raise HttpError(400, "bad_data", "no match[] parameter provided")
            span = self._range(values, tenant)
            seen: dict = {}
            for ms in selectors if span else []:
                for s in gw.engine.select(tenant, ms, *span, max_resolution_ms=86_400_000, skip_data=True).series:
                    seen[s.labels] = dict(s.labels)
            self._json(200, {"status": "success", "data": [seen[k] for k in sorted(seen)]})

        # ---- SQL and the bucket UI --------------------------------------------------------------
        def _sql(self) -> None:
            tenant = self._tenant()
            ctype = self.headers.get("Content-Type") or ""
            values = parse_qs(urlparse(self.path).query, keep_blank_values=True)
            if "form-urlencoded" in ctype:
                values = self._params()
                query = (values.get("query") or [""])[0]
            else:
                body = self._body()
                try:
                    doc = json.loads(body) if "json" in ctype else {"query": body.decode()}
                except (ValueError, UnicodeDecodeError):
                    raise HttpError(400, "bad_data", "body must be JSON {\"query\": ...} or the SQL text") from None
                if not isinstance(doc, dict) or not isinstance(doc.get("query"), str):
                    raise HttpError(400, "bad_data", "body must be JSON {\"query\": \"SELECT ...\"}")
                query = doc["query"]
                values.update({k: [str(v)] for k, v in doc.items() if k != "query"})
            if not query.strip():
                raise HttpError(400, "bad_data", "no query")
            fmt = (values.get("format") or ["json"])[0]
            if "apache.arrow" in (self.headers.get("Accept") or ""):
                fmt = "arrow"
            if fmt not in ("json", "arrow"):
                raise HttpError(400, "bad_data", f"format must be json or arrow, not {fmt!r}")
            listing, live = gw.engine.listing(tenant), gw.engine.readable(tenant)
            session = SqlSession(gw.engine.store, [TenantBlocks(tenant, listing, live)])
            stop = threading.Event()

            def watch():  # a client that hangs up cancels its query
                while not stop.wait(0.2):
                    if self._client_gone():
                        session.con.interrupt()
                        return
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                r = session.run(query, max_rows=gw.sql_max_rows, timeout_s=gw.sql_timeout_s)
            finally:
                stop.set()
                session.close()
            if r.truncated:
                raise SqlLimit(f"result has more than {gw.sql_max_rows} rows (the limit): add LIMIT or aggregate")
            stats = {"seconds": round(r.seconds, 4), "blocks_read": r.blocks_read, "blocks_live": r.blocks_live,
                     "requests": sum(r.requests.values())}
            if fmt == "arrow":
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, r.table.schema) as w:
                    w.write_table(r.table)
                self._send(200, sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream",
                           {"X-Strata-Stats": json.dumps(stats)})
                return
            rows = [[_json_value(v) for v in row.values()] for row in r.table.to_pylist()]
            self._json(200, {"status": "success", "data": {
                "columns": r.table.column_names, "types": [str(f.type) for f in r.table.schema],
                "rows": rows}, "stats": stats})

        def _bucket(self) -> None:
            values = self._params()
            asked = (values.get("tenant") or [None])[0]
            tenant = gw.auth.resolve(asked or self.headers.get("X-Scope-OrgID"), self.headers.get("Authorization"))
            tenants = gw.auth.visible_tenants(list_tenants(gw.engine.store), tenant)
            self._json(200, {"status": "success", "data": bucket_document(
                gw.engine, tenant, tenants, gw.retention_info)})

        # ---- remote read ---------------------------------------------------------------------
        def _remote_read(self) -> None:
            tenant = self._tenant()
            body = self._body()
            claimed = snappy_length(body)
            if claimed is None:
                raise HttpError(400, "bad_data", "invalid remote-read request: not a snappy block")
            if claimed > MAX_DECOMPRESSED:
                raise HttpError(413, "bad_data", f"remote-read request expands to {claimed} bytes, over {MAX_DECOMPRESSED}")
            try:
                req = prom_remote_pb2.ReadRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
            except (cramjam.DecompressionError, DecodeError, ValueError) as e:
                raise HttpError(400, "bad_data", f"invalid remote-read request (snappy block + protobuf): {e}") from None
            streamed = prom_remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS in req.accepted_response_types
            results = []
            for q in req.queries:
                ms = parse_matchers((m.name, int(m.type), m.value) for m in q.matchers)
                h = q.hints if q.HasField("hints") else None
                func = h.func if h else ""
                # Functions that need every raw sample read raw while it exists (a coarser
                # tier stands in only where raw is gone, logged and counted).
                mode = replay_mode(func)
                # Range starts of the query (hints.start is its first range's start): a window
                # where one starts also sends its first raw sample (only harmful? no: an extra
                # true sample; only useful where the guess is right, e.g. not in subqueries).
                grid = (h.start_ms, h.step_ms) if h and h.step_ms > 0 and mode == "counter" else None
                st = gw.engine.stream(tenant, ms, q.start_timestamp_ms, q.end_timestamp_ms,
                                      step_ms=h.step_ms if h else 0, window_ms=h.range_ms if h else 0,
                                      max_resolution_ms=0 if prefers_raw(func) else None,
                                      replay=lambda cols, starts, res, f=func: replay_windows(cols, starts, res, f),
                                      replay_key=mode, replay_columns=REPLAY_COLUMNS[mode], grid=grid,
                                      raw_chunks=streamed)
                if st.warnings:
                    gw.metrics.tier_fallback("remote_read", tenant, st, sent_as_warning=False)
                self._tiers.update(seg.resolution.label for seg in st.plan.segments)
                results.append((st, func))
            if streamed:
                self._stream(results)
                return
            # ReadResponse{results=1: QueryResult{timeseries=1...}}: each QueryResult's length goes
            # before it, so its series are collected first (in memory up to 64 MiB, then spilled).
            results_bytes: list[tuple[bytes, Pieces]] = []
            n = 0
            try:
                for st, func in results:
                    qr = Pieces()
                    results_bytes.append((b"", qr))
                    for s in st:
                        if self._client_gone():
                            return
                        ts, vals = _samples_of(s, func)
                        qr.write(timeseries_bytes(s.labels, ts, vals))
                        n += len(ts)
                    results_bytes[-1] = (uvarint(1 << 3 | 2) + uvarint(qr.size), qr)
                gw.metrics.samples.labels("remote_read").inc(n)
                size = sum(len(h) + q.size for h, q in results_bytes)

                def content():
                    for head, q in results_bytes:
                        yield head
                        yield from q

                parts = list(snappy_block(content(), size, gw.compress_remote_read)) \
                    if gw.compress_remote_read else None
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Encoding", "snappy")
                if parts is not None:
                    self.send_header("Content-Length", str(sum(len(p) for p in parts)))
                    self.end_headers()
                    for p in parts:
                        self.wfile.write(p)
                else:  # a literal body's length is known before its bytes: send them as they come
                    body = snappy_block(content(), size, False)
                    head = [next(body), next(body)] if size else [next(body)]
                    self.send_header("Content-Length", str(sum(len(h) for h in head) + size))
                    self.end_headers()
                    for p in head:
                        self.wfile.write(p)
                    for p in body:
                        self.wfile.write(p)
            finally:
                for _, q in results_bytes:
                    q.close()

        def _client_gone(self) -> bool:
            """True once the client closed its connection (stop reading for it)."""
            try:
                ready, _, _ = select.select([self.connection], [], [], 0)
                return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _stream(self, results) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            n = 0
            for qi, (st, func) in enumerate(results):
                for s in st:
                    if self._client_gone():
                        return
                    labels = labels_bytes(1, s.labels)
                    n += s.samples()
                    # frames of about 1 MiB: raw parts as read (XOR chunks), tier parts replayed
                    for part in s.parts:
                        groups = prom_chunk_groups_of(part.chunks, STREAM_FRAME_BYTES) if part.chunks is not None \
                            else prom_chunk_groups(*_samples_of(SeriesData(s.labels, s.metric_type, [part]), func),
                                                   STREAM_FRAME_BYTES)
                        for group in groups:
                            payload = chunked_read_frame(qi, labels, group)
                            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            gw.metrics.samples.labels("remote_read_streamed").inc(n)

    return Handler


QUIET_APIS = ("metrics", "healthy", "ready", "ui")


def request_log(gw, api: str, status, seconds: float, **fields) -> None:
    """The access log (API requests, not scrapes or probes) and the slow-query log (warn)."""
    log_request("gateway", api, status, seconds, access_log=gw.access_log and api not in QUIET_APIS,
                slow_s=gw.slow_query_s, **fields)


def _json_value(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)  # NaN/Inf as strings, as Prometheus does
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    return v


def _samples_of(s, func: str):
    """(ts, values) of a series for remote-read: its parts replayed for `func`, in time order."""
    got = [derived_samples(part, func) for part in s.parts]
    if len(got) == 1:
        return got[0]
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])


def snappy_length(body: bytes) -> int | None:
    """The uncompressed length a snappy block claims (its uvarint preamble); None if malformed."""
    n = shift = 0
    for i, b in enumerate(body[:10]):
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n if i < 5 else None  # snappy lengths are at most 32 bits
        shift += 7
    return None


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them; beyond that, 503 at once."""

    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: a burst waits to be accepted (and refused), not dropped

    def __init__(self, address, handler, max_connections: int, on_reject=None) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._on_reject = on_reject

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            body = b'{"status":"error","errorType":"unavailable","error":"too many connections; retry"}'
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
                request.shutdown(socket.SHUT_WR)
                request.setblocking(False)
                request.recv(1 << 16)  # what the client already sent: closing over unread data would RST away our 503
            except OSError:
                pass
            self.shutdown_request(request)
            if self._on_reject:
                self._on_reject()
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_http(gw: Gateway, listen: str) -> tuple[ThreadingHTTPServer, int]:
    """Start the HTTP server in a thread; returns (server, bound port)."""
    from query_gateway import wire

    wire.warm_up()  # compile the encoders before the first query
    host, _, port = listen.rpartition(":")
    server = BoundedHTTPServer((host or "127.0.0.1", int(port)), _handler(gw), gw.max_connections,
                               on_reject=lambda: gw.metrics.observe("overload", "503", 0.0))
    threading.Thread(target=server.serve_forever, name="strata-http", daemon=True).start()
    return server, server.server_address[1]


__all__ = ["Gateway", "serve_http", "HttpError"]
