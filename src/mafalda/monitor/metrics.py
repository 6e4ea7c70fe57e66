"""The Monitor's view as Prometheus metrics: ``GET /metrics`` of the monitor pages.

Pure functions (no I/O): ``render_metrics(view, accept)`` gives the body and its content
type, in Prometheus's text format or OpenMetrics as the scraper's ``Accept`` header asks
(prometheus_client writes both, escaping labels as the formats require).

One series per server and per worker, labelled by the server's id and the worker's pid,
and one per link direction; routers are left out (their ids come and go with rooms: a
series each would grow Prometheus's index without bound), their counts are the workers'.
What a server's report left out beyond its caps is one series per kind (``what``).
Cluster totals are sums in PromQL (``sum(mafalda_worker_consumers)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from mafalda.monitor.view import ClusterView, clients_away

__all__ = ["collect", "render_metrics"]

#: A worker's counts: (WorkerStats key, metric name suffix, help).
_WORKER_COUNTS = (
    ("routers", "routers", "Routers on the worker."),
    ("transports", "transports", "Transports on the worker (pipe ends included)."),
    ("producers", "producers", "Producers on the worker (pipe copies included)."),
    ("consumers", "consumers", "Consumers on the worker (pipe consumers included)."),
    ("dataProducers", "data_producers", "Data producers on the worker."),
    ("dataConsumers", "data_consumers", "Data consumers on the worker."),
)

#: What a report leaves out beyond its caps: (``what`` label, ServerView key).
_OMITTED = (("routers", "routersOmitted"), ("clients", "clientsOmitted"), ("pipes", "pipesOmitted"))


class _Families:
    """What prometheus_client's encoders read: anything with ``collect()``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def collect(view: ClusterView) -> list[Metric]:
    """The metric families of ``view`` (every family, with no sample if it has none)."""
    server_labels = ["server"]
    # Not "mafalda_server": an OpenMetrics family name must not prefix other families'.
    info = InfoMetricFamily(
        "mafalda_cluster_server",
        "A server of the cluster: what it serves, where.",
        labels=["server", "serves", "region", "control_url", "media_address"],
    )
    reported = GaugeMetricFamily(
        "mafalda_server_reported",
        "1 when the server's report was read, 0 when it has none (yet, or no probe).",
        labels=server_labels,
    )
    age = GaugeMetricFamily(
        "mafalda_server_report_age_seconds",
        "Seconds between the server's sample and the view.",
        labels=server_labels,
    )
    draining = GaugeMetricFamily(
        "mafalda_server_draining",
        "1 when the server takes no new rooms (draining), else 0.",
        labels=server_labels,
    )
    load = GaugeMetricFamily(
        "mafalda_server_load",
        "The registry's load figure of the server (what placement compares).",
        labels=server_labels,
    )
    clients = GaugeMetricFamily(
        "mafalda_server_clients",
        "Apps driving the server through mafalda.remote (sessions, away ones included).",
        labels=server_labels,
    )
    away = GaugeMetricFamily(
        "mafalda_server_clients_away",
        "Sessions within their grace period, among the 1,000 reported.",
        labels=server_labels,
    )
    omitted = GaugeMetricFamily(
        "mafalda_server_omitted",
        "Routers, clients or pipe ends (what) the server's report left out beyond its caps "
        "(the view has them in no room, away figure or link).",
        labels=["server", "what"],
    )
    worker_labels = ["server", "worker"]
    cpu_total = CounterMetricFamily(
        "mafalda_worker_cpu_seconds",
        "CPU seconds the worker used since it started (user and system).",
        labels=worker_labels,
    )
    cpu = GaugeMetricFamily(
        "mafalda_worker_cpu_ratio",
        "Share of one core the worker used between the server's last two samples.",
        labels=worker_labels,
    )
    placement = GaugeMetricFamily(
        "mafalda_worker_load",
        "A Mafalda pool's placement load of the worker (its policy's figure).",
        labels=worker_labels,
    )
    counts = [
        (
            key,
            GaugeMetricFamily(f"mafalda_worker_{suffix}", text, labels=worker_labels),
        )
        for key, suffix, text in _WORKER_COUNTS
    ]
    link_labels = ["server", "worker", "peer_server", "peer_worker"]
    streams = GaugeMetricFamily(
        "mafalda_link_streams",
        "Streams (media and data) a worker sends to a peer worker through pipes; an empty "
        "peer is outside the cluster.",
        labels=link_labels,
    )
    pipes = GaugeMetricFamily(
        "mafalda_link_pipes",
        "PipeTransport pairs between two workers, once per link.",
        labels=link_labels,
    )

    for server in view["servers"]:
        sid = [server["id"]]
        info.add_metric(
            [
                server["id"],
                server["serves"],
                server["region"] or "",
                server["controlUrl"],
                server["mediaAddress"],
            ],
            {},
        )
        reported.add_metric(sid, 1.0 if server["reported"] else 0.0)
        if server["age"] is not None:
            age.add_metric(sid, server["age"])
        draining.add_metric(sid, 1.0 if server["draining"] else 0.0)
        load.add_metric(sid, server["load"])
        clients.add_metric(sid, server["totals"]["clients"])
        away.add_metric(sid, clients_away(server))
        if server["reported"]:  # else unknown: no sample
            for what, key in _OMITTED:
                omitted.add_metric([server["id"], what], server[key])  # type: ignore[literal-required]
        for worker in server["workers"]:
            wid = [server["id"], str(worker["pid"])]
            if worker["cpuTime"] is not None:
                cpu_total.add_metric(wid, worker["cpuTime"])
            if worker["cpu"] is not None:
                cpu.add_metric(wid, worker["cpu"])
            if worker["load"] is not None:
                placement.add_metric(wid, worker["load"])
            for key, family in counts:
                family.add_metric(wid, worker[key])  # type: ignore[literal-required]
    for link in view["links"]:
        a = [link["a"]["server"], str(link["a"]["worker"])]
        b = ["", ""] if link["b"] is None else [link["b"]["server"], str(link["b"]["worker"])]
        streams.add_metric(a + b, link["aToB"])
        streams.add_metric(b + a, link["bToA"])
        pipes.add_metric(a + b, link["pipes"])
    return [
        info,
        reported,
        age,
        draining,
        load,
        clients,
        away,
        omitted,
        cpu_total,
        cpu,
        placement,
        *(family for _key, family in counts),
        streams,
        pipes,
    ]


def render_metrics(view: ClusterView, accept: str = "") -> tuple[bytes, str]:
    """(body, content type) of ``view``'s metrics, in the format ``accept`` (a scraper's
    ``Accept`` header) asks for: OpenMetrics if it names it, else Prometheus's text."""
    encoder, content_type = choose_encoder(accept)
    return encoder(_Families(collect(view))), content_type
