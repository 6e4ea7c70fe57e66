"""Where the mediasoup-worker binary is.

MEDIASOUP_WORKER_BIN wins; otherwise the cache that ``mafalda build-worker`` fills (the
recipe ships in the package, ``worker_build/``: a pip-installed package builds the worker
as the repository's ``scripts/build-worker.sh`` does, with the same script).
"""

from __future__ import annotations

import os
from pathlib import Path

WORKER_VERSION = "3.19.19"
BUILD_COMMAND = "mafalda build-worker"


def cache_dir() -> Path:
    base = os.environ.get("MAFALDA_CACHE") or os.path.join(Path.home(), ".cache", "mafalda")
    return Path(base)


def build_script() -> Path:
    """The worker's build recipe (bash; prints the binary's path on stdout)."""
    return Path(__file__).with_name("worker_build") / "build-worker.sh"


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
        f"into {cached} with `{BUILD_COMMAND}` (Debian 12: about 7 minutes on 2 cores)"
    )
