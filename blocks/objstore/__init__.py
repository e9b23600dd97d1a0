"""The one object-store interface and its implementations: memory, local dir, S3 (boto3).

Wrappers add retries and request counting; `open_store` builds the stack from a StoreConfig through
the scheme -> backend table `BACKENDS`. Keys are '/'-separated, relative to the bucket root (plus any
configured prefix). A new backend (e.g. gs://) is a module here with a class implementing
`ObjectStore` (including `local_path`), a row in `BACKENDS` and its scheme in `parse_bucket_url`.
"""

from blocks.objstore.base import ObjectInfo, ObjectStore, Payload
from blocks.objstore.config import BACKENDS, StoreConfig, open_store, parse_bucket_url
from blocks.objstore.local import LocalDirStore
from blocks.objstore.memory import MemoryStore
from blocks.objstore.s3 import S3Store, classify_s3_error, make_s3_client
from blocks.objstore.wrappers import CountingStore, RequestCounts, RetryingStore

__all__ = ["BACKENDS", "CountingStore", "LocalDirStore", "MemoryStore", "ObjectInfo", "ObjectStore", "Payload",
           "RequestCounts", "RetryingStore", "S3Store", "StoreConfig", "classify_s3_error", "make_s3_client",
           "open_store", "parse_bucket_url"]
