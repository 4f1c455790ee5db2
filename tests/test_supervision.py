"""Supervision with small test actors: strategies, restart types, intensity,
escalation, backoff, shutdown order, stable addresses."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pykka
import pytest

from saga_actors.supervision import (
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    PERMANENT,
    REST_FOR_ONE,
    TEMPORARY,
    TRANSIENT,
    Address,
    Backoff,
    ChildSpec,
    Escalated,
    Intensity,
    Monitored,
    ResourceActor,
    ResourceFailed,
    StartChild,
    Timer,
    WhichChildren,
    kill,
    start_monitored,
    start_supervisor,
)

QUICK = Backoff(min_backoff=0.001, max_backoff=0.002, random_factor=0.0)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def add(self, what: str, name: str) -> None:
        with self.lock:
            self.lines.append((what, name, time.monotonic()))

    def of(self, what: str) -> list[str]:
        with self.lock:
            return [n for w, n, _ in self.lines if w == what]

    def times(self, what: str, name: str) -> list[float]:
        with self.lock:
            return [t for w, n, t in self.lines if w == what and n == name]


class Worker(Monitored, pykka.ThreadingActor):
    def __init__(self, name: str, log: Log) -> None:
        super().__init__()
        self.name, self.log = name, log

    def on_start(self) -> None:
        self.log.add("start", self.name)
        super().on_start()

    def on_stop(self) -> None:
        self.log.add("stop", self.name)
        super().on_stop()

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed")
        if message == "finish":
            self.stop()
            return None
        if message == "ping":
            return self.name
        return super().on_receive(message)


def spec(name: str, log: Log, restart: str = PERMANENT) -> ChildSpec:
    return ChildSpec(name, lambda: Worker.start(name, log), restart=restart)


def eventually(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


@pytest.fixture
def log():
    return Log()


@pytest.fixture
def supervisors():
    started: list[pykka.ActorRef[Any]] = []
    yield started
    for ref in started:
        if ref.is_alive():
            ref.stop()


def _started(ref, log, names, restart=PERMANENT):
    addrs = {}
    for name in names:
        addrs[name] = ref.ask(StartChild(spec(name, log, restart)))
    return addrs


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [
        (ONE_FOR_ONE, ["b"]),
        (ONE_FOR_ALL, ["a", "b", "c"]),
        (REST_FOR_ONE, ["b", "c"]),
    ],
)
def test_strategies_restart_the_right_children(supervisors, log, strategy, restarted):
    ref = start_supervisor(name="sup", strategy=strategy, backoff=QUICK)
    supervisors.append(ref)
    addrs = _started(ref, log, ["a", "b", "c"])
    assert log.of("start") == ["a", "b", "c"]
    addrs["b"].tell("crash")
    eventually(lambda: len(log.of("start")) == 3 + len(restarted))
    eventually(lambda: all(alive for _, alive, _ in ref.ask(WhichChildren())))
    assert log.of("start")[3:] == restarted
    # deliberately stopped siblings stop in reverse order
    assert log.of("stop") == [n for n in reversed(restarted) if n != "b"]
    for name in ("a", "b", "c"):
        assert addrs[name].ask("ping", timeout=1) == name  # the address reaches the new incarnation


@pytest.mark.parametrize(
    ("restart", "after_finish", "after_crash"),
    [
        (PERMANENT, True, True),
        (TRANSIENT, False, True),
        (TEMPORARY, False, False),
    ],
)
def test_restart_types(supervisors, log, restart, after_finish, after_crash):
    ref = start_supervisor(name="sup", backoff=QUICK)
    supervisors.append(ref)
    finisher = ref.ask(StartChild(spec("finisher", log, restart)))
    crasher = ref.ask(StartChild(spec("crasher", log, restart)))
    finisher.tell("finish")
    crasher.tell("crash")
    time.sleep(0.1)
    assert (log.of("start").count("finisher") == 2) is after_finish
    assert (log.of("start").count("crasher") == 2) is after_crash
    alive = {name for name, is_alive, _ in ref.ask(WhichChildren()) if is_alive}
    assert alive == {n for n, again in (("finisher", after_finish), ("crasher", after_crash)) if again}


def test_intensity_exceeded_stops_children_and_escalates(log):
    exits: list[BaseException | None] = []
    done = threading.Event()

    def on_exit(urn: str, error: BaseException | None) -> None:
        exits.append(error)
        done.set()

    ref = start_supervisor(name="sup", backoff=QUICK, intensity=Intensity(2, 5.0), on_exit=on_exit)
    worker = ref.ask(StartChild(spec("w", log)))
    ref.ask(StartChild(spec("bystander", log)))
    for expected_starts in (3, 4):
        worker.tell("crash")
        eventually(lambda n=expected_starts: len(log.of("start")) == n)
        eventually(worker.is_alive)
    worker.tell("crash")  # third restart within 5 s: too many
    assert done.wait(3)
    assert isinstance(exits[0], Escalated) and "more than 2 restarts" in str(exits[0])
    assert not ref.is_alive()
    assert "bystander" in log.of("stop")  # children were stopped, not left running


def test_escalation_goes_up_the_tree_and_the_parent_restarts_the_subtree(supervisors, log):
    inner_specs = [spec("w", log)]
    inner = ChildSpec(
        "inner",
        lambda: start_supervisor(
            name="inner", children=inner_specs, backoff=QUICK, intensity=Intensity(0, 5.0)
        ),
    )
    root_exits: list[Any] = []
    root = start_supervisor(
        name="root",
        children=[inner],
        backoff=QUICK,
        intensity=Intensity(5, 5.0),
        on_exit=lambda u, e: root_exits.append(e),
    )
    supervisors.append(root)
    assert log.of("start") == ["w"]
    # The inner supervisor's child: reach it through the registry of live Workers.
    worker = next(r for r in pykka.ActorRegistry.get_by_class(Worker) if r.is_alive())
    worker.tell("crash")  # inner allows 0 restarts: it escalates; root restarts "inner"
    eventually(lambda: log.of("start").count("w") == 2)
    assert root.is_alive() and root_exits == []
    assert [(n, alive, restarts) for n, alive, restarts in root.ask(WhichChildren())] == [("inner", True, 1)]


def test_backoff_grows_exponentially_and_resets_after_a_quiet_period(supervisors, log):
    backoff = Backoff(min_backoff=0.04, max_backoff=0.16, random_factor=0.0, reset_after=0.5)
    ref = start_supervisor(name="sup", backoff=backoff, intensity=Intensity(50, 10.0))
    supervisors.append(ref)
    worker = ref.ask(StartChild(spec("w", log)))
    crashed: list[float] = []
    for n in range(1, 5):
        crashed.append(time.monotonic())
        worker.tell("crash")
        eventually(lambda n=n: len(log.times("start", "w")) == n + 1)
        eventually(worker.is_alive)
    starts = log.times("start", "w")[1:]
    gaps = [s - c for s, c in zip(starts, crashed, strict=False)]
    for gap, expected in zip(gaps, (0.04, 0.08, 0.16, 0.16), strict=False):
        assert expected * 0.9 <= gap < expected + 0.15, gaps
    time.sleep(0.55)  # quiet period: the next restart is quick again
    before = time.monotonic()
    worker.tell("crash")
    eventually(lambda: len(log.times("start", "w")) == 6)
    assert log.times("start", "w")[-1] - before < 0.04 + 0.15


def test_supervisor_keeps_serving_during_a_backoff(supervisors, log):
    ref = start_supervisor(name="sup", backoff=Backoff(min_backoff=1.0, max_backoff=1.0, random_factor=0))
    supervisors.append(ref)
    worker = ref.ask(StartChild(spec("w", log)))
    worker.tell("crash")
    eventually(lambda: not worker.is_alive())
    started = time.monotonic()
    assert ref.ask(WhichChildren(), timeout=1) == [("w", False, 0)]
    assert time.monotonic() - started < 0.5
    with pytest.raises(pykka.ActorDeadError):
        worker.tell("ping")  # between incarnations: a transient failure for the sender


def test_children_stop_in_reverse_start_order(log):
    ref = start_supervisor(name="sup", children=[spec(n, log) for n in "abcd"])
    assert log.of("start") == list("abcd")
    ref.stop()
    assert log.of("stop") == list("dcba")


def test_a_child_that_cannot_start_fails_the_start_and_leaves_nothing_running(log):
    def broken():
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        start_supervisor(name="sup", children=[spec("a", log), ChildSpec("b", broken), spec("c", log)])
    assert log.of("start") == ["a"] and log.of("stop") == ["a"]


def test_a_failing_restart_counts_toward_intensity(log):
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) > 1:
            raise OSError("cannot start again")
        return Worker.start("f", log)

    exits: list[Any] = []
    ref = start_supervisor(
        name="sup",
        children=[ChildSpec("f", flaky)],
        backoff=QUICK,
        intensity=Intensity(3, 5.0),
        on_exit=lambda u, e: exits.append(e),
    )
    kill(next(r for r in pykka.ActorRegistry.get_by_class(Worker) if r.is_alive()))
    eventually(lambda: not ref.is_alive())
    assert len(attempts) == 4  # the first start, then 3 failed restarts allowed by intensity
    assert isinstance(exits[0], Escalated)


def test_kill_makes_a_monitored_actor_exit_abnormally(supervisors, log):
    ref = start_supervisor(name="sup", backoff=QUICK)
    supervisors.append(ref)
    worker = ref.ask(StartChild(spec("w", log, TRANSIENT)))
    kill(worker)
    eventually(lambda: log.of("start").count("w") == 2)


# --- a resource that fails on its own: the timer ---


class Poison(BaseException):
    """A delivery that raises this kills the timer's thread (it is no Exception)."""


class Poisoned:
    def tell(self, message: object) -> None:
        raise Poison(message)


class Inbox:
    def __init__(self) -> None:
        self.messages: queue.Queue[object] = queue.Queue()

    def tell(self, message: object) -> None:
        self.messages.put(message)


def test_a_resource_that_reports_a_failure_makes_its_actor_exit_abnormally():
    exits: queue.Queue[BaseException | None] = queue.Queue()
    reports: list[Any] = []
    closed = threading.Event()
    ref = start_monitored(
        lambda: ResourceActor.start("res", lambda: None, closed.set, watch=reports.append),
        lambda urn, error: exits.put(error),
    )
    assert len(reports) == 1  # watch was called as the actor was created
    cause = OSError("disk gone")
    threading.Thread(target=reports[0], args=(cause,)).start()  # from any thread
    error = exits.get(timeout=2)
    assert isinstance(error, ResourceFailed)
    assert error.__cause__ is cause
    assert closed.is_set()
    assert not ref.is_alive()
    reports[0](OSError("late"))  # to an actor that exited: ignored


def test_a_watched_timer_stopped_normally_reports_a_normal_exit():
    exits: queue.Queue[BaseException | None] = queue.Queue()
    timer = Timer("watched")
    ref = start_monitored(
        lambda: ResourceActor.start("timer", timer.start, timer.stop, watch=timer.set_on_died),
        lambda urn, error: exits.put(error),
    )
    assert timer.is_running()
    ref.stop()
    assert exits.get(timeout=2) is None
    assert not timer.is_running()


def test_a_timer_whose_thread_dies_is_restarted_by_its_supervisor(supervisors, log):
    timer = Timer("supervised-timer")
    restarted: queue.Queue[str] = queue.Queue()
    ref = start_supervisor(
        name="root",
        children=[
            ChildSpec(
                "timer",
                lambda: ResourceActor.start("timer", timer.start, timer.stop, watch=timer.set_on_died),
            ),
            spec("user", log),
        ],
        strategy=REST_FOR_ONE,
        backoff=QUICK,
        on_restart=restarted.put,
    )
    supervisors.append(ref)
    inbox = Inbox()
    timer.schedule(0.0, inbox, "before")
    assert inbox.messages.get(timeout=2) == "before"

    timer.schedule(0.0, Poisoned(), "die")
    assert restarted.get(timeout=3) == "timer"
    assert restarted.get(timeout=3) == "user"  # rest_for_one: what uses the timer restarts too
    assert timer.is_running()
    timer.schedule(0.0, inbox, "after")
    assert inbox.messages.get(timeout=2) == "after"
    assert ref.ask(WhichChildren()) == [("timer", True, 1), ("user", True, 1)]
    assert log.of("start") == ["user", "user"]


class Mailbox(Monitored, pykka.ThreadingActor):
    """Records what it handles; "hold" blocks it until released, "crash" fails it."""

    def __init__(self, handled: queue.Queue[str], release: threading.Event) -> None:
        super().__init__()
        self.handled, self.release = handled, release

    def on_receive(self, message: Any) -> Any:
        if message == "hold":
            self.release.wait(10)
        elif message == "crash":
            raise RuntimeError("one bad message")
        elif isinstance(message, str):
            self.handled.put(message)
        else:
            return super().on_receive(message)
        return None


def test_one_bad_message_does_not_lose_the_messages_queued_behind_it():
    handled: queue.Queue[str] = queue.Queue()
    release = threading.Event()
    address = Address("m")
    supervisor = start_supervisor(
        name="mailbox",
        children=[ChildSpec("m", lambda: Mailbox.start(handled, release), address=address)],
        strategy=ONE_FOR_ONE,
        intensity=Intensity(5, 5.0),
        backoff=QUICK,
    )
    try:
        address.tell("hold")
        for message in ("crash", "a", "b", "c"):
            address.tell(message)  # queued behind "hold"
        release.set()
        got = [handled.get(timeout=5) for _ in range(3)]
        assert got == ["a", "b", "c"]  # handled by the next incarnation, in order; "crash" not again
        address.tell("d")
        assert handled.get(timeout=5) == "d"
    finally:
        supervisor.stop(timeout=10)


def test_a_restart_window_counts_only_the_restarts_within_the_intensity_period():
    from saga_actors.supervision import RestartWindow

    window = RestartWindow(Intensity(max_restarts=2, within_seconds=10.0))
    assert [window.exceeded(t) for t in (0.0, 1.0, 2.0)] == [False, False, True]  # 3 in 10 s
    fresh = RestartWindow(Intensity(max_restarts=2, within_seconds=10.0))
    assert [fresh.exceeded(t) for t in (0.0, 11.0, 22.0, 23.0)] == [False, False, False, False]
