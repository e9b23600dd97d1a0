# The strata image: the CLI as entrypoint (`strata compact --once`, `strata gateway serve`, ...).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY blocks/ blocks/
COPY compactor/ compactor/
COPY ingest/ ingest/
COPY retention/ retention/
COPY query_gateway/ query_gateway/
COPY strata/ strata/
# Runtime dependencies only (no [test] extra): wheels for the final stage.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin strata
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels strata && rm -rf /wheels
USER 10001:10001
WORKDIR /tmp
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["strata"]
CMD ["--help"]
