"""Hostile and malformed requests against a live gateway: every one gets a 4xx (or a prompt 503
when the gateway is full), none pins a thread or memory, and matchers are judged in RE2's dialect,
the one DuckDB evaluates them in."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import cramjam
import grpc
import pytest

from blocks.objstore import open_store
from blocks.auth import TenantAuth
from query_gateway.engine import Engine, Limits
from query_gateway.grpc_api import serve_grpc
from query_gateway.http_api import MAX_DECOMPRESSED, Gateway, serve_http, snappy_length
from query_gateway.metrics import GatewayMetrics
from blocks.pb import prom_types_pb2
from query_gateway.pb import prom_remote_pb2, thanos_store_pb2, thanos_store_pb2_grpc, thanos_store_types_pb2
from tests.factories import make_block

H = 3_600_000
TIMEOUT_S = 1.0
MAX_CONN = 16
LM = thanos_store_types_pb2.LabelMatcher


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    store = open_store(str(tmp_path_factory.mktemp("hostile") / "bucket"))
    make_block(store, "default", series=['up{job="a"}', 'up{job="b\\nc"}'], min_time=0, max_time=2 * H)
    engine = Engine(store, refresh_s=0, limits=Limits())
    auth = TenantAuth("default")
    metrics = GatewayMetrics(engine)
    gw = Gateway(engine, auth, metrics, request_timeout_s=TIMEOUT_S, max_connections=MAX_CONN)
    gw.ready.set()
    http_server, hport = serve_http(gw, "127.0.0.1:0")
    grpc_server, gport = serve_grpc(engine, auth, metrics, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{gport}")
    yield hport, thanos_store_pb2_grpc.StoreStub(channel), metrics
    channel.close()
    grpc_server.stop(0)
    http_server.shutdown()
    http_server.server_close()


def raw_request(port: int, data: bytes, read_timeout: float = 10.0) -> tuple[int, bytes]:
    """Send exact bytes; return (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
    status = int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/") else 0
    return status, buf.partition(b"\r\n\r\n")[2]


def read_request(*matchers: tuple[int, str, str]) -> bytes:
    req = prom_remote_pb2.ReadRequest(queries=[prom_remote_pb2.Query(
        start_timestamp_ms=0, end_timestamp_ms=2 * H,
        matchers=[prom_types_pb2.LabelMatcher(type=t, name=n, value=v) for t, n, v in matchers])])
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def post(port: int, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.parametrize("head,body,want", [
    (b"Content-Length: -5\r\n", b"", 400),
    (b"Content-Length: abc\r\n", b"", 400),
    (b"Content-Length: 1e3\r\n", b"", 400),
    (b"Content-Length: 99999999999\r\n", b"", 413),
    (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", 411),
], ids=["negative", "non-numeric", "float", "huge", "chunked"])
@pytest.mark.parametrize("path,ctype", [("/api/v1/read", b"application/x-protobuf"),
                                        ("/api/v1/series", b"application/x-www-form-urlencoded")],
                         ids=["remote-read", "form"])
def test_malformed_content_length_is_a_prompt_4xx(gateway, head, body, want, path, ctype):
    port, _, _ = gateway
    t0 = time.monotonic()
    status, answer = raw_request(port, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype
                                 + b"\r\n" + head + b"\r\n" + body)
    assert status == want, answer
    assert json.loads(answer)["status"] == "error"
    assert time.monotonic() - t0 < TIMEOUT_S  # answered at once, not after a stall


def test_half_sent_body_times_out_with_408_and_frees_its_thread(gateway):
    port, _, _ = gateway
    t0 = time.monotonic()
    status, _ = raw_request(port, b"POST /api/v1/read HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
    took = time.monotonic() - t0
    assert status == 408 and TIMEOUT_S * 0.8 <= took < TIMEOUT_S * 4


def test_hundreds_of_stalled_connections_are_bounded_and_the_gateway_recovers(gateway):
    port, _, metrics = gateway
    before = threading.active_count()
    socks = []
    for _ in range(300):  # each sends headers promising a body and then nothing
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /api/v1/read HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        socks.append(s)
    time.sleep(0.3)
    peak = threading.active_count()
    assert peak - before <= MAX_CONN + 2, (before, peak)
    refused = 0
    for s in socks:  # beyond the bound: an immediate 503, not a hung socket
        try:
            s.settimeout(0.5)
            if s.recv(64).startswith(b"HTTP/1.1 503"):
                refused += 1
        except (TimeoutError, ConnectionResetError):
            pass
    assert refused >= 300 - MAX_CONN - 2
    for s in socks:
        s.close()
    deadline = time.monotonic() + 3 * TIMEOUT_S + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= before
    assert get(port, "/api/v1/labels")[0] == 200  # serving again
    assert 'code="503"' in metrics.exposition().decode() and 'api="overload"' in metrics.exposition().decode()


def test_snappy_bomb_is_refused_before_decompression(gateway):
    port, _, _ = gateway
    bomb = bytes(cramjam.snappy.compress_raw(b"\0" * (200 << 20)))  # ~9.4 MiB claiming 200 MiB
    assert snappy_length(bomb) == 200 << 20 and len(bomb) < 12 << 20
    rss0 = rss_bytes()
    status, body = post(port, "/api/v1/read", bomb, {"Content-Type": "application/x-protobuf"})
    assert status == 413 and str(MAX_DECOMPRESSED) in body.decode()
    assert rss_bytes() - rss0 < 64 << 20
    # a preamble that is not a varint at all
    assert post(port, "/api/v1/read", b"\xff" * 11)[0] == 400


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)a", r"(?<!b)a", "a{1001}", "a++", r"a\Z", "(", r"(?P=x)"],
                         ids=["backref", "lookahead", "lookbehind", "repeat-1001", "possessive", "backslash-Z",
                              "unbalanced", "named-backref"])
def test_regexes_outside_re2_are_400_and_invalid_argument(gateway, pattern):
    port, stub, _ = gateway
    status, body = post(port, "/api/v1/read", read_request((2, "job", pattern)),
                        {"Content-Type": "application/x-protobuf"})
    assert status == 400 and "RE2" in json.loads(body)["error"], body
    q = urllib.parse.quote(f'{{__name__="up",job=~"{pattern}"}}'.replace("\\", "\\\\"))
    status, body = get(port, f"/api/v1/series?match[]={q}")
    assert status == 400, body
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Series(thanos_store_pb2.SeriesRequest(
            min_time=0, max_time=2 * H, matchers=[LM(type=LM.EQ, name="__name__", value="up"),
                                                  LM(type=LM.RE, name="job", value=pattern)])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("pattern,want", [
    ("a|b.c", {"a", "b\nc"}),   # `.` matches a newline (Prometheus's (?s)), in DuckDB as in Python
    ("[[:alpha:]]", {"a"}),     # POSIX classes: RE2 has them, Python's re does not
    (r"\pL", {"a"}),            # Unicode classes
    ("A", set()),               # case-sensitive
    ("(?i)A", {"a"}),
], ids=["dot-newline", "posix-class", "unicode-class", "case", "flag-i"])
def test_re2_patterns_match_alike_in_the_gateway_and_in_selectors(gateway, pattern, want):
    from blocks.selectors import parse_selector

    port, stub, _ = gateway
    got = set()
    for resp in stub.Series(thanos_store_pb2.SeriesRequest(
            min_time=0, max_time=2 * H, skip_chunks=True,
            matchers=[LM(type=LM.EQ, name="__name__", value="up"), LM(type=LM.RE, name="job", value=pattern)])):
        got |= {lab.value for lab in resp.series.labels if lab.name == "job"}
    assert got == want
    sel = parse_selector('up{job=~"%s"}' % pattern.replace("\\", "\\\\"))
    assert {v for v in ("a", "b\nc") if sel.matches({"__name__": "up", "job": v})} == want


def test_bad_form_encoding_and_headers(gateway):
    port, _, _ = gateway
    assert post(port, "/api/v1/series", b"match[]=\xff\xfe", {"Content-Type": "application/x-www-form-urlencoded"})[0] == 400
    assert raw_request(port, b"GET /api/v1/labels HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: ../etc\r\n\r\n")[0] == 400
    assert raw_request(port, b"GET /api/v1/labels?start=yesterday HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 400
