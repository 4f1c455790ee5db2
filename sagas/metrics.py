"""Thread-safe counters and latency histograms shared by every actor of one system.

Recording is cheap and needs no third-party library: a counter is one
increment and a histogram observation one bucket increment and one addition,
each under a short, rarely contended lock. An exporter (see
`sagas.prometheus`) reads them when it is scraped.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_BUCKETS",
    "ENGINE_HISTOGRAMS",
    "ENGINE_LABELLED",
    "GAUGES",
    "SAGA_DURATION",
    "STEP_COMPENSATIONS",
    "STEP_LATENCY",
    "STEP_RETRIES",
    "HistogramData",
    "Metrics",
]

# Upper bounds of the latency buckets, in seconds (an implicit last one is +inf): from
# half a millisecond (a step on an idle machine) to a minute (a saga retrying for long).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# What the saga engine records (`sagas.host`), with the names of each series' labels.
SAGA_DURATION = "saga_duration_seconds"  # a saga's start to its durable end
STEP_LATENCY = "step_latency_seconds"  # a request sent to its reply
STEP_RETRIES = "step_retries"  # attempts scheduled again after a failure or a timeout
STEP_COMPENSATIONS = "step_compensations"  # compensations decided on a rollback
ENGINE_HISTOGRAMS: Mapping[str, tuple[str, ...]] = {
    SAGA_DURATION: ("outcome",),
    STEP_LATENCY: ("participant", "step", "kind"),
}
ENGINE_LABELLED: Mapping[str, tuple[str, ...]] = {
    STEP_RETRIES: ("participant", "step", "kind"),
    STEP_COMPENSATIONS: ("participant", "step"),
}
# Counters that go down as well as up (an exporter shows them as gauges).
GAUGES = frozenset({"sagas_stuck", "service_requests_in_flight"})


@dataclass(frozen=True, slots=True)
class HistogramData:
    """One labelled series of a histogram, as plain data.

    labels: label name -> value (empty for a series without labels).
    count: observations; sum: their total (seconds, for a latency).
    buckets: (upper bound, observations <= it), cumulative, bounds increasing;
        the last bound is `math.inf` and its count equals `count`.
    """

    labels: Mapping[str, str]
    count: int
    sum: float
    buckets: tuple[tuple[float, int], ...]


class _Series:
    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0


class Metrics:
    """Counters, labelled counters and histograms; every method is thread-safe.

    names: counters that exist (at 0) before their first increment.
    histograms, labelled: series name -> its label names (the values are
        given, in that order, to `observe` and `count`).
    buckets: histogram bucket upper bounds, increasing (seconds for a latency).
    """

    def __init__(
        self,
        names: tuple[str, ...] = (),
        *,
        histograms: Mapping[str, tuple[str, ...]] = ENGINE_HISTOGRAMS,
        labelled: Mapping[str, tuple[str, ...]] = ENGINE_LABELLED,
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"buckets must be distinct and increasing, got {buckets!r}")
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(names, 0))
        self._histogram_labels = dict(histograms)
        self._labelled_labels = dict(labelled)
        self._bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, tuple[str, ...]], _Series] = {}
        self._labelled: Counter[tuple[str, tuple[str, ...]]] = Counter()
        self._began: dict[str, float] = {}  # saga id -> time.monotonic() at its start

    # --- recording (any thread) ---

    def increment(self, name: str, amount: int = 1) -> None:
        """Add `amount` (may be negative, for a gauge) to the counter `name`."""
        with self._lock:
            self._counts[name] += amount

    def count(self, name: str, labels: tuple[str, ...], amount: int = 1) -> None:
        """Add `amount` to the series `labels` (values, in the order declared) of the labelled
        counter `name`. Raises KeyError for an undeclared name, ValueError for wrong labels."""
        key = (name, labels)
        with self._lock:
            if key not in self._labelled:
                self._check_labels(self._labelled_labels, name, labels)
            self._labelled[key] += amount

    def observe(self, name: str, value: float, labels: tuple[str, ...] = ()) -> None:
        """Record one observation (seconds, for a latency) in the series `labels` of the
        histogram `name`. Raises KeyError for an undeclared name, ValueError for wrong labels."""
        index = bisect_left(self._bounds, value)  # the first bucket whose bound is >= value
        key = (name, labels)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                self._check_labels(self._histogram_labels, name, labels)
                series = self._series[key] = _Series(len(self._bounds) + 1)
            series.counts[index] += 1
            series.total += value

    def saga_began(self, saga_id: str) -> None:
        """A saga started in this process: its duration counts from now (the first call only)."""
        now = time.monotonic()
        with self._lock:
            self._began.setdefault(saga_id, now)

    def saga_ended(self, saga_id: str, outcome: str) -> None:
        """A saga's end is durable: observe its duration under `outcome` (e.g. "completed",
        "aborted"), if it began in this process (one resumed from a journal written by another
        process has no known start, and is not observed)."""
        now = time.monotonic()
        with self._lock:
            began = self._began.pop(saga_id, None)
        if began is not None:
            self.observe(SAGA_DURATION, now - began, (outcome,))

    # --- reading (any thread) ---

    def snapshot(self) -> dict[str, int]:
        """The counters without labels: `{name: value}`."""
        with self._lock:
            return dict(self._counts)

    def labelled(self) -> dict[str, dict[tuple[str, ...], int]]:
        """The labelled counters: `{name: {label values: value}}`, every declared name present."""
        result: dict[str, dict[tuple[str, ...], int]] = {name: {} for name in self._labelled_labels}
        with self._lock:
            for (name, labels), value in self._labelled.items():
                result[name][labels] = value
        return result

    def label_names(self, name: str) -> tuple[str, ...]:
        """The label names of the histogram or labelled counter `name` (KeyError if undeclared)."""
        if name in self._histogram_labels:
            return self._histogram_labels[name]
        return self._labelled_labels[name]

    def histograms(self) -> dict[str, list[HistogramData]]:
        """Every declared histogram: `{name: [one HistogramData per labelled series]}`, series in
        the order they were first observed; a histogram never observed has an empty list."""
        with self._lock:
            copied = [(key, list(s.counts), s.total) for key, s in self._series.items()]
        result: dict[str, list[HistogramData]] = {name: [] for name in self._histogram_labels}
        bounds = (*self._bounds, float("inf"))
        for (name, labels), counts, total in copied:
            cumulative, running = [], 0
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                cumulative.append((bound, running))
            names = self._histogram_labels[name]
            result[name].append(
                HistogramData(dict(zip(names, labels, strict=True)), running, total, tuple(cumulative))
            )
        return result

    @staticmethod
    def _check_labels(declared: Mapping[str, tuple[str, ...]], name: str, labels: tuple[str, ...]) -> None:
        names = declared[name]
        if len(labels) != len(names) or not all(isinstance(value, str) for value in labels):
            raise ValueError(f"{name}: labels must be {len(names)} strings {names}, got {labels!r}")
