"""Thanos StoreAPI (`thanos.Store`) and Info API (`thanos.info.Info`) over gRPC.

`Series` streams: series are read batch by batch (`Engine.stream`) and each is sent as soon as
its chunks are encoded, as pre-serialised bytes (query_gateway/wire.py), so memory is one batch
and the first series leaves after the first (small) batch. A cancelled call stops reading.
"""

from __future__ import annotations

import time
from concurrent import futures
from typing import Callable, Iterator

import grpc

from blocks.errors import InvalidInputError, StrataError, grpc_code_for
from blocks.auth import TenantAuth
from blocks.log import log_request
from query_gateway.convert import AGGR_BY_ENUM, AGGR_COLUMNS, series_chunks
from query_gateway.engine import Engine, parse_matchers
from query_gateway.memory import release as release_memory
from query_gateway.metrics import GatewayMetrics
from query_gateway.pb import thanos_info_pb2, thanos_info_pb2_grpc, thanos_store_pb2, thanos_store_types_pb2
from query_gateway.wire import batch_response, labels_bytes, series_response, warning_response

THANOS_DEFAULT_TENANT = "default-tenant"  # Thanos's --query.default-tenant-id default
INT64_MAX, INT64_MIN = (1 << 63) - 1, -(1 << 63)


def _meta(context) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ())}




class _Base:
    def __init__(self, engine: Engine, auth: TenantAuth, metrics: GatewayMetrics, *, access_log: bool = True,
                 slow_query_s: float = 5.0) -> None:
        self.engine, self.auth, self.metrics = engine, auth, metrics
        self.access_log, self.slow_query_s = access_log, slow_query_s

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

    def _abort(self, context, e: Exception) -> str:
        if isinstance(e, StrataError):  # the error table decides the status code
            context.abort(grpc.StatusCode[grpc_code_for(e)], str(e))
        raise e

    def _run(self, api: str, context, fn):
        t0 = time.perf_counter()
        code = "OK"
        try:
            return fn(self._tenant(context))
        except Exception as e:
            code = grpc_code_for(e) if isinstance(e, StrataError) else "UNKNOWN"
            self._abort(context, e)
        finally:
            self.metrics.observe(api, code, time.perf_counter() - t0)
            self._log(api, code, time.perf_counter() - t0, context)

    def _log(self, api: str, code: str, seconds: float, context) -> None:
        md = _meta(context)
        log_request("gateway", api, code, seconds, access_log=self.access_log, slow_s=self.slow_query_s,
                    tenant=md.get("x-scope-orgid") or md.get("thanos-tenant"), client=context.peer())

    def _stream(self, api: str, context, fn: Callable[[str], Iterator[bytes]]) -> Iterator[bytes]:
        t0 = time.perf_counter()
        code = "OK"
        try:
            yield from fn(self._tenant(context))
        except Exception as e:
            code = grpc_code_for(e) if isinstance(e, StrataError) else "UNKNOWN"
            self._abort(context, e)
        finally:
            self.metrics.observe(api, code, time.perf_counter() - t0)
            self._log(api, code, time.perf_counter() - t0, context)
            release_memory()


class StoreService(_Base):
    """Series (server-streamed, series in label order), LabelNames, LabelValues."""

    def Series(self, request, context) -> Iterator[bytes]:
        def run(tenant: str) -> Iterator[bytes]:
            t0 = time.perf_counter()
            matchers = parse_matchers((m.name, int(m.type), m.value) for m in request.matchers)
            if not matchers:
                raise InvalidInputError("no matchers given")
            aggrs = [AGGR_BY_ENUM[a] for a in request.aggregates if a in AGGR_BY_ENUM] or ["count", "sum"]
            # The querier folds the step into max_resolution_window (auto-downsampling); the
            # range-function window (query hints) bounds it further.
            hints = request.query_hints
            window = hints.range.millis if request.HasField("query_hints") and hints.HasField("range") else request.range
            columns = sorted({c for a in aggrs for c in AGGR_COLUMNS[a]})
            stream = self.engine.stream(tenant, matchers, request.min_time, request.max_time, window_ms=window,
                                        max_resolution_ms=request.max_resolution_window,
                                        skip_data=request.skip_chunks, columns=columns, raw_chunks=True)
            # Thanos turns any warning into an error under the ABORT strategy (the Ruler's default):
            # a coarser tier standing in is then logged and counted, never sent.
            abort = request.partial_response_disabled or \
                request.partial_response_strategy == thanos_store_types_pb2.ABORT
            if stream.warnings:
                self.metrics.tier_fallback("grpc_series", tenant, stream, sent_as_warning=not abort)
                if not abort:
                    yield from (warning_response(w) for w in stream.warnings)
            per_message = max(1, request.response_batch_size)
            batch: list[bytes] = []
            n_series = n_samples = 0
            for s in stream:
                if not context.is_active():
                    return  # the client went away: stop reading
                body = labels_bytes(1, s.labels)
                if not request.skip_chunks:
                    body += b"".join(series_chunks(part, aggrs) for part in s.parts)
                n_series += 1
                n_samples += s.samples()
                if per_message > 1:  # Thanos's batchable server: N series per message
                    batch.append(body)
                    if len(batch) >= per_message:
                        yield batch_response(batch)
                        batch = []
                else:
                    yield series_response(body, b"")
            if batch:
                yield batch_response(batch)
            self.metrics.series.labels("grpc_series").inc(n_series)
            self.metrics.samples.labels("grpc_series").inc(n_samples)
            self.metrics.observe_tiers("grpc_series", [seg.resolution.label for seg in stream.plan.segments],
                                       time.perf_counter() - t0)

        yield from self._stream("grpc_series", context, run)

    def LabelNames(self, request, context):
        def run(tenant: str):
            matchers = parse_matchers((m.name, int(m.type), m.value) for m in request.matchers)
            start, end = _range(self.engine, tenant, request.start, request.end)
            names = self.engine.label_names(tenant, matchers, start, end) if end >= start else []
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
            values = self.engine.label_values(tenant, request.label, matchers, start, end) if end >= start else []
            if request.limit > 0:
                values = values[:request.limit]
            return thanos_store_pb2.LabelValuesResponse(values=values)

        return self._run("grpc_label_values", context, run)


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


def _serialize(msg) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def serve_grpc(engine: Engine, auth: TenantAuth, metrics: GatewayMetrics, listen: str,
               workers: int = 8, max_concurrent: int = 64, access_log: bool = True,
               slow_query_s: float = 5.0) -> tuple[grpc.Server, int]:
    """Start the gRPC server; returns (server, bound port)."""
    from query_gateway import wire

    wire.warm_up()  # compile the encoders before the first query
    # Calls beyond max_concurrent (running plus queued for a worker) get RESOURCE_EXHAUSTED at once.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), maximum_concurrent_rpcs=max_concurrent,
                         options=[("grpc.max_send_message_length", 64 << 20),
                                  ("grpc.max_receive_message_length", 16 << 20)])
    store = StoreService(engine, auth, metrics, access_log=access_log, slow_query_s=slow_query_s)
    req = thanos_store_pb2
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("thanos.Store", {
        "Series": grpc.unary_stream_rpc_method_handler(store.Series, request_deserializer=req.SeriesRequest.FromString,
                                                       response_serializer=_serialize),
        "LabelNames": grpc.unary_unary_rpc_method_handler(
            store.LabelNames, request_deserializer=req.LabelNamesRequest.FromString, response_serializer=_serialize),
        "LabelValues": grpc.unary_unary_rpc_method_handler(
            store.LabelValues, request_deserializer=req.LabelValuesRequest.FromString,
            response_serializer=_serialize),
    }),))
    thanos_info_pb2_grpc.add_InfoServicer_to_server(InfoService(engine, auth, metrics), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise InvalidInputError(f"cannot listen on {listen}")
    server.start()
    return server, port
