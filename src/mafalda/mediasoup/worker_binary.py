"""Where the mediasoup-worker binary is.

MEDIASOUP_WORKER_BIN wins; otherwise the cache that scripts/build-worker.sh fills.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKER_VERSION = "3.19.19"
BUILD_COMMAND = "bash scripts/build-worker.sh"


def cache_dir() -> Path:
    base = os.environ.get("MAFALDA_CACHE") or os.path.join(Path.home(), ".cache", "mafalda")
    return Path(base)


def cached_worker_bin() -> Path:
    return cache_dir() / f"mediasoup-worker-{WORKER_VERSION}" / "mediasoup-worker"


class WorkerBinaryNotFoundError(FileNotFoundError):
    """No mediasoup-worker binary: the message says how to build one."""


def find_worker_bin() -> str:
    """The worker binary to run, or WorkerBinaryNotFoundError naming the build command."""
    env = os.environ.get("MEDIASOUP_WORKER_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise WorkerBinaryNotFoundError(f"MEDIASOUP_WORKER_BIN={env} is not an executable file")
        return env
    cached = cached_worker_bin()
    if os.access(cached, os.X_OK):
        return str(cached)
    raise WorkerBinaryNotFoundError(
        f"no mediasoup-worker {WORKER_VERSION} binary: set MEDIASOUP_WORKER_BIN, or build it "
        f"into {cached} with `{BUILD_COMMAND}` (from the mafalda-sfu repository)"
    )
