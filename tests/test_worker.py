"""Worker against the real mediasoup-worker: creation, settings, dump, close, death."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from typing import Any

import pytest

from mafalda import mediasoup
from mafalda.mediasoup import InvalidStateError, Worker, create_worker
from mafalda.mediasoup._fastfbs import FastBuilder, decoder, python_decoder
from mafalda.mediasoup._fbs.LibUring.Dump import DumpT as LibUringDumpT
from mafalda.mediasoup._fbs.Worker.ChannelMessageHandlers import ChannelMessageHandlersT
from mafalda.mediasoup._fbs.Worker.DumpResponse import DumpResponseT
from mafalda.mediasoup._io import READ_SIZE, limit_read_size
from mafalda.mediasoup.errors import ChannelClosedError, ChannelTimeoutError
from mafalda.mediasoup.worker import WorkerDiedError, parse_worker_dump
from mafalda.mediasoup.worker_binary import WorkerBinaryNotFoundError, find_worker_bin

from .conftest import MEDIA_CODECS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


async def test_create_worker_succeeds_and_emits_newworker() -> None:
    seen: list[Worker] = []
    mediasoup.observer.on("newworker", seen.append)
    try:
        worker = await create_worker(app_data={"foo": 123})
    finally:
        mediasoup.observer.off("newworker", seen.append)
    assert seen == [worker]
    assert isinstance(worker.pid, int) and _alive(worker.pid)
    assert worker.closed is False and worker.died is False
    assert worker.app_data == {"foo": 123}
    worker.app_data = {"bar": 1}
    assert worker.app_data == {"bar": 1}
    worker.close()
    assert worker.closed
    code, sig = await worker.wait_closed()
    assert not _alive(worker.pid)
    assert worker.subprocess_closed
    assert (code, sig) == (0, None)


async def test_create_worker_with_all_settings(tmp_path: Any) -> None:
    worker = await create_worker(
        log_level="debug",
        log_tags=["info", "ice", "dtls", "rtp", "srtp", "rtcp", "rtx", "bwe", "score"],
        rtc_min_port=20000,
        rtc_max_port=29999,
        libwebrtc_field_trials="WebRTC-Bwe-AlrLimitedBackoff/Enabled/",
        disable_liburing=True,
        app_data={"bar": 456},
    )
    async with worker:
        assert worker.app_data == {"bar": 456}
        await worker.update_settings(log_level="none", log_tags=["ice"])
    assert worker.closed


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"log_level": "chicken"}, ValueError, "log_level"),
        ({"log_tags": ["ice", "chicken"]}, ValueError, "log tag"),
        ({"log_tags": "ice"}, TypeError, "log_tags"),
        ({"rtc_min_port": 1000, "rtc_max_port": 999}, ValueError, "rtc_min_port"),
        ({"rtc_min_port": "10000"}, TypeError, "rtc_min_port"),
        ({"rtc_max_port": 70000}, ValueError, "rtc_max_port"),
        ({"app_data": "NOT-AN-OBJECT"}, TypeError, "app_data"),
        ({"dtls_certificate_file": "/notfound/cert.pem"}, ValueError, "go together"),
        (
            {"dtls_certificate_file": "/nf/c.pem", "dtls_private_key_file": "/nf/k.pem"},
            ValueError,
            "dtls_certificate_file",
        ),
        # The worker aborts on these (SIGABRT, the WorkerDiedError of a crash).
        ({"libwebrtc_field_trials": 5}, TypeError, "libwebrtc_field_trials must be a string"),
        ({"libwebrtc_field_trials": "WebRTC-Foo/Enabled"}, ValueError, "'Name/Group/' pairs"),
        ({"libwebrtc_field_trials": "WebRTC-Foo//"}, ValueError, "'Name/Group/' pairs"),
        ({"libwebrtc_field_trials": "/Enabled/"}, ValueError, "'Name/Group/' pairs"),
        ({"libwebrtc_field_trials": "A/B/A/C/"}, ValueError, "one group"),
    ],
)
async def test_create_worker_rejects_bad_settings(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await create_worker(**kwargs)


async def test_worker_takes_field_trials_the_check_lets_through() -> None:
    # The check is the worker's own: a name given twice with one group is fine.
    trials = "WebRTC-Bwe-AlrLimitedBackoff/Enabled/WebRTC-Bwe-AlrLimitedBackoff/Enabled/"
    async with await create_worker(libwebrtc_field_trials=trials) as worker:
        assert (await worker.dump())["pid"] == worker.pid


async def test_dtls_files_given_as_descriptors_are_refused(tmp_path: Any) -> None:
    # os.path.isfile() takes a descriptor: one of a regular file passed the check and
    # the worker was told to read a file named by its digits.
    path = tmp_path / "cert.pem"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TypeError, match="dtls_certificate_file must be a path"):
            await create_worker(
                dtls_certificate_file=fd,  # type: ignore[arg-type]
                dtls_private_key_file=str(path),
            )
    finally:
        os.close(fd)


async def test_worker_failing_on_its_certificate_raises_worker_died_error(tmp_path: Any) -> None:
    # Files that exist but are no certificate: only the worker can tell, and aborts.
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    with pytest.raises(WorkerDiedError) as info:
        await create_worker(dtls_certificate_file=str(cert), dtls_private_key_file=str(key))
    assert info.value.signal == signal.SIGABRT


async def test_worker_binary_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import mafalda.mediasoup as mediasoup

    monkeypatch.setenv("MEDIASOUP_WORKER_BIN", str(tmp_path / "nope"))
    assert mediasoup.worker_bin == str(tmp_path / "nope")  # mediasoup's workerBin, as is
    with pytest.raises(WorkerBinaryNotFoundError, match="MEDIASOUP_WORKER_BIN"):
        find_worker_bin()
    monkeypatch.delenv("MEDIASOUP_WORKER_BIN")
    monkeypatch.setenv("MAFALDA_CACHE", str(tmp_path))
    assert mediasoup.worker_bin.startswith(str(tmp_path))
    assert mediasoup.worker_bin.endswith("/mediasoup-worker-3.19.19/mediasoup-worker")
    with pytest.raises(WorkerBinaryNotFoundError, match="`mafalda build-worker`"):
        await create_worker()
    with pytest.raises(AttributeError, match="no attribute 'workerBin'"):
        mediasoup.workerBin  # noqa: B018


async def test_worker_dump_and_resource_usage(worker: Worker) -> None:
    dump = await worker.dump()
    assert dump["pid"] == worker.pid
    assert dump["routerIds"] == [] and dump["webRtcServerIds"] == []
    assert dump["channelMessageHandlers"]["channelRequestHandlers"] == []
    assert "liburing" not in dump  # this project's worker is built without io_uring
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    dump = await worker.dump()
    assert dump["routerIds"] == [router.id]
    assert worker.routers_for_testing == {router}
    usage = await worker.get_resource_usage()
    assert set(usage) >= {"ru_utime", "ru_stime", "ru_maxrss", "ru_nvcsw"}
    assert usage["ru_maxrss"] > 0


@pytest.mark.parametrize("python", [False, True], ids=["native", "python"])
def test_worker_dump_of_an_io_uring_worker(python: bool) -> None:
    """A worker built with liburing adds its counters to the dump. This project builds
    without (its wrap cannot be fetched here), so the body is encoded and decoded by
    the library's codec, as the channel does, instead of coming from a worker."""
    handlers = ChannelMessageHandlersT()
    handlers.channelRequestHandlers = ["r1", "t1"]
    handlers.channelNotificationHandlers = ["t1"]
    body = DumpResponseT()
    body.pid, body.webRtcServerIds, body.routerIds = 4321, ["w1"], ["r1"]
    body.channelMessageHandlers = handlers
    body.liburing = LibUringDumpT(sqeProcessCount=7, sqeMissCount=2, userDataMissCount=1)
    builder = FastBuilder(256)
    builder.Finish(body.Pack(builder))
    data = bytes(builder.Output())
    decode = python_decoder(DumpResponseT) if python else decoder(DumpResponseT)
    root = int.from_bytes(data[:4], "little")
    assert parse_worker_dump(decode(data, root)) == {
        "pid": 4321,
        "webRtcServerIds": ["w1"],
        "routerIds": ["r1"],
        "channelMessageHandlers": {
            "channelRequestHandlers": ["r1", "t1"],
            "channelNotificationHandlers": ["t1"],
        },
        "liburing": {"sqeProcessCount": 7, "sqeMissCount": 2, "userDataMissCount": 1},
    }


async def test_update_settings_rejects_bad_input(worker: Worker) -> None:
    with pytest.raises(ValueError, match="log_level"):
        await worker.update_settings(log_level="chicken")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log tag"):
        await worker.update_settings(log_tags=["chicken"])  # type: ignore[list-item]
    # As create_worker(): a string is no list of tags (it was read letter by letter).
    with pytest.raises(TypeError, match="log_tags must be a list"):
        await worker.update_settings(log_tags="ice")  # type: ignore[arg-type]
    await worker.update_settings(log_level="warn", log_tags=("ice", "dtls"))  # type: ignore[arg-type]


async def test_worker_ignores_pipe_hup_alrm_usr1_and_usr2(worker: Worker) -> None:
    # As Node's test: signals a host's tools send (a closed terminal, a log rotation)
    # never kill a worker.
    for sig in (signal.SIGPIPE, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2):
        os.kill(worker.pid, sig)
    # Answered after the signals were delivered (a pending signal is handled before the
    # process reads its channel again), and alive after that answer.
    assert (await worker.dump())["pid"] == worker.pid
    await worker.get_resource_usage()
    assert not worker.closed and not worker.died and _alive(worker.pid)


async def test_close_cascades_and_calls_after_close_raise() -> None:
    worker = await create_worker()
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    closes: list[str] = []
    worker.observer.on("close", lambda: closes.append("worker"))
    router.observer.on("close", lambda: closes.append("router"))
    router.on("workerclose", lambda: closes.append("workerclose"))
    worker.close()
    worker.close()  # second close does nothing
    assert closes == ["router", "workerclose", "worker"] or closes == [
        "workerclose",
        "router",
        "worker",
    ]
    assert router.closed
    with pytest.raises(InvalidStateError):
        await worker.dump()
    with pytest.raises(InvalidStateError):
        await worker.create_router(media_codecs=MEDIA_CODECS)
    await worker.wait_closed()
    assert not _alive(worker.pid)


async def test_killed_worker_emits_died_fails_pending_and_spares_others() -> None:
    victim = await create_worker()
    survivor = await create_worker()
    try:
        victim_router = await victim.create_router(media_codecs=MEDIA_CODECS)
        survivor_router = await survivor.create_router(media_codecs=MEDIA_CODECS)
        died: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
        victim.on("died", died.set_result)
        router_closed = asyncio.Event()
        victim_router.on("workerclose", router_closed.set)
        os.kill(victim.pid, signal.SIGSTOP)  # the pending request can't be answered
        pending = asyncio.ensure_future(victim.dump())
        await asyncio.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        error = await asyncio.wait_for(died, 5)
        assert isinstance(error, WorkerDiedError)
        assert error.signal == signal.SIGKILL
        with pytest.raises(ChannelClosedError):
            await asyncio.wait_for(pending, 5)
        assert victim.died and victim.closed and victim.subprocess_closed
        assert router_closed.is_set() and victim_router.closed
        assert not _alive(victim.pid)
        # The other worker and its router are untouched.
        assert not survivor.closed
        assert (await survivor_router.dump())["id"] == survivor_router.id
    finally:
        victim.close()
        survivor.close()
        await survivor.wait_closed()


async def test_frozen_worker_fails_requests_with_a_timeout_then_serves_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that stops answering (SIGSTOP) does not hang its callers: the request
    fails with ChannelTimeoutError (15 s by default, shortened here); once the worker
    runs again, its late answer is dropped and new requests are answered."""
    worker = await create_worker()
    try:
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        worker._channel.request_timeout = 0.3
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ChannelTimeoutError, match="ROUTER_DUMP"):
                await asyncio.wait_for(router.dump(), 10)
            assert not worker.closed and not router.closed
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert (await router.dump())["id"] == router.id
        assert (await worker.dump())["pid"] == worker.pid
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        worker.close()
        await worker.wait_closed()


def _died(worker: Worker) -> asyncio.Future[Exception]:
    """The worker's 'died' error, listened for now (before what makes it die: a task
    started to wait for it would listen a loop turn later, maybe after the event)."""
    died: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
    worker.on("died", lambda error: died.done() or died.set_result(error))
    return died


async def test_worker_that_exits_itself_is_reaped_as_died() -> None:
    worker = await create_worker()
    died = _died(worker)
    os.kill(worker.pid, signal.SIGTERM)
    assert isinstance(await asyncio.wait_for(died, 5), WorkerDiedError)
    await worker.wait_closed()
    assert not _alive(worker.pid)


async def test_no_orphan_worker_when_python_is_killed() -> None:
    """A Python process killed with SIGKILL runs no cleanup: the worker still exits,
    because its channel (fd 3) reaches end of file."""
    script = (
        "import asyncio, os, signal\n"
        "from mafalda.mediasoup import create_worker\n"
        "async def main():\n"
        "    worker = await create_worker()\n"
        "    print(worker.pid, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    pid = int(line)
    assert await process.wait() == -signal.SIGKILL
    async with asyncio.timeout(10):
        while _alive(pid):
            await asyncio.sleep(0.05)


async def test_atexit_kills_workers_left_open() -> None:
    """A script that forgets to close its worker leaves no process behind at exit."""
    script = (
        "import asyncio\n"
        "from mafalda.mediasoup import create_worker\n"
        "async def main():\n"
        "    worker = await create_worker()\n"
        "    print(worker.pid, flush=True)\n"
        "asyncio.run(main())\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    pid = int(stdout)
    async with asyncio.timeout(10):
        while _alive(pid):
            await asyncio.sleep(0.05)


async def test_channel_reads_are_limited_to_read_size() -> None:
    # asyncio's pipe transport asks for 256 KiB per read, which costs an mmap per
    # response; the worker's output pipe must ask for READ_SIZE (bigger messages take
    # several reads: test_data_producer sends 256 KiB through the worker).
    worker = await create_worker()
    try:
        readers = worker._transports[1:]  # the channel's pipe, then stdout and stderr
        # (uvloop's transports read into a buffer of their own: nothing to set there)
        stock = type(asyncio.get_running_loop()).__module__.startswith("asyncio")
        expected = READ_SIZE if stock else None
        assert [getattr(t, "max_size", None) for t in readers] == [expected] * 3
        assert READ_SIZE < 128 * 1024  # glibc's default mmap threshold
    finally:
        worker.close()
        await worker.wait_closed()


def test_limit_read_size_leaves_other_transports_alone() -> None:
    class NoMaxSize:
        pass

    other = NoMaxSize()
    limit_read_size(other)
    limit_read_size(None)
    assert not hasattr(other, "max_size")


@pytest.mark.parametrize("how", ["blocked", "ignored"])
async def test_worker_obeys_sigterm_whatever_this_thread_does_with_it(how: str) -> None:
    # The worker starts with no signal blocked or ignored, whatever the spawning thread's
    # mask and dispositions (it would otherwise inherit them and outlive a SIGTERM).
    if how == "blocked":
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    else:
        handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        worker = await create_worker()
    finally:
        if how == "blocked":
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        else:
            signal.signal(signal.SIGTERM, handler)
    died = _died(worker)
    os.kill(worker.pid, signal.SIGTERM)
    assert isinstance(await asyncio.wait_for(died, 5), WorkerDiedError)
    await worker.wait_closed()
    assert not _alive(worker.pid)


def _open_fds() -> set[str]:
    """This process's descriptors but /dev/null (libuv keeps one open per loop, made
    with its first stream, for when descriptors run out)."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own, closed since
            if os.readlink(f"/proc/self/fd/{fd}") != os.devnull:
                fds.add(fd)
    return fds


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")[:-1]


@pytest.mark.parametrize("kind", ["missing", "not executable"])
async def test_a_binary_that_cannot_be_started_leaves_no_descriptor_behind(
    tmp_path: Any, kind: str
) -> None:
    binary = tmp_path / "mediasoup-worker"
    if kind == "not executable":
        binary.write_text("#!/bin/sh\n")
    before = _open_fds()
    with pytest.raises(OSError):
        await create_worker(worker_bin=str(binary))
    assert _open_fds() == before  # the eight pipe ends are all closed


async def test_the_binary_of_mediasoup_worker_bin_is_the_one_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    binary = tmp_path / "bin" / "mediasoup-worker"
    binary.parent.mkdir()
    binary.symlink_to(find_worker_bin())
    monkeypatch.setenv("MAFALDA_CACHE", str(tmp_path / "empty-cache"))  # no cached binary
    monkeypatch.setenv("MEDIASOUP_WORKER_BIN", str(binary))
    assert find_worker_bin() == str(binary)
    async with await create_worker() as worker:
        assert _cmdline(worker.pid)[0] == str(binary)


async def test_without_log_level_the_worker_keeps_its_own_default() -> None:
    async with await create_worker(log_level=None) as worker:  # type: ignore[arg-type]
        args = _cmdline(worker.pid)
        assert not [a for a in args if a.startswith("--logLevel")]
        assert "--rtcMinPort=10000" in args
        assert (await worker.dump())["pid"] == worker.pid


async def test_a_worker_refusing_its_command_line_raises_type_error(tmp_path: Any) -> None:
    """The worker exits 42 on a setting it refuses. Every setting it could refuse is
    checked here first (or, as root, passes both checks), so a wrapper given as
    worker_bin adds one: the real worker refuses it."""
    wrapper = tmp_path / "refusing-worker"
    wrapper.write_text(f'#!/bin/sh\nexec {find_worker_bin()} --logLevel=chicken "$@"\n')
    wrapper.chmod(0o755)
    before = _open_fds()
    with pytest.raises(TypeError, match="wrong settings"):
        await create_worker(worker_bin=str(wrapper))
    assert _open_fds() == before


async def test_a_worker_that_does_not_exit_after_close_is_killed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("mafalda.mediasoup.worker._CLOSE_GRACE_SECONDS", 0.5)
    worker = await create_worker()
    os.kill(worker.pid, signal.SIGSTOP)  # cannot handle its close, nor exit
    subprocess_closed = asyncio.Event()
    worker.on("subprocessclose", subprocess_closed.set)
    worker.close()
    assert await worker.wait_closed() == (None, signal.SIGKILL)
    assert not _alive(worker.pid)
    assert subprocess_closed.is_set() and worker.subprocess_closed and not worker.died
    assert "did not exit after close, killing it" in caplog.text


async def test_cancelling_create_worker_leaves_nothing_behind() -> None:
    # Cancelled after 0, 1, 2... loop turns: before the process starts, while its pipes
    # are handed to the loop (some of them handed, the others not), then while it
    # waits for the worker to run.
    from mafalda.mediasoup import worker as worker_module

    before = _open_fds()
    for turns in range(12):
        task = asyncio.ensure_future(create_worker())
        for _ in range(turns):
            await asyncio.sleep(0)
        pids = set(worker_module._live_pids)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _open_fds() == before, f"after {turns} turns"
        assert not any(_alive(pid) for pid in pids), f"after {turns} turns"
        assert not worker_module._live_pids
        # Nothing closes a descriptor again later, by then someone else's (the numbers
        # of the pipes just closed are the next ones given out).
        others = os.pipe()
        del task
        await asyncio.sleep(0)  # uvloop lets go of a transport at its close callback
        gc.collect()
        for fd in others:
            os.fstat(fd)
            os.close(fd)


def test_worker_output_lines_are_logged_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    from mafalda.mediasoup.worker import _LineLogger

    lost: list[bool] = []
    output = _LineLogger(1234, logging.WARNING, "stderr", lambda: lost.append(True))
    with caplog.at_level(logging.DEBUG, logger="mafalda.mediasoup.worker"):
        output.data_received(b"first\n\nsecond \xff\n\n")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "worker[pid:1234] (stderr) first"),
        (logging.WARNING, "worker[pid:1234] (stderr) second \ufffd"),
    ]
    output.connection_lost(None)
    assert lost == [True]


def test_a_pipe_end_closes_its_descriptor_once() -> None:
    from mafalda.mediasoup.worker import _PipeFile

    read, write = os.pipe()
    end = _PipeFile(read)
    assert end.fileno() == read
    end.close()
    others = os.pipe()  # may reuse the number just closed
    end.close()  # ... which is not closed again
    for fd in (*others, write):
        os.fstat(fd)
        os.close(fd)


async def _start_held(tmp_path: Any) -> tuple[asyncio.Task[Worker], Worker]:
    """A create_worker() task waiting for its worker to run, and that Worker: the
    worker_bin given is a wrapper that stops itself (SIGSTOP) before it runs the real
    worker, so that the test chooses the loop turn in which the start ends."""
    from mafalda.mediasoup import worker as worker_module

    wrapper = tmp_path / "held-worker"
    wrapper.write_text(f'#!/bin/sh\nkill -STOP $$\nexec {find_worker_bin()} "$@"\n')
    wrapper.chmod(0o755)
    before = set(worker_module._live_pids)
    task = asyncio.ensure_future(create_worker(worker_bin=str(wrapper)))
    async with asyncio.timeout(10):
        while True:  # until the task waits for WORKER_RUNNING (_workers has it then)
            held = [w for w in worker_module._workers if w.pid not in before]
            if held:
                return task, held[0]
            await asyncio.sleep(0)


async def test_a_start_cancelled_in_the_loop_turn_its_worker_exits_in(tmp_path: Any) -> None:
    """The process exits and create_worker() is cancelled in the same loop turn, the
    cancellation first: the exit finds the start given up already (its future
    cancelled) and reports nothing more; the task raises CancelledError."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    try:
        task, worker = await _start_held(tmp_path)
        os.kill(worker.pid, signal.SIGKILL)
        # Until it is a zombie (left to be reaped): the loop sees the exit next turn.
        os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOWAIT)
        loop.call_soon(task.cancel)  # in that turn, before the exit is handled
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await worker.wait_closed() == (None, signal.SIGKILL)
        assert worker.closed and not worker.died
    finally:
        loop.set_exception_handler(None)
    assert not errors


async def test_a_start_cancelled_in_the_loop_turn_its_worker_runs_in(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """WORKER_RUNNING is handled in the loop turn create_worker() is cancelled in, after
    the cancellation: the notification finds the start given up already, and the task
    raises CancelledError and kills the worker."""
    import select

    loop = asyncio.get_running_loop()
    task, worker = await _start_held(tmp_path)
    os.waitid(os.P_PID, worker.pid, os.WSTOPPED | os.WNOWAIT)  # held now
    os.kill(worker.pid, signal.SIGCONT)  # the real worker runs, and says so
    channel_fd = worker._handed[1].fileno()
    assert select.select([channel_fd], [], [], 10)[0] == [channel_fd]
    # Next turn: this callback, then the channel's read (which schedules the dispatch of
    # WORKER_RUNNING); the turn after: the cancellation, then that dispatch.
    loop.call_soon(loop.call_soon, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await worker.wait_closed() == (None, signal.SIGKILL)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_exit_status_once_the_process_exited() -> None:
    worker = await create_worker(log_level="warn")
    assert worker.exit_status is None
    worker.close()
    assert await worker.wait_closed() == (0, None) == worker.exit_status
