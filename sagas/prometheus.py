"""A `Metrics` in the Prometheus text exposition format, on an optional HTTP endpoint.

Needs the `prometheus_client` library, the optional extra `metrics`
(`pip install 'saga-actors[metrics]'`); it is imported only when an
endpoint is made, so the engine itself needs only pykka. Nothing is
recorded through prometheus_client: the engine records into its own
`Metrics` (cheap, see `sagas.metrics`), and `MetricsCollector` reads that
when the endpoint is scraped. Each endpoint has its own `CollectorRegistry`
(never the process-wide default one), so several systems in one process
do not clash.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

from saga_actors.sagas.metrics import GAUGES, Metrics

__all__ = [
    "DEFAULT_HOST",
    "EXTRA",
    "HELP",
    "NAMESPACE",
    "MetricsCollector",
    "MetricsEndpoint",
    "import_prometheus_client",
]

NAMESPACE = "saga_actors"  # every metric's name begins with it
DEFAULT_HOST = "127.0.0.1"  # the endpoint is local unless asked otherwise
EXTRA = "pip install 'saga-actors[metrics]'"
STOP_TIMEOUT = 5.0  # seconds stop() waits for the server's thread

# Each metric's HELP line, by its name in `Metrics` (the exposed name adds the namespace,
# and `_total` to a counter). A name not listed here is shown with a generic line.
HELP: Mapping[str, str] = {
    "orders_placed": "Orders placed (durable), each counted once.",
    "orders_confirmed": "Orders confirmed: their saga completed.",
    "orders_cancelled": "Orders cancelled: their saga rolled back.",
    "duplicates": "Submissions of an order already placed, answered with its first outcome.",
    "idempotency_conflicts": "Submissions that reused an order id for a different order (refused).",
    "retries": "Step attempts scheduled again after a transient failure or a timeout.",
    "compensations": "Compensations decided by rollbacks (one per step undone).",
    "restarts": "Restarts by a supervisor: services, saga hosts and single sagas.",
    "sagas_stuck": "Sagas with a step that has used up its maximum attempts and is still retried.",
    "sagas_in_flight": "Sagas submitted whose end is not durable yet (in an order system: orders "
    "being placed or whose saga has not ended).",
    "service_requests": "Requests a service process answered, by operation and HTTP status.",
    "service_request_seconds": "Seconds a service process took to answer a request, from its arrival "
    "(simulated latency included), by operation.",
    "service_requests_in_flight": "Requests a service process is handling now.",
    "step_retries": "Step attempts scheduled again, by participant, step and kind (do or undo).",
    "step_compensations": "Compensations decided by rollbacks, by participant and step.",
    "saga_duration_seconds": "Seconds from a saga's start to its durable end (an order's latency), "
    "by outcome (completed or aborted); sagas resumed from another process's journal are not included.",
    "step_latency_seconds": "Seconds from a step's request being sent to its reply, by participant, "
    "step and kind (do or undo); replies after their attempt timed out are not included.",
}


def import_prometheus_client() -> ModuleType:
    """The `prometheus_client` module; ImportError naming the extra to install if it is missing."""
    try:
        return importlib.import_module("prometheus_client")
    except ImportError as missing:
        raise ImportError(
            "the metrics endpoint needs the prometheus_client library, which is not installed; "
            f"install the optional extra `metrics`: {EXTRA} (from a checkout: pip install -e '.[metrics]')"
        ) from missing


class MetricsCollector:
    """A prometheus_client collector of one `Metrics`, read at scrape time.

    Counters become `<namespace>_<name>_total`, the counters in
    `sagas.metrics.GAUGES` and the `gauges` given become gauges
    `<namespace>_<name>`, labelled counters and histograms keep their label
    names. `gauges` maps a name to a function read at each scrape.
    `collect()` runs in the thread serving the scrape.
    """

    def __init__(
        self,
        metrics: Metrics,
        gauges: Mapping[str, Callable[[], float]] | None = None,
        namespace: str = NAMESPACE,
    ) -> None:
        self._metrics = metrics
        self._gauges = dict(gauges or {})
        self._namespace = namespace

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        metrics, prefix = self._metrics, f"{self._namespace}_"
        for name, value in sorted(metrics.snapshot().items()):
            family = GaugeMetricFamily if name in GAUGES else CounterMetricFamily
            yield family(prefix + name, _help(name), value=value)
        for name, read in sorted(self._gauges.items()):
            yield GaugeMetricFamily(prefix + name, _help(name), value=read())
        for name, series in sorted(metrics.labelled().items()):
            counter = CounterMetricFamily(prefix + name, _help(name), labels=metrics.label_names(name))
            for labels, value in sorted(series.items()):
                counter.add_metric(labels, value)
            yield counter
        for name, histograms in sorted(metrics.histograms().items()):
            histogram = HistogramMetricFamily(prefix + name, _help(name), labels=metrics.label_names(name))
            for data in histograms:
                histogram.add_metric(
                    list(data.labels.values()),
                    [(_bound(bound), count) for bound, count in data.buckets],
                    data.sum,
                )
            yield histogram


def _bound(bound: float) -> str:
    """A bucket's `le` label: Prometheus spells infinity `+Inf`."""
    return "+Inf" if bound == math.inf else repr(bound)


def _help(name: str) -> str:
    return HELP.get(name, f"saga-actors metric {name}.")


class MetricsEndpoint:
    """Serves one `Metrics` over HTTP, in the Prometheus text format, from `start()` to `stop()`.

    host, port: where to listen; port 0 picks a free (ephemeral) port, read
        it from `port` once started. Any path answers with the metrics.
    gauges: extra gauges, name -> a function read at each scrape (in the
        thread serving it: it must be thread-safe and quick).

    Raises ValueError for a bad host or port, and ImportError naming the
    extra `metrics` if prometheus_client is not installed. The server is
    prometheus_client's `start_http_server`: a daemon thread, and one thread
    per request. Thread-safe.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        gauges: Mapping[str, Callable[[], float]] | None = None,
    ) -> None:
        problems = []
        if not isinstance(host, str) or not host:
            problems.append(f"metrics_host must be a non-empty host name or address, got {host!r:.60}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            problems.append(
                f"metrics_port must be an integer in [0, 65535] (0: any free port), got {port!r:.60}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        self._client = import_prometheus_client()
        self._host, self._requested = host, port
        self._registry = self._client.CollectorRegistry()  # this endpoint's own, never the default
        self._registry.register(MetricsCollector(metrics, gauges))
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The port listened on (the one bound, when 0 was asked for) while serving, else None."""
        server = self._server
        return None if server is None else int(server.server_address[1])

    def start(self) -> None:
        """Listen (nothing if already listening). Raises OSError if the port cannot be bound."""
        with self._lock:
            if self._server is not None:
                return
            self._server, self._thread = self._client.start_http_server(
                self._requested, addr=self._host, registry=self._registry
            )

    def stop(self) -> None:
        """Stop listening and release the port (nothing if not listening). Blocks until the
        server's loop notices, up to its poll interval (0.5 s)."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None:
                return
            server.shutdown()
            server.server_close()
            if thread is not None:
                thread.join(STOP_TIMEOUT)

    def text(self) -> str:
        """The exposition a scrape would get now (for logs and tests; needs no server)."""
        return str(self._client.generate_latest(self._registry).decode("utf-8"))
