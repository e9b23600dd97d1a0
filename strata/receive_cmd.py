"""`strata receive`: the Prometheus remote-write receiver (WAL, head, sealer)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from strata.common import BucketOpt, ConfigOpt, cli_errors, load_store_config, parse_duration_ms
from blocks.log import log
from blocks.objstore import open_store
from blocks.units import parse_block_range_ms, parse_bytes
from ingest.receive_http import ServerOptions, serve_http
from ingest.receiver import Receiver, ReceiverConfig
from ingest.rw_decode import LabelLimits
from blocks.auth import TenantAuth


@cli_errors
def receive_cmd(wal_dir: Annotated[Path, typer.Option(help="WAL segments and state.json (a persistent volume).")],
                bucket: BucketOpt = None, config: ConfigOpt = None,
                listen: Annotated[str, typer.Option(help="HTTP address: /api/v1/write, /-/flush, /metrics, /-/healthy, /-/ready.")] = "127.0.0.1:19291",
                default_tenant: Annotated[str, typer.Option(help="Tenant of writes without X-Scope-OrgID.")] = "default",
                auth_tokens_file: Annotated[Optional[Path], typer.Option(help='JSON {"token": "tenant"}: require bearer tokens; a token writes only its tenant.')] = None,
                block_range: Annotated[str, typer.Option(help="Raw block range; blocks are aligned to it.")] = "2h",
                ooo_grace: Annotated[str, typer.Option(help="How long after a range ends its late samples are still taken before it is sealed.")] = "30m",
                future_window: Annotated[str, typer.Option(help="Samples further ahead of this machine's clock are refused.")] = "10m",
                max_sample_age: Annotated[str, typer.Option(help="Samples older than this (by this machine's clock) are refused; older data goes through `strata import`.")] = "24h",
                max_head_bytes: Annotated[str, typer.Option(help="Head memory limit; above it writes get 503 and the sender retries.")] = "4GiB",
                max_request_bytes: Annotated[str, typer.Option(help="Largest decompressed request (413 above).")] = "64MiB",
                wal_segment_size: Annotated[str, typer.Option(help="WAL segment size (segments also end at every seal; each one re-declares the series it uses, so keep it well above series x 250 B).")] = "1GiB",
                wal_commit_delay: Annotated[str, typer.Option(help="Group commit: wait this long before an fsync to share it ('0' = none).")] = "0",
                seal_interval: Annotated[str, typer.Option(help="How often the sealer looks for ranges to seal.")] = "15s",
                max_label_names: Annotated[int, typer.Option(help="Labels per series (400 above).")] = 30,
                max_label_name_length: Annotated[int, typer.Option(help="Bytes per label name (400 above).")] = 1024,
                max_label_value_length: Annotated[int, typer.Option(help="Bytes per label value (400 above).")] = 2048,
                access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="One JSON line per write or flush (not /metrics or probes).")] = True,
                slow_request: Annotated[str, typer.Option(help="Requests slower than this are logged at warn level as slow_query, access log or not.")] = "5s") -> None:
    """Receive Prometheus remote-write into a WAL and head; seal raw blocks into the bucket.

    Serves until SIGTERM/SIGINT, then stops taking writes, finishes the ones in flight, fsyncs
    the WAL and exits without sealing anything early (the next start replays the WAL).

    Example: strata receive --bucket s3://metrics --wal-dir /var/lib/strata/wal --listen 127.0.0.1:19291
    """
    store = open_store(load_store_config(bucket, config))
    cfg = ReceiverConfig(
        wal_dir=wal_dir, block_range_ms=parse_block_range_ms(block_range), grace_ms=_dur0(ooo_grace),
        future_ms=_dur0(future_window), max_age_ms=parse_duration_ms(max_sample_age), max_head_bytes=parse_bytes(max_head_bytes),
        max_request_bytes=parse_bytes(max_request_bytes), segment_bytes=parse_bytes(wal_segment_size),
        commit_delay_s=_dur0(wal_commit_delay) / 1000, seal_interval_s=parse_duration_ms(seal_interval) / 1000,
        label_limits=LabelLimits(max_label_names, max_label_name_length, max_label_value_length))
    auth = TenantAuth.from_file(default_tenant, auth_tokens_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    rx = Receiver(store, cfg)
    server, port = serve_http(rx, auth, listen, ServerOptions(access_log, parse_duration_ms(slow_request) / 1000))  # /-/healthy answers while the WAL replays
    try:
        rx.start()
        log("receiver", "ready", http_port=port, replay=rx.replay_report)
        stop.wait()
        log("receiver", "shutting_down")
    finally:
        rx.close()
        server.shutdown()
        server.server_close()
    log("receiver", "stopped")


def _dur0(text: str) -> int:
    return 0 if text.strip() in ("0", "0s", "0ms") else parse_duration_ms(text)
