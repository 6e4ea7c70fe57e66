"""The ``mafalda`` command: arguments, environment, and ``mafalda demo`` running."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from mafalda import cli
from mafalda.demo.server import DemoConfig, DemoServer

ENV = (
    "MAFALDA_DEMO_HOST",
    "MAFALDA_DEMO_PORT",
    "MAFALDA_DEMO_RTC_IP",
    "MAFALDA_DEMO_RTC_PORT",
    "MAFALDA_DEMO_ANNOUNCED_IP",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_demo_defaults() -> None:
    args = cli.build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.rtc_ip, args.rtc_port) == (
        "127.0.0.1",
        8080,
        "127.0.0.1",
        40000,
    )
    assert args.announced_ip is None
    assert args.room == "demo"


def test_demo_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAFALDA_DEMO_HOST", "0.0.0.0")
    monkeypatch.setenv("MAFALDA_DEMO_PORT", "9000")
    monkeypatch.setenv("MAFALDA_DEMO_RTC_IP", "0.0.0.0")
    monkeypatch.setenv("MAFALDA_DEMO_RTC_PORT", "0")
    monkeypatch.setenv("MAFALDA_DEMO_ANNOUNCED_IP", "192.0.2.7")
    args = cli.build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.rtc_ip, args.rtc_port) == ("0.0.0.0", 9000, "0.0.0.0", 0)
    assert args.announced_ip == "192.0.2.7"
    # A flag wins over the environment.
    args = cli.build_parser().parse_args(["demo", "--port", "8081", "--announced-ip", "x.y"])
    assert (args.port, args.announced_ip) == (8081, "x.y")


def test_bad_ports(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("http", "70000"):
        monkeypatch.setenv("MAFALDA_DEMO_RTC_PORT", bad)
        with pytest.raises(SystemExit, match="MAFALDA_DEMO_RTC_PORT"):
            cli.build_parser()
    monkeypatch.delenv("MAFALDA_DEMO_RTC_PORT")
    for bad in ("-1", "port"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["demo", "--port", bad])
    assert "is not a port number" in capsys.readouterr().err


def test_monitor_interval_must_be_a_positive_number(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        cli.build_parser().parse_args(["monitor", "redis://x", "--interval", "0.5"]).interval == 0.5
    )
    for bad, error in (("soon", "'soon' is not a number"), ("inf", "not a positive number")):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["monitor", "redis://x", "--interval", bad])
        assert error in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def interrupt_when_listening(port: int) -> threading.Thread:
    """Send SIGINT to this process once something accepts connections on ``port``."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_demo_runs_until_interrupted(loop: str, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_tcp_port()
    thread = interrupt_when_listening(port)
    argv = ["--loop", loop, "demo", "--port", str(port), "--rtc-port", "0", "--room", "r1", "-v"]
    code = cli.main(argv)
    thread.join()
    assert code == 0
    out = capsys.readouterr().out
    assert f"open http://127.0.0.1:{port}/?room=r1 " in out


def test_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop

    monkeypatch.delenv("MAFALDA_LOOP", raising=False)
    assert cli.build_parser().parse_args(["demo"]).loop == "auto"
    monkeypatch.setenv("MAFALDA_LOOP", "asyncio")
    assert cli.build_parser().parse_args(["demo"]).loop == "asyncio"
    assert cli.build_parser().parse_args(["--loop", "uvloop", "demo"]).loop == "uvloop"
    assert cli.loop_runner("asyncio") is asyncio.run
    assert cli.loop_runner("auto") is uvloop.run
    assert cli.loop_runner("uvloop") is uvloop.run
    # Where uvloop is missing (a fake: it is a dependency here), auto falls back and an
    # explicit uvloop says so.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert cli.loop_runner("auto") is asyncio.run
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        cli.loop_runner("uvloop")


@pytest.mark.timeout(120)
def test_demo_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["demo", "--port", str(port), "--rtc-port", "0"]) == 1
    assert "mafalda: " in capsys.readouterr().err


async def test_demo_stops_when_the_worker_dies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("mafalda.demo.server.BUNDLE", Path("/nonexistent/demo.js"))
    server = DemoServer(DemoConfig(port=0, rtc_port=0))
    serving = asyncio.ensure_future(cli._serve(server, asyncio.Event(), "demo"))
    out = err = ""
    async with asyncio.timeout(60):
        while "Press Ctrl+C" not in out:
            await asyncio.sleep(0.05)
            captured = capsys.readouterr()
            out, err = out + captured.out, err + captured.err
    os.kill(server.worker.pid, signal.SIGKILL)
    async with asyncio.timeout(60):
        assert await serving == 1
    err += capsys.readouterr().err
    assert "bundle is missing" in err
    assert "mediasoup-worker died" in err
