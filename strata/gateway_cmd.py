"""`strata gateway serve`: the store-gateway (Thanos StoreAPI gRPC + Prometheus HTTP APIs)."""

from __future__ import annotations

import gc
import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from strata.common import BucketOpt, ConfigOpt, cli_errors, load_store_config, parse_duration_ms
from blocks.log import log
from blocks.errors import InvalidInputError
from blocks.units import parse_bytes
from blocks.objstore import open_store
from blocks.auth import TenantAuth
from blocks.marks import DELETION_DELAY
from query_gateway.engine import Engine, Limits
from query_gateway.grpc_api import serve_grpc
from query_gateway.http_api import Gateway, serve_http
from query_gateway.metrics import GatewayMetrics

app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]}, help="The store-gateway: serves blocks to Thanos Query (gRPC StoreAPI), Prometheus "
                       "remote-read and the Prometheus label/series HTTP API.", no_args_is_help=True)


def _release_freed_memory() -> None:
    """Make the RSS follow what queries hold, not what they held: Arrow's jemalloc pool gives
    freed pages back at once (and the servers call query_gateway.memory.release after each
    query)."""
    import pyarrow as pa

    from query_gateway.memory import limit_arenas

    limit_arenas()
    try:
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:
        pass


def _freeze_startup_objects() -> None:
    """Move everything start-up made (modules, functions, compiled encoders: ~170k objects) out
    of the garbage collector's view. Full collections then walk only what queries made since:
    measured on the dashboard data, they took 43-68 ms each and landed inside queries (a warm
    5m gRPC Series answered its first series after ~60 ms instead of ~6 ms)."""
    gc.collect()
    gc.freeze()


@app.command("serve")
@cli_errors
def serve_cmd(bucket: BucketOpt = None, config: ConfigOpt = None,
              grpc_listen: Annotated[str, typer.Option(help="gRPC address (Thanos StoreAPI + Info).")] = "127.0.0.1:10901",
              http_listen: Annotated[str, typer.Option(help="HTTP address (remote-read, labels, series, health, metrics).")] = "127.0.0.1:10902",
              default_tenant: Annotated[str, typer.Option(help="Tenant of requests without X-Scope-OrgID.")] = "default",
              auth_tokens_file: Annotated[Optional[Path], typer.Option(help='JSON {"token": "tenant"}: require bearer tokens; a token reads only its tenant.')] = None,
              max_series: Annotated[int, typer.Option(help="Per-request series limit (0 = none).")] = 0,
              max_samples: Annotated[int, typer.Option(help="Per-request samples/windows limit (0 = none).")] = 0,
              max_query_range: Annotated[str, typer.Option(help="Per-request time-range limit, e.g. 400d ('0' = none).")] = "0",
              deletion_delay: Annotated[str, typer.Option(help="The compactor's deletion delay; marked blocks are not read past half of it.")] = DELETION_DELAY,
              refresh: Annotated[str, typer.Option(help="How often block listings are refreshed.")] = "15s",
              cache_blocks: Annotated[int, typer.Option(help="Block series tables kept in memory.")] = 256,
              replay_cache: Annotated[str, typer.Option(help="Memory for replayed tier/raw samples of recent remote-read queries (blocks are immutable, so a dashboard's refresh reads nothing twice).")] = "96MiB",
              replay_cache_disk: Annotated[str, typer.Option(help="Local disk for replays too big for --replay-cache or pushed out of it (the OS page cache keeps them warm outside the gateway's RSS); 0: none.")] = "2GiB",
              replay_cache_dir: Annotated[Optional[Path], typer.Option(help="Where --replay-cache-disk writes (a private directory inside it, removed at exit). Default: $TMPDIR.")] = None,
              file_cache_dir: Annotated[Optional[Path], typer.Option(help="Where copies of S3 block files are kept (default: a temp dir); a local bucket is read in place.")] = None,
              file_cache_size: Annotated[str, typer.Option(help="Disk budget for those copies.")] = "8GiB",
              remote_read_compression: Annotated[str, typer.Option(help="snappy: compress remote-read SAMPLES bodies (slow links); literal: snappy framing without compression (default: cheaper next to Prometheus).")] = "literal",
              http_timeout: Annotated[str, typer.Option(help="An HTTP socket read/write stalled this long closes the connection; a request body must arrive within it.")] = "60s",
              http_max_connections: Annotated[int, typer.Option(help="Concurrent HTTP connections (one thread each); more get 503 at once.")] = 128,
              grpc_max_concurrent: Annotated[int, typer.Option(help="Concurrent gRPC calls; more get RESOURCE_EXHAUSTED.")] = 64,
              sql_max_rows: Annotated[int, typer.Option(help="POST /api/v1/sql: rows per answer (more: 422).")] = 100_000,
              sql_timeout: Annotated[str, typer.Option(help="POST /api/v1/sql: a query running longer is cancelled (422).")] = "30s",
              access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="One JSON line per API request (not /metrics or probes).")] = True,
              slow_query: Annotated[str, typer.Option(help="Requests slower than this are logged at warn level as slow_query, access log or not.")] = "5s") -> None:
    """Serve until SIGTERM/SIGINT.

    Example: strata gateway serve --bucket s3://metrics --grpc-listen 127.0.0.1:10901 --http-listen 127.0.0.1:10902
    """
    _release_freed_memory()
    store = open_store(load_store_config(bucket, config), create=False)
    limits = Limits(max_series, max_samples, 0 if max_query_range == "0" else parse_duration_ms(max_query_range))
    if remote_read_compression not in ("snappy", "literal"):
        raise InvalidInputError(f"--remote-read-compression must be snappy or literal, not {remote_read_compression!r}")
    engine = Engine(store, deletion_delay_ms=parse_duration_ms(deletion_delay),
                    refresh_s=parse_duration_ms(refresh) / 1000, limits=limits, cache_blocks=cache_blocks,
                    cache_dir=str(file_cache_dir) if file_cache_dir else None,
                    cache_bytes=parse_bytes(file_cache_size), replay_cache_bytes=parse_bytes(replay_cache),
                    replay_disk_bytes=parse_bytes(replay_cache_disk),
                    replay_disk_dir=str(replay_cache_dir) if replay_cache_dir else None)
    auth = TenantAuth.from_file(default_tenant, auth_tokens_file)
    metrics = GatewayMetrics(engine)
    if http_max_connections < 1 or grpc_max_concurrent < 1:
        raise InvalidInputError("--http-max-connections and --grpc-max-concurrent must be at least 1")
    from retention.summary import retention_summary  # the UI's retention panel (read-only)
    delay_ms = parse_duration_ms(deletion_delay)
    gw = Gateway(engine, auth, metrics, compress_remote_read=remote_read_compression == "snappy",
                 request_timeout_s=parse_duration_ms(http_timeout) / 1000, max_connections=http_max_connections,
                 sql_max_rows=sql_max_rows, sql_timeout_s=parse_duration_ms(sql_timeout) / 1000,
                 retention_info=lambda tenant: retention_summary(store, tenant, delay_ms=delay_ms))
    gw.access_log, gw.slow_query_s = access_log, parse_duration_ms(slow_query) / 1000
    grpc_server, grpc_port = serve_grpc(engine, auth, metrics, grpc_listen, max_concurrent=grpc_max_concurrent,
                                        access_log=access_log, slow_query_s=gw.slow_query_s)
    http_server, http_port = serve_http(gw, http_listen)
    store.list("_strata/index/")  # the bucket answers: ready
    _freeze_startup_objects()
    gw.ready.set()
    log("gateway", "ready", grpc_port=grpc_port, http_port=http_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    gw.ready.clear()
    grpc_server.stop(grace=5).wait()
    http_server.shutdown()
    http_server.server_close()
    engine.replay_cache.close()
