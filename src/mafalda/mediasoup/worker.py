"""Worker: one mediasoup-worker process and the channel to it."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.Worker.CloseRouterRequest import CloseRouterRequestT
from mafalda.mediasoup._fbs.Worker.CloseWebRtcServerRequest import CloseWebRtcServerRequestT
from mafalda.mediasoup._fbs.Worker.CreateRouterRequest import CreateRouterRequestT
from mafalda.mediasoup._fbs.Worker.CreateWebRtcServerRequest import CreateWebRtcServerRequestT
from mafalda.mediasoup._fbs.Worker.UpdateSettingsRequest import UpdateSettingsRequestT
from mafalda.mediasoup._ids import new_id
from mafalda.mediasoup._io import limit_read_size
from mafalda.mediasoup.channel import Channel, ChannelReader
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError, MediasoupError
from mafalda.mediasoup.worker_binary import WORKER_VERSION, find_worker_bin

if TYPE_CHECKING:
    from mafalda.mediasoup.router import Router
    from mafalda.mediasoup.rtp_parameters import RouterRtpCodecCapability
    from mafalda.mediasoup.transport import ListenInfo
    from mafalda.mediasoup.webrtc_server import WebRtcServer

logger = logging.getLogger("mafalda.mediasoup.worker")

WorkerLogLevel = Literal["debug", "warn", "error", "none"]
WorkerLogTag = Literal[
    "info", "ice", "dtls", "rtp", "srtp", "rtcp", "rtx", "bwe", "score", "simulcast", "svc",
    "sctp", "message",
]  # fmt: skip
LOG_LEVELS: frozenset[str] = frozenset(("debug", "warn", "error", "none"))
LOG_TAGS: frozenset[str] = frozenset(WorkerLogTag.__args__)  # type: ignore[attr-defined]

#: Exit code of a worker refusing its command line settings.
_EXIT_WRONG_SETTINGS = 42
_CLOSE_GRACE_SECONDS = 3.0


class WorkerResourceUsage(TypedDict):
    ru_utime: int
    ru_stime: int
    ru_maxrss: int
    ru_ixrss: int
    ru_idrss: int
    ru_isrss: int
    ru_minflt: int
    ru_majflt: int
    ru_nswap: int
    ru_inblock: int
    ru_oublock: int
    ru_msgsnd: int
    ru_msgrcv: int
    ru_nsignals: int
    ru_nvcsw: int
    ru_nivcsw: int


class ChannelMessageHandlers(TypedDict):
    channelRequestHandlers: list[str]
    channelNotificationHandlers: list[str]


class LiburingDump(TypedDict):
    sqeProcessCount: int
    sqeMissCount: int
    userDataMissCount: int


class WorkerDump(TypedDict):
    pid: int
    webRtcServerIds: list[str]
    routerIds: list[str]
    channelMessageHandlers: ChannelMessageHandlers
    liburing: NotRequired[LiburingDump]


class WorkerDiedError(MediasoupError):
    """A worker process exited without being closed (``died`` event argument)."""

    def __init__(self, pid: int, code: int | None, sig: int | None) -> None:
        super().__init__(f"[pid:{pid}, code:{code}, signal:{sig}]")
        self.pid = pid
        self.code = code
        self.signal = sig


# Workers alive in this process: killed at interpreter exit so none is orphaned.
_live_pids: set[int] = set()


@atexit.register
def _kill_live_workers() -> None:  # pragma: no cover - runs at interpreter exit
    for pid in list(_live_pids):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)


def validate_log_settings(log_level: Any, log_tags: Any) -> None:
    """The settings create_worker() and Worker.update_settings() share (None: not given)."""
    if log_level is not None and log_level not in LOG_LEVELS:
        raise InvalidValueError(
            f"invalid log_level {log_level!r}, expected one of {sorted(LOG_LEVELS)}"
        )
    if log_tags is not None:
        if not isinstance(log_tags, list | tuple):
            raise TypeError("log_tags must be a list of strings")
        for tag in log_tags:
            if tag not in LOG_TAGS:
                raise InvalidValueError(f"invalid log tag {tag!r} in log_tags")


def validate_field_trials(trials: Any) -> None:
    """The worker's own check of libwebrtc field trials ("Name/Group/" pairs, a name
    given twice with one group), made before it starts: a worker given others aborts
    (SIGABRT, a WorkerDiedError that does not say why), a non-string went as its str()."""
    if not isinstance(trials, str):
        raise TypeError("if given, libwebrtc_field_trials must be a string")
    tokens = trials.split("/")
    # "A/B/" splits into ["A", "B", ""]: pairs of non-empty tokens, then the empty tail.
    pairs = tokens[:-1]
    valid = tokens[-1] == "" and len(pairs) % 2 == 0 and all(pairs)
    if valid:
        groups: dict[str, str] = {}
        for name, group in zip(pairs[::2], pairs[1::2], strict=True):
            valid = valid and groups.setdefault(name, group) == group
    if not valid:
        raise InvalidValueError(
            f"invalid libwebrtc_field_trials {trials!r}: expected 'Name/Group/' pairs "
            "(each name with one group)"
        )


def validate_worker_settings(
    *,
    log_level: str | None,
    log_tags: list[WorkerLogTag] | list[str] | None,
    rtc_min_port: int,
    rtc_max_port: int,
    dtls_certificate_file: str | None,
    dtls_private_key_file: str | None,
    app_data: Any,
    libwebrtc_field_trials: str | None = None,
) -> None:
    validate_log_settings(log_level, log_tags)
    for name, port in (("rtc_min_port", rtc_min_port), ("rtc_max_port", rtc_max_port)):
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"{name} must be an integer")
        if not 0 < port <= 65535:
            raise InvalidValueError(f"{name} must be in 1..65535, got {port}")
    if rtc_min_port > rtc_max_port:
        raise InvalidValueError(
            f"rtc_min_port ({rtc_min_port}) is greater than rtc_max_port ({rtc_max_port})"
        )
    if (dtls_certificate_file is None) != (dtls_private_key_file is None):
        raise InvalidValueError("dtls_certificate_file and dtls_private_key_file go together")
    for name, path in (
        ("dtls_certificate_file", dtls_certificate_file),
        ("dtls_private_key_file", dtls_private_key_file),
    ):
        # An int passed os.path.isfile() (a descriptor's file) and went as its digits.
        if path is not None and not isinstance(path, str | os.PathLike):
            raise TypeError(f"if given, {name} must be a path")
        if path is not None and not os.path.isfile(path):
            raise InvalidValueError(f"{name} {path!r} is not a readable file")
    if libwebrtc_field_trials is not None:
        validate_field_trials(libwebrtc_field_trials)
    validate_app_data(app_data)


def validate_app_data(app_data: Any) -> None:
    if app_data is not None and not isinstance(app_data, dict):
        raise TypeError("if given, app_data must be a dict")


_RESETTABLE_SIGNALS = tuple(
    sig for sig in signal.valid_signals() if sig not in (signal.SIGKILL, signal.SIGSTOP)
)


def _spawn(argv: list[str]) -> tuple[int, int, int, int, int]:
    """Start the worker with fd 3 (it reads) and fd 4 (it writes) as channel pipes.

    Returns (pid, channel write fd, channel read fd, stdout read fd, stderr read fd).
    posix_spawn maps the descriptors explicitly; the source descriptors are first
    moved above 4 so no dup2 is a no-op that keeps close-on-exec (see the notes).
    """

    def high(fd: int) -> int:
        import fcntl

        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return moved

    to_worker_r, to_worker_w = (high(fd) for fd in os.pipe())
    from_worker_r, from_worker_w = (high(fd) for fd in os.pipe())
    out_r, out_w = (high(fd) for fd in os.pipe())
    err_r, err_w = (high(fd) for fd in os.pipe())
    env = dict(os.environ)
    env["MEDIASOUP_VERSION"] = WORKER_VERSION
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
                (os.POSIX_SPAWN_DUP2, to_worker_r, 3),
                (os.POSIX_SPAWN_DUP2, from_worker_w, 4),
            ],
            # As Node (libuv) starts it: no signal blocked or ignored because this
            # thread blocks or ignores it (the worker would outlive a SIGTERM).
            setsigmask=(),
            setsigdef=_RESETTABLE_SIGNALS,
        )
    except BaseException:
        for fd in (to_worker_w, from_worker_r, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (to_worker_r, from_worker_w, out_w, err_w):
            os.close(fd)
    return pid, to_worker_w, from_worker_r, out_r, err_r


class _PipeFile:
    """A pipe end as the loop takes it (``fileno()``, ``close()``), which closes its
    descriptor once and never when collected.

    A file object would: when ``connect_*_pipe()`` fails or is cancelled, uvloop's
    transport has closed the descriptor but not the file, whose finalizer closes the
    number again, by then perhaps another pipe's.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            # uvloop's transport closes the descriptor itself, then its file.
            with contextlib.suppress(OSError):
                os.close(fd)


class _PipeEnd(asyncio.Protocol):
    """Reports when its pipe is closed for good (the transport let go of the file)."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()


class _LineLogger(_PipeEnd):
    def __init__(self, pid: int, level: int, stream: str, on_lost: Callable[[], None]) -> None:
        super().__init__(on_lost)
        self._pid = pid
        self._level = level
        self._stream = stream

    def data_received(self, data: bytes) -> None:
        for line in data.decode(errors="replace").splitlines():
            if line:
                logger.log(self._level, "worker[pid:%s] (%s) %s", self._pid, self._stream, line)


def parse_worker_dump(body: Any) -> WorkerDump:
    """A decoded ``FBS.Worker.DumpResponse`` as mediasoup's ``worker.dump()`` gives it
    (``liburing`` only from a worker that uses io_uring; this project builds without)."""
    handlers = body.channelMessageHandlers
    dump: WorkerDump = {
        "pid": body.pid,
        "webRtcServerIds": list(body.webRtcServerIds or []),
        "routerIds": list(body.routerIds or []),
        "channelMessageHandlers": {
            "channelRequestHandlers": list(handlers.channelRequestHandlers or []),
            "channelNotificationHandlers": list(handlers.channelNotificationHandlers or []),
        },
    }
    if body.liburing is not None:
        dump["liburing"] = {
            "sqeProcessCount": body.liburing.sqeProcessCount,
            "sqeMissCount": body.liburing.sqeMissCount,
            "userDataMissCount": body.liburing.userDataMissCount,
        }
    return dump


class Worker(EventSource):
    """A mediasoup-worker process. Create with :func:`create_worker`."""

    def __init__(self, *, pid: int, channel: Channel, app_data: dict[str, Any] | None) -> None:
        self._pid = pid
        self._channel = channel
        self._closed = False
        self._died = False
        self._subprocess_closed = False
        self._exit_status: asyncio.Future[tuple[int | None, int | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._transports: list[asyncio.BaseTransport] = []
        # Pipes whose transport has not reported connection_lost yet: wait_closed() waits
        # for them (uvloop closes the files a loop turn after the transports).
        self._pipes_open = 0
        self._handed: list[_PipeFile] = []  # pipe ends given to the loop
        self._pipes_closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pidfd = -1
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._webrtc_servers: set[WebRtcServer] = set()
        self._routers: set[Router] = set()
        self.events = EventEmitter()
        self.observer = EventEmitter()
        self._spawn_done = False
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- properties -------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def died(self) -> bool:
        return self._died

    @property
    def subprocess_closed(self) -> bool:
        return self._subprocess_closed

    @property
    def exit_status(self) -> tuple[int | None, int | None] | None:
        """(exit code, signal) once the process exited and was reaped (what
        ``wait_closed()`` returns), else None."""
        done = self._exit_status.done() and not self._exit_status.cancelled()
        return self._exit_status.result() if done else None

    @property
    def webrtc_servers_for_testing(self) -> set[WebRtcServer]:
        return self._webrtc_servers

    @property
    def routers_for_testing(self) -> set[Router]:
        return self._routers

    # -- events (Node's Worker is an emitter; ours delegates to ``events``) -----------

    def __repr__(self) -> str:
        return f"<Worker pid={self._pid} closed={self._closed} died={self._died}>"

    # -- lifecycle ----------------------------------------------------------------

    def _on_notification(self, event: int, body: Any) -> None:
        # The worker's only notification of its own (to its pid): WORKER_RUNNING, once.
        # Whatever else ends the start (_abort, an exit) closes the channel, and with it
        # this subscription, first. Not the cancellation of create_worker() though: it may
        # come in the same loop turn, before the task runs _abort().
        self._spawn_done = True
        if not self._started.done():
            self._started.set_result(None)

    def _on_process_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        try:
            _, status = os.waitpid(self._pid, 0)
        except ChildProcessError:  # pragma: no cover - reaped elsewhere
            status = 0
        _live_pids.discard(self._pid)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        self._exit_status.set_result((code, sig))  # once: the reader is removed above
        for transport in self._transports:
            transport.close()
        if not self._spawn_done:
            self._spawn_done = True
            self._closed = True
            self._subprocess_closed = True
            self._channel.close()
            error: Exception
            if code == _EXIT_WRONG_SETTINGS:
                error = TypeError("wrong settings")
            else:
                error = WorkerDiedError(self._pid, code, sig)
            if not self._started.done():
                self._started.set_exception(error)
            return
        if self._closed:
            self._subprocess_closed = True
            self.events.emit("subprocessclose")
            return
        logger.error(
            "worker process died unexpectedly [pid:%s, code:%s, signal:%s]", self._pid, code, sig
        )
        self._worker_died(WorkerDiedError(self._pid, code, sig))

    def _worker_died(self, error: Exception) -> None:
        self._closed = True
        self._subprocess_closed = True
        self._died = True
        self._channel.close()
        for router in list(self._routers):
            router.worker_closed()
        self._routers.clear()
        for server in list(self._webrtc_servers):
            server.worker_closed()
        self._webrtc_servers.clear()
        self.events.emit("died", error)
        self.events.emit("subprocessclose")
        self.observer.emit("close")

    def close(self) -> None:
        """Close the worker: its routers and servers close, the process exits and is reaped."""
        if self._closed:
            return
        self._closed = True
        for router in list(self._routers):
            router.worker_closed()
        self._routers.clear()
        for server in list(self._webrtc_servers):
            server.worker_closed()
        self._webrtc_servers.clear()
        with contextlib.suppress(MediasoupError):
            self._channel.notify(Event.WORKER_CLOSE)
        self._channel.close()
        # Not exited yet: an exit closes the worker first (it died, or never started).
        self._kill_task = asyncio.get_running_loop().create_task(self._ensure_exit())
        self.observer.emit("close")

    def _abort(self, files: list[_PipeFile]) -> None:
        """Undo a start that did not complete: kill the process, close every pipe."""
        self._closed = True
        self._spawn_done = True
        self._channel.close()
        for transport in self._transports:
            transport.close()
        for file in files:
            # A file handed to connect_*_pipe() is the loop's to close, even when that
            # failed (asyncio closes it, uvloop's transport closed its descriptor).
            if file not in self._handed:
                file.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)

    async def _ensure_exit(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._exit_status), _CLOSE_GRACE_SECONDS)
        except TimeoutError:
            logger.warning("worker[pid:%s] did not exit after close, killing it", self._pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)

    def _pipe_lost(self) -> None:
        self._pipes_open -= 1
        if self._pipes_open <= 0 and not self._pipes_closed.done():
            self._pipes_closed.set_result(None)

    async def wait_closed(self) -> tuple[int | None, int | None]:
        """Wait until the process has exited and was reaped and its pipes are closed;
        returns (exit code, signal)."""
        status = await asyncio.shield(self._exit_status)
        # Never hang on a transport's close; pipes never opened are not waited for.
        grace = _CLOSE_GRACE_SECONDS if self._pipes_open > 0 else 0
        await asyncio.wait([self._pipes_closed], timeout=grace)
        return status

    async def __aenter__(self) -> Worker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- requests -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("Worker closed")

    async def dump(self) -> WorkerDump:
        self._check_open()
        return parse_worker_dump(await self._channel.request(Method.WORKER_DUMP))

    async def get_resource_usage(self) -> WorkerResourceUsage:
        self._check_open()
        ru = await self._channel.request(Method.WORKER_GET_RESOURCE_USAGE)
        return {
            "ru_utime": ru.ruUtime,
            "ru_stime": ru.ruStime,
            "ru_maxrss": ru.ruMaxrss,
            "ru_ixrss": ru.ruIxrss,
            "ru_idrss": ru.ruIdrss,
            "ru_isrss": ru.ruIsrss,
            "ru_minflt": ru.ruMinflt,
            "ru_majflt": ru.ruMajflt,
            "ru_nswap": ru.ruNswap,
            "ru_inblock": ru.ruInblock,
            "ru_oublock": ru.ruOublock,
            "ru_msgsnd": ru.ruMsgsnd,
            "ru_msgrcv": ru.ruMsgrcv,
            "ru_nsignals": ru.ruNsignals,
            "ru_nvcsw": ru.ruNvcsw,
            "ru_nivcsw": ru.ruNivcsw,
        }

    async def update_settings(
        self, *, log_level: WorkerLogLevel | None = None, log_tags: list[WorkerLogTag] | None = None
    ) -> None:
        self._check_open()
        validate_log_settings(log_level, log_tags)
        request = UpdateSettingsRequestT()
        request.logLevel = log_level
        request.logTags = list(log_tags) if log_tags is not None else None
        await self._channel.request(Method.WORKER_UPDATE_SETTINGS, "", request)

    async def create_webrtc_server(
        self, *, listen_infos: list[ListenInfo], app_data: dict[str, Any] | None = None
    ) -> WebRtcServer:
        from mafalda.mediasoup.transport import listen_info_to_fbs, validate_listen_infos
        from mafalda.mediasoup.webrtc_server import WebRtcServer

        self._check_open()
        validate_app_data(app_data)
        validate_listen_infos(listen_infos)
        server_id = new_id()
        request = CreateWebRtcServerRequestT()
        request.webRtcServerId = server_id
        request.listenInfos = [listen_info_to_fbs(info) for info in listen_infos]
        try:
            await self._channel.request(Method.WORKER_CREATE_WEBRTCSERVER, "", request)
        except asyncio.CancelledError:
            # The worker makes it all the same, and a WebRtcServer belongs to no router
            # that would close it one day: it would hold its ports as long as the worker.
            close = CloseWebRtcServerRequestT()
            close.webRtcServerId = server_id
            self._channel.request_nowait(Method.WORKER_WEBRTCSERVER_CLOSE, "", close)
            raise
        server = WebRtcServer(webrtc_server_id=server_id, channel=self._channel, app_data=app_data)
        self._webrtc_servers.add(server)
        server.events.on("@close", lambda: self._webrtc_servers.discard(server))
        self.observer.emit("newwebrtcserver", server)
        return server

    async def create_router(
        self,
        *,
        media_codecs: list[RouterRtpCodecCapability] | None = None,
        app_data: dict[str, Any] | None = None,
    ) -> Router:
        import copy

        from mafalda.mediasoup import ortc
        from mafalda.mediasoup.router import Router

        self._check_open()
        validate_app_data(app_data)
        rtp_capabilities = ortc.generate_router_rtp_capabilities(copy.deepcopy(media_codecs))
        router_id = new_id()
        request = CreateRouterRequestT()
        request.routerId = router_id
        close = CloseRouterRequestT()
        close.routerId = router_id
        await self._channel.request_making(
            Method.WORKER_CREATE_ROUTER, "", request, (Method.WORKER_CLOSE_ROUTER, "", close)
        )
        router = Router(
            router_id=router_id,
            rtp_capabilities=rtp_capabilities,
            channel=self._channel,
            app_data=app_data,
        )
        self._routers.add(router)
        router.events.on("@close", lambda: self._routers.discard(router))
        self.observer.emit("newrouter", router)
        return router


async def create_worker(
    *,
    log_level: WorkerLogLevel = "error",
    log_tags: list[WorkerLogTag] | None = None,
    rtc_min_port: int = 10000,
    rtc_max_port: int = 59999,
    dtls_certificate_file: str | None = None,
    dtls_private_key_file: str | None = None,
    worker_bin: str | None = None,
    libwebrtc_field_trials: str | None = None,
    disable_liburing: bool | None = None,
    app_data: dict[str, Any] | None = None,
) -> Worker:
    """Start a mediasoup-worker process and return its Worker once it is running.

    Settings are validated first (TypeError/ValueError naming the setting); a worker
    that refuses its settings raises TypeError('wrong settings'), one that fails to
    start raises WorkerDiedError.
    """
    validate_worker_settings(
        log_level=log_level,
        log_tags=log_tags,
        rtc_min_port=rtc_min_port,
        rtc_max_port=rtc_max_port,
        dtls_certificate_file=dtls_certificate_file,
        dtls_private_key_file=dtls_private_key_file,
        app_data=app_data,
        libwebrtc_field_trials=libwebrtc_field_trials,
    )
    binary = worker_bin or find_worker_bin()
    argv = [binary]
    if log_level:
        argv.append(f"--logLevel={log_level}")
    for tag in log_tags or []:
        argv.append(f"--logTag={tag}")
    argv.append(f"--rtcMinPort={rtc_min_port}")
    argv.append(f"--rtcMaxPort={rtc_max_port}")
    if dtls_certificate_file and dtls_private_key_file:
        argv.append(f"--dtlsCertificateFile={dtls_certificate_file}")
        argv.append(f"--dtlsPrivateKeyFile={dtls_private_key_file}")
    if libwebrtc_field_trials:
        argv.append(f"--libwebrtcFieldTrials={libwebrtc_field_trials}")
    if disable_liburing:
        argv.append("--disableLiburing=true")

    loop = asyncio.get_running_loop()
    pid, write_fd, read_fd, out_fd, err_fd = _spawn(argv)
    _live_pids.add(pid)
    channel = Channel(pid)
    worker = Worker(pid=pid, channel=channel, app_data=app_data)
    channel.subscribe(str(pid), worker._on_notification)
    pidfd = os.pidfd_open(pid)
    worker._pidfd = pidfd
    loop.add_reader(pidfd, worker._on_process_exit)
    files = [_PipeFile(fd) for fd in (write_fd, read_fd, out_fd, err_fd)]
    try:
        lost = worker._pipe_lost
        worker._handed.append(files[0])
        writer, _ = await loop.connect_write_pipe(lambda: _PipeEnd(lost), files[0])
        worker._pipes_open += 1
        channel.attach(writer)
        worker._transports.append(writer)
        for pipe, factory in (
            (files[1], lambda: ChannelReader(channel, lost)),
            (files[2], lambda: _LineLogger(pid, logging.DEBUG, "stdout", lost)),
            (files[3], lambda: _LineLogger(pid, logging.ERROR, "stderr", lost)),
        ):
            worker._handed.append(pipe)
            reader, _ = await loop.connect_read_pipe(factory, pipe)
            worker._pipes_open += 1
            limit_read_size(reader)
            worker._transports.append(reader)
        _workers.add(worker)
        await worker._started
    except BaseException:
        # Cancelled (or failed) after the process started: leave nothing behind, not
        # even a pipe whose transport closes a loop turn later (uvloop).
        worker._abort(files)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(worker.wait_closed()), _CLOSE_GRACE_SECONDS)
        raise
    logger.debug("worker running [pid:%s]", pid)
    observer.emit("newworker", worker)
    return worker


#: Module observer: emits ``newworker``.
observer = EventEmitter()
_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
