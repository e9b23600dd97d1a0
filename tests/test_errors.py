"""One error table: every family maps to one exit code, HTTP status and gRPC code, and the
commands and servers use it. Exit codes 0/1/2/3/75 through the real CLI; /-/flush answers 403 for a
forbidden tenant; gRPC answers UNAVAILABLE for a retryable object-store error."""

from __future__ import annotations

import grpc
import pytest
from typer.testing import CliRunner

from blocks.auth import TenantAuth
from blocks.errors import (
    ERROR_TABLE, BlockCorruptError, Forbidden, HaltError, InvalidInputError, LimitExceeded, ObjectNotFound,
    PreconditionFailed, RetryableError, StrataError, Unauthenticated, classify, exit_code_for, grpc_code_for,
    http_status_for,
)
from blocks.objstore import LocalDirStore, MemoryStore, open_store
from ingest.receive_http import serve_http
from ingest.receiver import NotReady, Overloaded, Receiver, ReceiverConfig
from ingest.rw_decode import MalformedRequest, TooLarge
from query_gateway.sql import SqlError, SqlLimit
from strata.cli import app

runner = CliRunner()

TABLE = [
    (InvalidInputError("x"), 1, 400, "INVALID_ARGUMENT"),
    (MalformedRequest("x"), 1, 400, "INVALID_ARGUMENT"),
    (TooLarge("x"), 1, 413, "INVALID_ARGUMENT"),
    (SqlError("x"), 1, 400, "INVALID_ARGUMENT"),
    (Unauthenticated("x"), 1, 401, "UNAUTHENTICATED"),
    (Forbidden("x"), 1, 403, "PERMISSION_DENIED"),
    (LimitExceeded("x", "series"), 1, 422, "RESOURCE_EXHAUSTED"),
    (LimitExceeded("x", "samples"), 1, 413, "RESOURCE_EXHAUSTED"),
    (SqlLimit("x"), 1, 422, "RESOURCE_EXHAUSTED"),
    (ObjectNotFound("k"), 1, 404, "NOT_FOUND"),
    (HaltError("x"), 3, 500, "DATA_LOSS"),
    (BlockCorruptError("x"), 3, 500, "DATA_LOSS"),
    (RetryableError("x"), 75, 503, "UNAVAILABLE"),
    (NotReady("x"), 75, 503, "UNAVAILABLE"),
    (Overloaded("x"), 75, 503, "UNAVAILABLE"),
    (PreconditionFailed("k"), 75, 409, "ABORTED"),
    (StrataError("x"), 1, 500, "INTERNAL"),
    (ValueError("bug"), 1, 500, "INTERNAL"),
    (OSError("disk"), 1, 503, "UNAVAILABLE"),
]


@pytest.mark.parametrize("exc,exit_code,http,grpc_code", TABLE, ids=[type(t[0]).__name__ + str(i) for i, t in enumerate(TABLE)])
def test_error_table(exc, exit_code, http, grpc_code):
    assert (exit_code_for(exc), http_status_for(exc), grpc_code_for(exc)) == (exit_code, http, grpc_code)
    assert grpc.StatusCode[grpc_code_for(exc)]  # a real gRPC status


def test_table_rows_are_ordered_subclass_first():
    for i, row in enumerate(ERROR_TABLE):
        for later in ERROR_TABLE[i + 1:]:
            assert not issubclass(later.family, row.family) or later.family is row.family, (row, later)
    assert classify(BlockCorruptError("x")).family is HaltError


# ---- exit codes through the real CLI ----------------------------------------------------------

def test_exit_0_1_2(tmp_path):
    bucket = tmp_path / "b"
    (tmp_path / "a.prom").write_text("m 1 1790000000000\n")
    assert runner.invoke(app, ["import", "--bucket", str(bucket), "--tenant", "t", str(tmp_path / "a.prom")]).exit_code == 0
    assert runner.invoke(app, ["blocks", "ls", "--bucket", str(bucket)]).exit_code == 0
    r = runner.invoke(app, ["blocks", "ls", "--bucket", str(bucket), "--tenant", "bad/tenant"])
    assert r.exit_code == 1 and "invalid tenant" in r.output
    r = runner.invoke(app, ["blocks", "ls", "--bucket", str(bucket), "--no-such-flag"])
    assert r.exit_code == 2  # click's usage error


def test_exit_3_on_a_corrupt_block(tmp_path):
    bucket = tmp_path / "b"
    (tmp_path / "a.prom").write_text("m 1 1790000000000\n")
    runner.invoke(app, ["import", "--bucket", str(bucket), "--tenant", "t", str(tmp_path / "a.prom")])
    samples = next(bucket.rglob("samples.parquet"))
    samples.write_bytes(samples.read_bytes()[:-20] + b"\0" * 20)
    r = runner.invoke(app, ["blocks", "verify", "--bucket", str(bucket)])
    assert r.exit_code == 3 and "does not match" in r.output


def test_exit_75_when_the_object_store_is_unreachable(tmp_path):
    cfg = tmp_path / "strata.toml"
    cfg.write_text('[store]\nurl = "s3://b"\nendpoint_url = "http://127.0.0.1:9"\nregion = "us-east-1"\n'
                   'access_key_id = "x"\nsecret_access_key = "y"\nretry_max_attempts = 2\nretry_base_delay_s = 0.01\n'
                   'connect_timeout_s = 1\n')
    r = runner.invoke(app, ["blocks", "ls", "--config", str(cfg)])
    assert r.exit_code == 75, r.output
    assert r.output.startswith("retry: ")


def test_read_only_commands_refuse_a_bucket_that_does_not_exist(tmp_path):
    typo = tmp_path / "no-such-bucket"
    for args in (["blocks", "ls"], ["blocks", "verify"], ["retention", "show"], ["retention", "plan"],
                 ["sql", "--tenant", "t", "SELECT 1"], ["compact"]):
        r = runner.invoke(app, [*args, "--bucket", str(typo)])
        assert r.exit_code == 1 and "does not exist" in r.output, (args, r.output)
        assert not typo.exists(), args
    f = tmp_path / "file"
    f.write_text("x")
    r = runner.invoke(app, ["blocks", "ls", "--bucket", str(f)])
    assert r.exit_code == 1 and "not a directory" in r.output
    r = runner.invoke(app, ["retention", "set", "raw=30d", "--bucket", str(typo)])
    assert r.exit_code == 0 and typo.is_dir()  # commands that write may create it


# ---- servers -----------------------------------------------------------------------------------

def test_flush_with_a_forbidden_tenant_is_403_and_unknown_token_401(tmp_path):
    import http.client

    rx = Receiver(LocalDirStore(tmp_path / "b"), ReceiverConfig(wal_dir=tmp_path / "w", seal_interval_s=3600))
    server, port = serve_http(rx, TenantAuth("default", {"s3cret": "team-a"}), "127.0.0.1:0")
    rx.start(sealer=False)
    try:
        def flush(headers):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/-/flush", body=b"", headers=headers)
            r = conn.getresponse()
            r.read()
            conn.close()
            return r.status
        assert flush({"Authorization": "Bearer s3cret", "X-Scope-OrgID": "team-b"}) == 403
        assert flush({"Authorization": "Bearer wrong"}) == 401
        assert flush({"Authorization": "Bearer s3cret"}) == 200
    finally:
        rx.close()
        server.shutdown()
        server.server_close()


def test_grpc_retryable_store_error_is_unavailable():
    from query_gateway.engine import Engine
    from query_gateway.grpc_api import serve_grpc
    from query_gateway.metrics import GatewayMetrics
    from query_gateway.pb import thanos_store_pb2, thanos_store_pb2_grpc, thanos_store_types_pb2

    class Down(MemoryStore):
        def list(self, prefix="", *, recursive=True):
            raise RetryableError("503 SlowDown")

    store = open_store("mem://unused")
    store.inner.inner = Down()
    engine = Engine(store, refresh_s=0)
    server, port = serve_grpc(engine, TenantAuth("t"), GatewayMetrics(engine), "127.0.0.1:0")
    try:
        req = thanos_store_pb2.SeriesRequest(min_time=0, max_time=1000, matchers=[
            thanos_store_types_pb2.LabelMatcher(type=0, name="__name__", value="up")])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.RpcError) as e:
                list(thanos_store_pb2_grpc.StoreStub(ch).Series(req))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
