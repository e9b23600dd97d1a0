"""Thanos StoreAPI (`thanos.Store`) and Info API (`thanos.info.Info`) over gRPC."""

from __future__ import annotations

import time
from concurrent import futures

import grpc

from blocks.errors import InvalidInputError
from query_gateway.auth import Forbidden, TenantAuth, Unauthenticated
from query_gateway.convert import AGGR_BY_ENUM, aggr_chunks
from query_gateway.engine import Engine, LimitExceeded, parse_matchers
from query_gateway.metrics import GatewayMetrics
from query_gateway.pb import (
    thanos_info_pb2, thanos_info_pb2_grpc, thanos_labels_pb2, thanos_store_pb2, thanos_store_pb2_grpc,
    thanos_store_types_pb2,
)

_CHUNK = thanos_store_types_pb2.Chunk
THANOS_DEFAULT_TENANT = "default-tenant"
INT64_MAX, INT64_MIN = (1 << 63) - 1, -(1 << 63)  # Thanos's --query.default-tenant-id default


def _meta(context) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ())}


class _Base:
    def __init__(self, engine: Engine, auth: TenantAuth, metrics: GatewayMetrics) -> None:
        self.engine, self.auth, self.metrics = engine, auth, metrics

    def _tenant(self, context) -> str:
        md = _meta(context)
        asked = md.get("x-scope-orgid")
        if asked is None:
            # A stock Thanos Querier sends its --query.default-tenant-id ("default-tenant") on every
            # call: that means "whatever this store's default is", not a tenant of that name.
            asked = md.get("thanos-tenant")
            if asked == THANOS_DEFAULT_TENANT:
                asked = None
        return self.auth.resolve(asked, md.get("authorization"))

    def _run(self, api: str, context, fn):
        t0 = time.perf_counter()
        code = "OK"
        try:
            return fn(self._tenant(context))
        except Unauthenticated as e:
            code = "UNAUTHENTICATED"
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        except Forbidden as e:
            code = "PERMISSION_DENIED"
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        except LimitExceeded as e:
            code = "RESOURCE_EXHAUSTED"
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except InvalidInputError as e:
            code = "INVALID_ARGUMENT"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        finally:
            self.metrics.observe(api, code, time.perf_counter() - t0)


class StoreService(_Base, thanos_store_pb2_grpc.StoreServicer):
    """Series (server-streamed, one whole series per message, sorted), LabelNames, LabelValues."""

    def Series(self, request, context):
        def run(tenant: str):
            matchers = parse_matchers((m.name, int(m.type), m.value) for m in request.matchers)
            if not matchers:
                raise InvalidInputError("no matchers given")
            aggrs = [AGGR_BY_ENUM[a] for a in request.aggregates if a in AGGR_BY_ENUM] or ["count", "sum"]
            # The querier folds the step into max_resolution_window (auto-downsampling); the
            # range-function window (query hints) bounds it further.
            hints = request.query_hints
            window = hints.range.millis if request.HasField("query_hints") and hints.HasField("range") else request.range
            res = self.engine.select(tenant, matchers, request.min_time, request.max_time, window_ms=window,
                                     max_resolution_ms=request.max_resolution_window, skip_data=request.skip_chunks)
            # Thanos turns any warning into an error under the ABORT strategy (the Ruler's default):
            # a coarser tier standing in is then logged and counted, never sent.
            abort = request.partial_response_disabled or \
                request.partial_response_strategy == thanos_store_types_pb2.ABORT
            if res.warnings:
                self.metrics.tier_fallback("grpc_series", tenant, res, sent_as_warning=not abort)
            out = [] if abort else [thanos_store_pb2.SeriesResponse(warning=w) for w in res.warnings]
            batch: list = []
            for s in res.series:
                chunks = []
                if not request.skip_chunks:
                    for part in s.parts:
                        for c in aggr_chunks(part, aggrs):
                            ac = thanos_store_types_pb2.AggrChunk(min_time=c["min_time"], max_time=c["max_time"])
                            for field in ("raw", "count", "sum", "min", "max", "counter"):
                                if field in c:
                                    getattr(ac, field).CopyFrom(_CHUNK(type=_CHUNK.XOR, data=c[field]))
                            chunks.append(ac)
                series = thanos_store_types_pb2.Series(
                    labels=[thanos_labels_pb2.Label(name=k, value=v) for k, v in s.labels], chunks=chunks)
                if request.response_batch_size > 1:  # Thanos's batchable server: N series per message
                    batch.append(series)
                    if len(batch) >= request.response_batch_size:
                        out.append(_batch(batch))
                        batch = []
                else:
                    out.append(thanos_store_pb2.SeriesResponse(series=series))
            if batch:
                out.append(_batch(batch))
            self.metrics.series.labels("grpc_series").inc(len(res.series))
            self.metrics.samples.labels("grpc_series").inc(sum(x.samples() for x in res.series))
            return out

        yield from self._run("grpc_series", context, run) or ()

    def LabelNames(self, request, context):
        def run(tenant: str):
            matchers = parse_matchers((m.name, int(m.type), m.value) for m in request.matchers)
            start, end = _range(self.engine, tenant, request.start, request.end)
            names = self.engine.label_names(tenant, matchers, start, end)
            if request.limit > 0:
                names = names[:request.limit]
            return thanos_store_pb2.LabelNamesResponse(names=names)

        return self._run("grpc_label_names", context, run)

    def LabelValues(self, request, context):
        def run(tenant: str):
            if not request.label:
                raise InvalidInputError("label name is empty")
            matchers = parse_matchers((m.name, int(m.type), m.value) for m in request.matchers)
            start, end = _range(self.engine, tenant, request.start, request.end)
            values = self.engine.label_values(tenant, request.label, matchers, start, end)
            if request.limit > 0:
                values = values[:request.limit]
            return thanos_store_pb2.LabelValuesResponse(values=values)

        return self._run("grpc_label_values", context, run)


def _batch(series: list) -> thanos_store_pb2.SeriesResponse:
    return thanos_store_pb2.SeriesResponse(batch=thanos_store_types_pb2.SeriesBatch(series=series))


def _range(engine: Engine, tenant: str, start: int, end: int) -> tuple[int, int]:
    if start == 0 and end == 0:
        return engine.time_range(tenant)
    return start, end


class InfoService(_Base, thanos_info_pb2_grpc.InfoServicer):
    """What a Thanos Querier asks first: component type and the time range we hold."""

    def Info(self, request, context):
        def run(tenant: str):
            lo, hi = self.engine.time_range(tenant)
            if hi < lo:  # no data: what Thanos's own stores report, so the querier skips us
                lo, hi = INT64_MAX, INT64_MIN
            return thanos_info_pb2.InfoResponse(
                ComponentType="store",
                store=thanos_info_pb2.StoreInfo(min_time=lo, max_time=hi, supports_sharding=False,
                                                supports_without_replica_labels=False))

        return self._run("grpc_info", context, run)


def serve_grpc(engine: Engine, auth: TenantAuth, metrics: GatewayMetrics, listen: str,
               workers: int = 8) -> tuple[grpc.Server, int]:
    """Start the gRPC server; returns (server, bound port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_send_message_length", 64 << 20),
                                  ("grpc.max_receive_message_length", 16 << 20)])
    thanos_store_pb2_grpc.add_StoreServicer_to_server(StoreService(engine, auth, metrics), server)
    thanos_info_pb2_grpc.add_InfoServicer_to_server(InfoService(engine, auth, metrics), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise InvalidInputError(f"cannot listen on {listen}")
    server.start()
    return server, port
