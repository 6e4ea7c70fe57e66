"""The monitor's ``/metrics``: both exposition formats (pure), promtool's lint, and a
real Prometheus scraping a monitor page that asks for a password."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from mafalda import mediasoup, monitor
from mafalda.mediasoup.worker_binary import cache_dir
from mafalda.monitor import Probe, build_view
from mafalda.monitor.metrics import render_metrics
from mafalda.monitor.view import ClusterView
from mafalda.monitor.web import MonitorWeb
from tests.conftest import MEDIA_CODECS, opus_rtp_parameters
from tests.processes import free_ports, reap
from tests.test_monitor import _end, _record, _report

PROMETHEUS = cache_dir() / "prometheus" / "usr" / "bin"
needs_prometheus = pytest.mark.skipif(
    not (PROMETHEUS / "prometheus").exists(),
    reason="no Prometheus: run `bash scripts/fetch-prometheus.sh`",
)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(families: Iterable[Any]) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in families
        for s in family.samples
    }


def _key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def _view() -> ClusterView:
    """s1 (two workers, one a pool's without CPU yet; routers, clients and pipe ends
    beyond its report's caps) sends to s2, s2 sends back and to nobody in the cluster;
    s3 has no report; s2's region needs escaping."""
    s1 = _report(
        "s1",
        [11, 12],
        [_end("a", 11, ("10.0.0.1", 4000), ("10.0.0.2", 5000), consumers=2, data_consumers=1)],
        5.0,
    )
    s1["workers"][1].update(cpu=None, cpuTime=None, load=None, consumers=7)
    s1.update(routersOmitted=2, pipesOmitted=4)  # and one client, as every _report
    s2 = _report(
        "s2",
        [21],
        [
            _end("b", 21, ("10.0.0.2", 5000), ("10.0.0.1", 4000), consumers=1),
            _end("c", 21, ("10.0.0.2", 5002), ("192.0.2.9", 7000), consumers=4),
        ],
        4.5,
    )
    records = [
        _record("s1", "10.0.0.1"),
        _record("s2", "10.0.0.2", region='eu "west"\nb\\', draining=True, load=1.25),
        _record("s3", "10.0.0.3", serves="mafalda"),
    ]
    return build_view(records, [s1, s2], now=6.0)


def _check(samples: Samples) -> None:
    """What both formats must say of ``_view()``."""
    cpu_total = "mafalda_worker_cpu_seconds_total"
    info = _key(
        "mafalda_cluster_server_info",
        server="s2",
        serves="mediasoup",
        region='eu "west"\nb\\',
        control_url="ws://10.0.0.2:4443/",
        media_address="10.0.0.2",
    )
    assert samples[info] == 1
    assert samples[_key("mafalda_server_reported", server="s1")] == 1
    assert samples[_key("mafalda_server_reported", server="s3")] == 0
    assert samples[_key("mafalda_server_report_age_seconds", server="s2")] == 1.5
    assert _key("mafalda_server_report_age_seconds", server="s3") not in samples
    assert samples[_key("mafalda_server_draining", server="s2")] == 1
    assert samples[_key("mafalda_server_draining", server="s1")] == 0
    assert samples[_key("mafalda_server_load", server="s2")] == 1.25
    assert samples[_key("mafalda_server_clients", server="s1")] == 3  # one beyond the cap
    assert samples[_key("mafalda_server_clients_away", server="s1")] == 1
    assert samples[_key("mafalda_server_clients", server="s3")] == 0
    # What a report left out beyond its caps: a series per kind, none unreported.
    left_out = {k: v for k, v in samples.items() if k[0] == "mafalda_server_omitted"}
    assert left_out == {
        _key("mafalda_server_omitted", server="s1", what="routers"): 2,
        _key("mafalda_server_omitted", server="s1", what="clients"): 1,
        _key("mafalda_server_omitted", server="s1", what="pipes"): 4,
        _key("mafalda_server_omitted", server="s2", what="routers"): 0,
        _key("mafalda_server_omitted", server="s2", what="clients"): 1,
        _key("mafalda_server_omitted", server="s2", what="pipes"): 0,
    }
    assert samples[_key(cpu_total, server="s1", worker="11")] == 12.5
    assert samples[_key("mafalda_worker_cpu_ratio", server="s1", worker="11")] == 0.25
    assert samples[_key("mafalda_worker_load", server="s1", worker="11")] == 0.4
    for name in (cpu_total, "mafalda_worker_cpu_ratio", "mafalda_worker_load"):
        assert _key(name, server="s1", worker="12") not in samples  # unknown: no sample
    assert samples[_key("mafalda_worker_consumers", server="s1", worker="12")] == 7
    assert samples[_key("mafalda_worker_data_consumers", server="s2", worker="21")] == 1
    assert samples[_key("mafalda_worker_routers", server="s2", worker="21")] == 1
    s1, s2 = {"server": "s1", "worker": "11"}, {"server": "s2", "worker": "21"}
    peer_s1 = {"peer_server": "s1", "peer_worker": "11"}
    peer_s2 = {"peer_server": "s2", "peer_worker": "21"}
    nobody = {"peer_server": "", "peer_worker": ""}
    assert samples[_key("mafalda_link_streams", **s1, **peer_s2)] == 3  # media and data
    assert samples[_key("mafalda_link_streams", **s2, **peer_s1)] == 1
    assert samples[_key("mafalda_link_pipes", **s1, **peer_s2)] == 1
    assert samples[_key("mafalda_link_streams", **s2, **nobody)] == 4
    # What nobody in the cluster sends back is what the lone end receives: none.
    assert samples[_key("mafalda_link_streams", server="", worker="", **peer_s2)] == 0
    workers = {k for k in samples if k[0] == "mafalda_worker_consumers"}
    assert len(workers) == 3  # no series for s3, which reported none


def test_metrics_in_prometheus_text_format() -> None:
    body, content_type = render_metrics(_view())
    assert content_type.startswith("text/plain; version=0.0.4")
    _check(_samples(text_string_to_metric_families(body.decode())))
    assert render_metrics(_view(), "text/html")[1] == content_type  # anything else: text


def test_metrics_in_openmetrics_format() -> None:
    body, content_type = render_metrics(_view(), OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = list(openmetrics_families(text))  # the strict parser: refuses a bad body
    _check(_samples(families))
    kinds = {f.name: f.type for f in families}
    assert kinds["mafalda_worker_cpu_seconds"] == "counter"
    assert kinds["mafalda_cluster_server"] == "info"


@needs_prometheus
def test_promtool_finds_nothing_to_say() -> None:
    """Prometheus's own linter (names, units, help) on a full view and an empty one (it
    reads the text format only)."""
    empty = build_view([], [], now=1.0)
    for view in (_view(), empty):
        body, _ = render_metrics(view)
        checked = subprocess.run(
            [str(PROMETHEUS / "promtool"), "check", "metrics"],
            input=body,
            capture_output=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stderr.decode()
        assert checked.stdout.decode() + checked.stderr.decode() == ""


async def _query(http: aiohttp.ClientSession, base: str, query: str) -> list[dict[str, Any]]:
    async with http.get(base + "api/v1/query", params={"query": query}) as got:
        answer = await got.json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@needs_prometheus
async def test_a_real_prometheus_scrapes_a_monitor_page_with_a_password(tmp_path: Path) -> None:
    """Prometheus (Debian's) scrapes `/metrics` of a server's monitor page with the right
    password (and, as a second job, a wrong one): it reads the worker's figures as the
    probe counts them, in the format it negotiates (OpenMetrics), and marks the job
    with the wrong password down."""
    worker = await mediasoup.create_worker(log_level="warn")
    probe = Probe(server_id="here")
    probe.add_worker(worker)
    local = monitor.LocalMonitor(probe, record=lambda: _record("here", "127.0.0.1"), interval=0.2)
    port = free_ports(1)  # prometheus binds it later: below the ephemeral range
    config = tmp_path / "prometheus.yml"
    proc: asyncio.subprocess.Process | None = None
    try:
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        send = await router.create_plain_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.1"}
        )
        producer = await send.produce(kind="audio", rtp_parameters=opus_rtp_parameters(3333))
        recv = await router.create_plain_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.1"}
        )
        for _ in range(3):
            await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        async with MonitorWeb(local, port=0, password="pw") as page:
            target = f"127.0.0.1:{page.port}"
            config.write_text(
                "global: {scrape_interval: 500ms, scrape_timeout: 400ms}\n"
                "scrape_configs:\n"
                f"- job_name: mafalda\n  basic_auth: {{username: prom, password: pw}}\n"
                f"  static_configs: [{{targets: ['{target}']}}]\n"
                f"- job_name: wrong\n  basic_auth: {{username: prom, password: nope}}\n"
                f"  static_configs: [{{targets: ['{target}']}}]\n"
            )
            proc = await asyncio.create_subprocess_exec(
                str(PROMETHEUS / "prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            base = f"http://127.0.0.1:{port}/"
            pid = str(worker.pid)
            async with aiohttp.ClientSession() as http:
                async with asyncio.timeout(60):
                    while True:
                        try:
                            up = await _query(http, base, "up")
                            consumers = await _query(http, base, "mafalda_worker_consumers")
                            cpu = await _query(http, base, "mafalda_worker_cpu_seconds_total")
                        except aiohttp.ClientError:  # not listening yet
                            up = consumers = cpu = []
                        if len(up) == 2 and consumers and cpu:
                            break
                        await asyncio.sleep(0.2)
                by_job = {r["metric"]["job"]: r["value"][1] for r in up}
                assert by_job == {"mafalda": "1", "wrong": "0"}
                [series] = consumers
                assert series["metric"]["worker"] == pid and series["metric"]["server"] == "here"
                assert series["metric"]["job"] == "mafalda"
                assert series["value"][1] == "3"
                [series] = cpu
                assert float(series["value"][1]) >= 0
                [transports] = await _query(http, base, "mafalda_worker_transports")
                assert transports["value"][1] == "2"
                [info] = await _query(http, base, "mafalda_cluster_server_info")
                assert info["metric"]["serves"] == "mediasoup"
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
        if proc is not None:
            await reap(proc)
        worker.close()
        await worker.wait_closed()
