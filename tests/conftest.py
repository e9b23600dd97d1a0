"""Shared fixtures: a session-scoped moto S3 server on 127.0.0.1 and stores of every kind."""

from __future__ import annotations

import itertools
import os

import pytest

from blocks.objstore import (
    CountingStore, LocalDirStore, MemoryStore, RetryingStore, S3Store, StoreConfig, make_s3_client,
)

_bucket_seq = itertools.count()


@pytest.fixture(scope="session")
def moto_endpoint():
    """Endpoint URL of a moto server running in its own thread on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    yield f"http://{host}:{port}"
    server.stop()


def s3_config(endpoint: str, bucket: str) -> StoreConfig:
    """StoreConfig for a bucket on the moto server."""
    return StoreConfig(url=f"s3://{bucket}", endpoint_url=endpoint, region="us-east-1",
                       access_key_id="testing", secret_access_key="testing", retry_base_delay_s=0.01)


@pytest.fixture
def s3_bucket(moto_endpoint):
    """A fresh, empty bucket on the moto server; yields its StoreConfig."""
    name = f"strata-test-{next(_bucket_seq)}"
    cfg = s3_config(moto_endpoint, name)
    make_s3_client(cfg).create_bucket(Bucket=name)
    return cfg


@pytest.fixture(params=["memory", "local", "s3"])
def any_store(request, tmp_path):
    """The same store stack (counting + retrying) over each backend."""
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "local":
        backend = LocalDirStore(tmp_path / "bucket")
    else:
        cfg = request.getfixturevalue("s3_bucket")
        backend = S3Store(cfg.url[5:], "", make_s3_client(cfg))
    return CountingStore(RetryingStore(backend, base_delay_s=0.001))
