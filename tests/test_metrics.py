"""The metrics: counters and latency histograms, scraped over real HTTP in the Prometheus text format."""

from __future__ import annotations

import importlib.util
import math
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from saga_actors import FaultPlan, OrderSystem, RetryPolicy
from saga_actors.sagas.metrics import Metrics
from tests.conftest import DECLINED, make_request, wait_until

# The endpoint's tests need the extra `metrics` (CI and the README's test command install it);
# the tests of what happens without it do not.
needs_client = pytest.mark.skipif(
    importlib.util.find_spec("prometheus_client") is None,
    reason="needs prometheus_client: pip install -e '.[test,metrics]'",
)
FAST_RETRY = RetryPolicy(
    initial_interval=0.001, maximum_interval=0.005, maximum_attempts=50, attempt_timeout=5.0
)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """GET the endpoint and parse it: {(sample name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@needs_client
def test_the_scraped_metrics_agree_with_what_happened():
    # The payment service refuses a third of its calls (retried), one card is declined and one
    # order wants more than is in stock (both rolled back, compensated).
    payment = FaultPlan(failure_rate=0.3, seed=12)
    with OrderSystem(stock={101: 40}, payment_faults=payment, retry=FAST_RETRY, metrics_port=0) as system:
        port = system.metrics_port
        assert isinstance(port, int) and port > 0
        requests = [make_request(f"ok-{i}", [(101, 1)]) for i in range(12)]
        requests.append(make_request("declined", [(101, 1)], card=DECLINED))
        requests.append(make_request("too-many", [(101, 1000)]))
        futures = [system.submit(request) for request in requests]
        outcomes = {
            request["order_id"]: future.get(timeout=30)
            for request, future in zip(requests, futures, strict=True)
        }
        confirmed, cancelled = sum(outcomes.values()), sum(not ok for ok in outcomes.values())
        assert outcomes["declined"] is False and outcomes["too-many"] is False
        assert system.wait_idle(10)
        finished = len(requests)
        # The callers are answered as the end is durable; the counters follow at once after.
        samples = wait_until(
            lambda: (
                (s := scrape(port))
                and value(s, "saga_actors_orders_confirmed_total")
                + value(s, "saga_actors_orders_cancelled_total")
                == finished
                and s
            ),
            what="every outcome counted",
        )
        counters = system.metrics()
        histograms = system.histograms()

    # Counters: the outcomes, and the same numbers as metrics().
    assert value(samples, "saga_actors_orders_confirmed_total") == confirmed
    assert value(samples, "saga_actors_orders_cancelled_total") == cancelled
    assert value(samples, "saga_actors_orders_placed_total") == finished
    for name in ("orders_placed", "orders_confirmed", "orders_cancelled", "retries", "compensations"):
        assert value(samples, f"saga_actors_{name}_total") == counters[name], name
    assert value(samples, "saga_actors_sagas_in_flight") == 0
    assert value(samples, "saga_actors_sagas_stuck") == 0
    assert value(samples, "saga_actors_restarts_total") == 0

    # Retries: the faulty payment service was retried, and only it; per step they add up.
    retries = value(samples, "saga_actors_retries_total")
    assert retries > 0
    assert total(samples, "saga_actors_step_retries_total") == retries
    assert total(samples, "saga_actors_step_retries_total", participant="payment") == retries

    # Compensations: one per step undone, the declined card's reservation among them.
    compensations = value(samples, "saga_actors_compensations_total")
    assert compensations >= 1
    assert total(samples, "saga_actors_step_compensations_total") == compensations
    reservations_undone = value(
        samples, "saga_actors_step_compensations_total", participant="inventory", step="reserve_stock"
    )
    assert reservations_undone >= 1  # the declined card's order had its stock reserved

    # Order latency: one observation per saga finished, by outcome.
    def duration(outcome: str, suffix: str) -> float:
        return value(samples, f"saga_actors_saga_duration_seconds_{suffix}", outcome=outcome)

    assert duration("completed", "count") == confirmed
    assert duration("aborted", "count") == cancelled
    assert duration("completed", "sum") > 0
    for outcome in ("completed", "aborted"):
        inf = value(samples, "saga_actors_saga_duration_seconds_bucket", outcome=outcome, le="+Inf")
        assert inf == duration(outcome, "count")

    # Step latency: one observation per attempt answered (a reply that comes after a rollback was
    # decided counts too). No call times out or crashes here, so every attempt sent is answered:
    # a step's count is the sagas that ran it plus its retries.
    def answered(participant: str, step: str, kind: str = "do") -> float:
        return value(
            samples, "saga_actors_step_latency_seconds_count", participant=participant, step=step, kind=kind
        )

    def retried(participant: str, step: str, kind: str = "do") -> float:
        return value(samples, "saga_actors_step_retries_total", participant=participant, step=step, kind=kind)

    assert answered("inventory", "reserve_stock") == finished
    assert answered("inventory", "commit_stock") == confirmed
    assert answered("inventory", "reserve_stock", "undo") == reservations_undone
    # ... but a retry may be due after a rollback was decided (the order wanting too much stock,
    # while its authorization was refused as unavailable): that attempt is never sent.
    authorizations = answered("payment", "authorize_payment")
    assert finished <= authorizations <= finished + retried("payment", "authorize_payment")
    assert answered("payment", "capture_payment") == confirmed + retried("payment", "capture_payment")
    assert answered("orders", "confirm_order") == confirmed
    assert answered("orders", "cancel_order") == cancelled
    assert total(samples, "saga_actors_step_latency_seconds_count", participant="orders") == finished

    # histograms() gives the same numbers as plain data.
    by_outcome = {h.labels["outcome"]: h for h in histograms["saga_duration_seconds"]}
    assert by_outcome["completed"].count == confirmed and by_outcome["aborted"].count == cancelled
    for series in histograms["step_latency_seconds"]:
        assert series.count == answered(
            series.labels["participant"], series.labels["step"], series.labels["kind"]
        )
        assert series.buckets[-1] == (math.inf, series.count)
        assert [n for _, n in series.buckets] == sorted(n for _, n in series.buckets)


@needs_client
def test_latencies_measure_the_wire_and_the_in_flight_gauge_sees_the_order():
    # Every call to the payment service spends 0.1 s on the wire: each payment step takes at
    # least that, and an order at least twice that (authorize, then capture).
    wire = FaultPlan(min_latency=0.1, max_latency=0.1, seed=3)
    with OrderSystem(stock={101: 5}, payment_faults=wire, metrics_port=0) as system:
        port = system.metrics_port
        future = system.submit(make_request("slow", [(101, 1)]))
        wait_until(lambda: value(scrape(port), "saga_actors_sagas_in_flight") == 1, what="in flight")
        assert future.get(timeout=10) is True
        samples = wait_until(
            lambda: (s := scrape(port)) and value(s, "saga_actors_sagas_in_flight") == 0 and s,
            what="the order no longer in flight",
        )
    for step in ("authorize_payment", "capture_payment"):
        labels = {"participant": "payment", "step": step, "kind": "do"}
        assert value(samples, "saga_actors_step_latency_seconds_count", **labels) == 1
        assert value(samples, "saga_actors_step_latency_seconds_sum", **labels) >= 0.1
        assert value(samples, "saga_actors_step_latency_seconds_bucket", le="0.05", **labels) == 0
        assert value(samples, "saga_actors_step_latency_seconds_bucket", le="+Inf", **labels) == 1
    completed = {"outcome": "completed"}
    assert value(samples, "saga_actors_saga_duration_seconds_count", **completed) == 1
    assert value(samples, "saga_actors_saga_duration_seconds_sum", **completed) >= 0.2
    assert value(samples, "saga_actors_saga_duration_seconds_bucket", le="0.1", **completed) == 0


@needs_client
def test_two_systems_in_one_process_each_serve_their_own_metrics():
    with (
        OrderSystem(stock={101: 10}, metrics_port=0) as first,
        OrderSystem(stock={101: 10}, metrics_port=0) as second,
    ):
        assert first.metrics_port != second.metrics_port
        for i in range(3):
            assert first.place_order(make_request(f"a-{i}", [(101, 1)]), timeout=10)
        assert second.place_order(make_request("b-0", [(101, 1)]), timeout=10)
        wait_until(lambda: value(scrape(first.metrics_port), "saga_actors_orders_confirmed_total") == 3)
        wait_until(lambda: value(scrape(second.metrics_port), "saga_actors_orders_confirmed_total") == 1)
        assert value(scrape(second.metrics_port), "saga_actors_orders_placed_total") == 1
    # Nothing was put in prometheus_client's process-wide registry.
    import prometheus_client

    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "saga_actors" not in default


@needs_client
def test_the_endpoint_is_gone_after_stop_and_back_after_start():
    system = OrderSystem(stock={101: 5}, metrics_port=0)
    assert system.metrics_port is None  # not started
    system.start()
    try:
        port = system.metrics_port
        assert value(scrape(port), "saga_actors_orders_placed_total") == 0
        assert system.place_order(make_request("o-1"), timeout=10)
    finally:
        system.stop()
    assert system.metrics_port is None
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    with system:  # started again: served again, the counters carry on
        assert system.metrics_port is not None
        assert value(scrape(system.metrics_port), "saga_actors_orders_placed_total") == 1
    # stop() released the port: another system can listen on it.
    with OrderSystem(metrics_port=port) as other:
        assert other.metrics_port == port
        assert value(scrape(port), "saga_actors_orders_placed_total") == 0


@needs_client
def test_a_port_in_use_fails_start_and_leaves_nothing_running():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        system = OrderSystem(metrics_port=taken.getsockname()[1])
        with pytest.raises(OSError):
            system.start()
        assert not system.running and system.metrics_port is None


@needs_client
@pytest.mark.parametrize("port", [-1, 65536, True, "9100", 1.5])
def test_a_bad_port_is_refused(port):
    with pytest.raises(ValueError, match="metrics_port"):
        OrderSystem(metrics_port=port)


@needs_client
def test_a_bad_host_is_refused():
    with pytest.raises(ValueError, match="metrics_host"):
        OrderSystem(metrics_port=0, metrics_host="")


def test_without_prometheus_client_the_endpoint_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # `import prometheus_client` fails
    with pytest.raises(ImportError, match=r"prometheus_client.*pip install 'saga-actors\[metrics\]'"):
        OrderSystem(metrics_port=0)
    # Without an endpoint nothing needs it: the counters and histograms are still kept.
    with OrderSystem(stock={101: 5}) as system:
        assert system.place_order(make_request("o-1"), timeout=10)
        assert system.metrics()["orders_placed"] == 1
        wait_until(lambda: system.histograms()["saga_duration_seconds"], what="the saga's duration")
        assert system.metrics_port is None


def test_the_engine_does_not_import_prometheus_client():
    code = (
        "import sys; from saga_actors import OrderSystem; OrderSystem(); "
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- Metrics on its own ---


def test_histogram_buckets_are_cumulative_and_bounds_inclusive():
    metrics = Metrics(histograms={"latency_seconds": ("step",)}, labelled={}, buckets=(0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 0.5, 2.0):
        metrics.observe("latency_seconds", seconds, ("a",))
    metrics.observe("latency_seconds", 0.2, ("b",))
    a, b = metrics.histograms()["latency_seconds"]
    assert a.labels == {"step": "a"} and a.count == 5 and a.sum == pytest.approx(2.565)
    assert a.buckets == ((0.01, 2), (0.1, 3), (1.0, 4), (math.inf, 5))
    assert b.buckets == ((0.01, 0), (0.1, 0), (1.0, 1), (math.inf, 1))


def test_labels_are_checked_once_per_series():
    metrics = Metrics(("retries",))
    with pytest.raises(KeyError):
        metrics.observe("undeclared_seconds", 1.0)
    with pytest.raises(ValueError, match="labels"):
        metrics.observe("step_latency_seconds", 1.0, ("payment",))
    with pytest.raises(ValueError, match="labels"):
        metrics.count("step_retries", ("payment", "capture_payment"))
    metrics.count("step_retries", ("payment", "capture_payment", "do"), 2)
    assert metrics.labelled()["step_retries"] == {("payment", "capture_payment", "do"): 2}
    assert metrics.snapshot() == {"retries": 0}  # labelled series stay out of the counters' dict


def test_a_saga_duration_counts_from_its_first_start():
    metrics = Metrics()
    metrics.saga_began("s")
    metrics.saga_began("s")  # a restart does not restart the clock
    metrics.saga_ended("s", "completed")
    metrics.saga_ended("recovered", "aborted")  # began in another process: not observed
    (series,) = metrics.histograms()["saga_duration_seconds"]
    assert series.labels == {"outcome": "completed"} and series.count == 1


@needs_client
def test_any_saga_runtime_can_serve_its_metrics():
    from saga_actors.examples.trip import TripRequest, trip_runtime

    runtime = trip_runtime(metrics_port=0)
    with runtime:
        port = runtime.metrics_port
        assert port
        assert runtime.run("trip-1", TripRequest("Ada", "LH123", "Adlon", "compact"), timeout=10).committed
        samples = wait_until(
            lambda: (
                (s := scrape(port))
                and value(s, "saga_actors_saga_duration_seconds_count", outcome="completed") == 1
                and s
            ),
            what="the trip's duration",
        )
    assert runtime.metrics_port is None
    for participant in ("flights", "hotels", "cars"):
        assert total(samples, "saga_actors_step_latency_seconds_count", participant=participant) == 2
