"""The version store's layout, shared by the publisher (offline) and the follower (service).

Neither side imports the other, so what both must agree on lives here: store URLs, the local
directory layout and its live pointer, version names, and the Redis key scheme with its
chunked-file download. Pure Python over `models.artifact`; Redis clients are the callers'.
"""

from storage.layout import (
    CURRENT_POINTER,
    VERSIONS_DIR,
    StoreURL,
    parse_store_url,
    read_pointer,
    version_sort_key,
)
from storage.probe import StoreUnavailable, check_store
from storage.redis_keys import REDIS_CHUNK_BYTES, REDIS_PREFIX, RedisKeys, fetch_redis_file, fetch_redis_version

__all__ = [
    "CURRENT_POINTER",
    "REDIS_CHUNK_BYTES",
    "REDIS_PREFIX",
    "VERSIONS_DIR",
    "RedisKeys",
    "StoreURL",
    "StoreUnavailable",
    "check_store",
    "fetch_redis_file",
    "fetch_redis_version",
    "parse_store_url",
    "read_pointer",
    "version_sort_key",
]
