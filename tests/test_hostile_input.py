"""Hostile input: whatever a caller passes, validation answers an order or InvalidOrder.

Never another exception, never a card number (or any run of 12+ digits) in a
message, never a message that grows with the input, and the caller's decimal
context changes nothing. Also the ranges of RetryPolicy and FaultPlan.
"""

from __future__ import annotations

import copy
import decimal
import itertools
import math
import random
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_actors.actors import OrderSystem
from saga_actors.actors.errors import InvalidOrder
from saga_actors.actors.validation import (
    DIGITS_MASK,
    MAX_ID,
    MAX_PROBLEMS,
    MAX_QUANTITY,
    MAX_UNEXPECTED_FIELDS,
    OrderRequest,
    _show,
    validate_order,
)
from saga_actors.sagas.policy import RetryPolicy
from saga_actors.sagas.simulation import FaultPlan
from tests.conftest import APPROVED, OTHER_VALID, make_request

CARD = "5105105105105100"  # Luhn-valid
LONG_DIGIT_RUN = re.compile(r"\d(?:[\s-]*\d){11,}")  # Unicode digits too
MAX_MESSAGE = 20_000  # characters: a message never grows with the input

PATHS = [
    "user_id",
    "order_id",
    "items",
    "items.0",
    "items.0.product_id",
    "items.0.quantity",
    "payment_info",
    "payment_info.card_number",
    "payment_info.expiry",
    "payment_info.amount",
    "payment_info.currency",
    "payment_info.cvv",
    "extra",
    "items.0.extra",
    "payment_info.extra",
]


def _with(path: str, value: object) -> dict[str, Any]:
    request = copy.deepcopy(make_request())
    *parents, last = path.split(".")
    target: Any = request
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    target[int(last) if last.isdigit() else last] = value
    return request


def _nested(depth: int, leaf: object = 1) -> object:
    value: object = leaf
    for _ in range(depth):
        value = [value]
    return {"a": value}


def _refusal(request: object) -> InvalidOrder:
    with pytest.raises(InvalidOrder) as raised:
        validate_order(request)
    _assert_safe(raised.value)
    return raised.value


def _assert_safe(error: InvalidOrder) -> None:
    message = str(error)
    assert len(message) <= MAX_MESSAGE
    assert len(error.problems) <= MAX_PROBLEMS
    for problem in error.problems:
        assert isinstance(problem, str)
        assert not LONG_DIGIT_RUN.search(problem), problem
    for card in (CARD, APPROVED, OTHER_VALID):
        assert card not in re.sub(r"[\s-]", "", message)


def _outcome(request: object) -> OrderRequest | InvalidOrder:
    """The order, or the InvalidOrder; any other exception fails the test."""
    try:
        order = validate_order(request)
    except InvalidOrder as error:
        _assert_safe(error)
        assert not any("could not be read" in p for p in error.problems), error.problems
        return error
    assert type(order.user_id) is int and type(order.order_id) is str
    assert all(type(i.product_id) is int and type(i.quantity) is int for i in order.items)
    assert type(order.amount) is Decimal and type(order.currency) is str
    assert re.fullmatch("[0-9a-f]{64}", order.fingerprint())
    return order


# --- 1. numbers of any size ---------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "value", [10**5000, -(10**5000), 2**63, 2**64], ids=["10e5000", "-10e5000", "2e63", "2e64"]
)
def test_a_huge_int_anywhere_is_refused_without_converting_it(path, value):
    if path == "payment_info.amount" and value < 0:
        fragment = "payment_info.amount: must be positive"
    else:
        fragment = path.replace(".0", "[0]")
    error = _refusal(_with(path, value))
    assert any(p.startswith(fragment) for p in error.problems), error.problems


def test_a_huge_int_as_a_field_name_is_masked():
    error = _refusal(_with(str(10**40), 1) | {10**5000: 1})
    assert f"{DIGITS_MASK}: unexpected field" in error.problems


def test_the_largest_ids_pass_and_fingerprint():
    order = validate_order(make_request(user_id=MAX_ID, items=[(MAX_ID, MAX_QUANTITY), (0, 1)]))
    assert order.user_id == MAX_ID
    assert len(order.fingerprint()) == 64


# --- 2. deep nesting and huge strings ------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_nesting_anywhere_is_refused_by_type_name(path, depth):
    error = _refusal(_with(path, _nested(depth)))
    assert "RecursionError" not in str(error)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_nesting_as_the_items_or_the_request(depth):
    nested = _nested(depth)["a"]  # type: ignore[index]
    assert "items[0]: must be a mapping, got list" in _refusal(_with("items", nested)).problems
    assert _refusal(nested).problems == ["request: must be a mapping, got list"]
    deep_dict: dict[str, Any] = {}
    for _ in range(depth):
        deep_dict = {"payment_info": deep_dict}
    _refusal(deep_dict)


def test_show_never_recurses_nor_copies_much():
    cycle: list[object] = []
    cycle.append(cycle)
    assert _show(cycle) == "list"
    assert _show(_nested(100_000)) == "dict"
    assert _show(object()) == "object"
    assert len(_show("x" * 10_000_000)) < 50
    assert _show(10**5000) == DIGITS_MASK
    assert _show(Decimal("9" * 5000)) == DIGITS_MASK
    assert _show(123) == "123" and _show(-1.5) == "-1.5" and _show("ab") == "'ab'"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("char", ["x", "4", "\u0664"])
def test_a_ten_megabyte_string_is_not_copied_into_the_message(path, char):
    big = char * 10_000_000
    error = _refusal(_with(path, big))
    assert len(str(error)) < 2_000


def test_a_ten_megabyte_field_name_is_not_copied_into_the_message():
    error = _refusal(_with("x" * 10_000_000, 1))
    assert len(str(error)) < 2_000


def test_problems_are_bounded_in_number():
    request = make_request() | {f"field{i}": i for i in range(10_000)}
    error = _refusal(request)
    assert sum(p.endswith(": unexpected field") for p in error.problems) == MAX_UNEXPECTED_FIELDS
    assert f"request: {10_000 - MAX_UNEXPECTED_FIELDS} more unexpected fields" in error.problems

    many = make_request(items=[(i, 1) for i in range(100)])
    for item in many["items"]:
        item.update({f"x{i}": i for i in range(5)})
    error = _refusal(many)
    assert len(error.problems) == MAX_PROBLEMS
    assert error.problems[-1] == f"request: {100 * 5 - (MAX_PROBLEMS - 1)} more problems not listed"


# --- 3. ASCII digits only ---------------------------------------------------------

# (The table of tests/test_validation.py covers each field; here, whitespace.)


@pytest.mark.parametrize(
    ("amount", "accepted"),
    [
        (" 19.98 ", True),
        ("\t\r\n\f\v19.98", True),
        ("\u00a019.98", False),  # no-break space
        ("19.98\u2003", False),  # em space
        ("\u300019.98", False),  # ideographic space
        ("1 000", False),
        ("19.98\x00", False),
    ],
)
def test_only_ascii_whitespace_around_an_amount_is_ignored(amount, accepted):
    outcome = _outcome(make_request(amount=amount))
    assert isinstance(outcome, OrderRequest) is accepted


# --- 4. card numbers are never echoed ----------------------------------------------


def test_a_card_number_in_the_expiry_is_not_echoed():
    request = make_request(card="12/30", expiry=CARD)
    assert _refusal(request).problems == [
        "payment_info.card_number: must be 12 to 19 digits",
        f"payment_info.expiry: must be MM/YY, got {DIGITS_MASK}",
    ]


CARD_SHAPES = [
    CARD,
    "5105 1051 0510 5100",
    "5105-1051-0510-5100",
    " 5105105105105100 ",
    "card 5105105105105100 please",
    "\u0665\u0661\u0660\u0665" * 4,  # Arabic-Indic digits
    int(CARD),
    float(CARD),
    Decimal(CARD),
    -int(CARD),
    [CARD],
    {CARD: CARD},
]


@pytest.mark.parametrize("path", [*PATHS, CARD, f"items.0.{CARD}", f"payment_info.{CARD}"])
@pytest.mark.parametrize("shape", CARD_SHAPES, ids=[f"shape{i}" for i in range(len(CARD_SHAPES))])
def test_a_card_number_is_never_echoed_wherever_it_is_put(path, shape):
    # A card-shaped user_id or product_id is a valid id: break the order elsewhere.
    request = _with(path, shape)
    request["payment_info"] = (
        request["payment_info"] | {"card_number": "1"} if isinstance(request["payment_info"], dict) else 1
    )
    _refusal(request)


def test_cvv_and_card_values_are_never_shown():
    for value in ("99999", "abc", "\u0661\u0662\u0663", "4242424242424241", "12345 67890 12"):
        message = str(_refusal(make_request(card=value, cvv=value)))
        assert value not in message


def test_an_object_named_like_a_card_number_is_masked():
    shady = type(CARD, (), {})()
    assert _refusal(_with("user_id", shady)).problems == [
        "user_id: must be a positive integer below 2**63, got object"
    ]


# --- 5. the caller's decimal context changes nothing ---------------------------------

AMOUNTS = ["19.98", "0.01", "1000000000.00", "1e2", 19.98, 20, Decimal("5.5"), "  5 "]
BAD_AMOUNTS = ["1.005", "NaN", "1e40", "-1", "abc", "1e999999999999999999999", Decimal("sNaN"), 0.1 + 0.2]


def _caller_contexts() -> Iterator[decimal.Context]:
    yield decimal.Context(prec=3)
    yield decimal.Context(prec=1, rounding=decimal.ROUND_DOWN, Emax=2, Emin=-2)
    yield decimal.Context(traps=[])
    yield decimal.Context(traps=list(decimal.getcontext().flags), capitals=0)  # every trap on


@pytest.mark.parametrize("context", list(_caller_contexts()), ids=["prec3", "tiny", "no-traps", "all-traps"])
def test_the_callers_decimal_context_changes_nothing(context):
    expected = [_outcome(make_request(amount=a)) for a in AMOUNTS + BAD_AMOUNTS]
    with decimal.localcontext(context):
        got = [_outcome(make_request(amount=a)) for a in AMOUNTS + BAD_AMOUNTS]
        fingerprints = [o.fingerprint() for o in got if isinstance(o, OrderRequest)]
    assert [type(o) for o in got] == [OrderRequest] * len(AMOUNTS) + [InvalidOrder] * len(BAD_AMOUNTS)
    for before, after in zip(expected, got, strict=True):
        if isinstance(before, OrderRequest):
            assert isinstance(after, OrderRequest) and after == before
        else:
            assert isinstance(after, InvalidOrder) and after.problems == before.problems
    assert fingerprints == [o.fingerprint() for o in expected if isinstance(o, OrderRequest)]


def test_fingerprints_are_unchanged_so_journals_stay_valid():
    # Computed with the implementation before these changes: a journal keeps them.
    assert (
        validate_order(make_request()).fingerprint()
        == "e512b560bbb99f1d6e3f591ce4cbaf4044b8356b695ae4d9fdc3360689922eb8"
    )
    other = make_request(
        "o2",
        [(7, 1), (1, 3)],
        amount=1000000000,
        expiry="01/29",
        user_id=MAX_ID,
        currency="EUR",
        card="5555 5555 5555 4444",
    )
    assert (
        validate_order(other).fingerprint()
        == "587d03593f05221093f2ac98eec36f99f31415a7e58dca0a573e78e3a73c2acf"
    )


# --- hostile objects ---------------------------------------------------------------------


class _Raising(Mapping[Any, Any]):
    def __getitem__(self, key: Any) -> Any:
        raise RuntimeError("no")

    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("no")

    def __len__(self) -> int:
        raise RuntimeError("no")


class _Endless(Mapping[Any, Any]):
    """Claims one key, iterates forever."""

    def __getitem__(self, key: Any) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        return itertools.count()

    def __len__(self) -> int:
        return 1


class _LyingList(list):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("no")

    def __len__(self) -> int:
        return 10**9


class _NastyInt(int):
    def __repr__(self) -> str:
        raise RuntimeError("no")

    __str__ = __repr__

    def __index__(self) -> int:
        raise RuntimeError("no")

    def __le__(self, other: object) -> bool:
        raise RuntimeError("no")


class _NastyStr(str):
    def __str__(self) -> str:
        raise RuntimeError("no")

    __repr__ = __str__


class _NastyFloat(float):
    def __repr__(self) -> str:
        raise RuntimeError("no")

    __str__ = __repr__


class _NastyDecimal(Decimal):
    def __str__(self) -> str:
        raise RuntimeError("no")

    __repr__ = __str__


class _EqRaises:
    def __hash__(self) -> int:
        return hash("user_id")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no")


def test_a_mapping_whose_methods_fail_is_refused_as_unreadable():
    assert _refusal(_Raising()).problems == ["request: could not be read (RuntimeError)"]
    assert _refusal(_with("payment_info", _Raising())).problems == [
        "request: could not be read (RuntimeError)"
    ]
    request = make_request()
    del request["user_id"]
    request[_EqRaises()] = 1
    _refusal(request)


def test_an_endless_mapping_ends():
    error = _refusal(_Endless())
    assert "request: 990+ more unexpected fields" in error.problems


def test_subclasses_of_builtins_are_read_as_the_builtins():
    request = _with("items", _LyingList([{"product_id": _NastyInt(7), "quantity": _NastyInt(2)}]))
    request["user_id"] = _NastyInt(42)
    request["order_id"] = _NastyStr("ord-1")
    request["payment_info"]["expiry"] = _NastyStr("12/30")
    request["payment_info"]["card_number"] = _NastyStr(APPROVED)
    for amount in (_NastyFloat(19.98), _NastyDecimal("19.98"), _NastyStr("19.98"), _NastyInt(19)):
        request["payment_info"]["amount"] = amount
        order = _outcome(request)
        assert isinstance(order, OrderRequest), order
        assert order.user_id == 42 and order.items[0].product_id == 7 and order.order_id == "ord-1"
    request["user_id"] = _NastyInt(-1)
    assert _refusal(request).problems == ["user_id: must be a positive integer below 2**63, got -1"]


# --- RetryPolicy and FaultPlan: documented ranges ------------------------------------------

_UP, _DOWN = math.inf, -math.inf


def _id(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return "huge-int"
    return f"{type(value).__name__}:{value!r}"


RETRY_ACCEPTED = [
    {"initial_interval": 5e-324},
    {"initial_interval": 86_400, "maximum_interval": 86_400},
    {"initial_interval": 86_400.0, "maximum_interval": 86_400.0},
    {"attempt_timeout": 5e-324},
    {"attempt_timeout": 86_400},
    {"backoff_coefficient": 1},
    {"backoff_coefficient": 100},
    {"backoff_coefficient": 100.0},
    {"maximum_attempts": 1},
    {"maximum_attempts": 10_000},
]

RETRY_REFUSED = [
    ("initial_interval", 0),
    ("initial_interval", -0.0),
    ("initial_interval", math.nextafter(86_400, _UP)),
    ("maximum_interval", 0),
    ("maximum_interval", math.nextafter(86_400, _UP)),
    ("attempt_timeout", 0.0),
    ("attempt_timeout", -5e-324),
    ("attempt_timeout", math.nextafter(86_400, _UP)),
    ("attempt_timeout", 1e10),
    ("attempt_timeout", math.nan),
    ("attempt_timeout", math.inf),
    ("attempt_timeout", True),
    ("attempt_timeout", "2"),
    ("attempt_timeout", None),
    ("attempt_timeout", Decimal("2")),
    ("attempt_timeout", 10**5000),
    ("backoff_coefficient", math.nextafter(1, _DOWN)),
    ("backoff_coefficient", math.nextafter(100, _UP)),
    ("backoff_coefficient", 101),
    ("backoff_coefficient", 1e300),
    ("backoff_coefficient", math.nan),
    ("backoff_coefficient", -math.inf),
    ("backoff_coefficient", True),
    ("maximum_attempts", 0),
    ("maximum_attempts", 10_001),
    ("maximum_attempts", 2.0),
    ("maximum_attempts", True),
    ("maximum_attempts", 10**5000),
]


@pytest.mark.parametrize("arguments", RETRY_ACCEPTED, ids=repr)
def test_retry_policy_accepts_its_range(arguments):
    RetryPolicy(**arguments)


@pytest.mark.parametrize(("name", "value"), RETRY_REFUSED, ids=[f"{n}={_id(v)}" for n, v in RETRY_REFUSED])
def test_retry_policy_refuses_outside_its_range(name, value):
    arguments: dict[str, Any] = {name: value}
    if name == "maximum_interval":
        arguments["initial_interval"] = 5e-324
    with pytest.raises(ValueError, match=name) as raised:
        RetryPolicy(**arguments)
    assert len(str(raised.value)) < 300


def test_retry_policy_names_every_problem_at_once():
    with pytest.raises(ValueError) as raised:
        RetryPolicy(
            initial_interval=1e10, backoff_coefficient=1e300, maximum_attempts=10**6, attempt_timeout=1e10
        )
    for name in ("initial_interval", "backoff_coefficient", "maximum_attempts", "attempt_timeout"):
        assert name in str(raised.value)


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(backoff_coefficient=100, initial_interval=86_400, maximum_interval=86_400),
        RetryPolicy(backoff_coefficient=100, initial_interval=5e-324, maximum_interval=86_400),
        RetryPolicy(
            backoff_coefficient=math.nextafter(1, 2), initial_interval=5e-324, maximum_interval=86_400
        ),
        RetryPolicy(backoff_coefficient=1, initial_interval=0.5, maximum_interval=0.5),
        RetryPolicy(),
    ],
    ids=["max", "tiny-to-max", "slow-growth", "flat", "default"],
)
def test_backoff_cannot_overflow(policy):
    attempts = [1, 2, 3, 10, 64, 65, 1_000, 10_000, 10**6, 10**18, 10**400]
    for rand in (0.0, 0.5, math.nextafter(1, 0)):
        delays = [policy.backoff(attempt, rand) for attempt in attempts]
        assert all(math.isfinite(d) and 0 <= d <= policy.maximum_interval for d in delays)
        assert delays == sorted(delays)
    assert policy.backoff(10**400, 1.0) == policy.maximum_interval


FAULTS_ACCEPTED = [
    {"failure_rate": 0},
    {"failure_rate": 1},
    {"failure_rate": 1.0},
    {"crash_rate": 1.0},
    {"failure_rate": 0.5, "crash_rate": 0.5},
    {"min_latency": 0, "max_latency": 0},
    {"min_latency": 3600, "max_latency": 3600},
    {"max_latency": 3600.0},
    {"seed": None},
    {"seed": 0},
    {"seed": 2**64 - 1},
]

FAULTS_REFUSED = [
    ("failure_rate", math.nextafter(1, 2)),
    ("failure_rate", -5e-324),
    ("failure_rate", math.nan),
    ("failure_rate", math.inf),
    ("failure_rate", True),
    ("failure_rate", "0.1"),
    ("failure_rate", None),
    ("crash_rate", math.nextafter(1, 2)),
    ("crash_rate", -1),
    ("crash_rate", 10**5000),
    ("min_latency", -5e-324),
    ("min_latency", math.nextafter(3600, _UP)),
    ("max_latency", math.nextafter(3600, _UP)),
    ("max_latency", 1e10),
    ("max_latency", math.inf),
    ("max_latency", math.nan),
    ("max_latency", False),
    ("seed", -1),
    ("seed", 2**64),
    ("seed", 10**5000),
    ("seed", True),
    ("seed", 1.0),
    ("seed", "1"),
]


@pytest.mark.parametrize("arguments", FAULTS_ACCEPTED, ids=repr)
def test_fault_plan_accepts_its_range(arguments):
    FaultPlan(**arguments)


@pytest.mark.parametrize(("name", "value"), FAULTS_REFUSED, ids=[f"{n}={_id(v)}" for n, v in FAULTS_REFUSED])
def test_fault_plan_refuses_outside_its_range(name, value):
    with pytest.raises(ValueError, match=name) as raised:
        FaultPlan(**{name: value})
    assert len(str(raised.value)) < 300


def test_fault_plan_names_every_problem_and_checks_combinations():
    with pytest.raises(ValueError) as raised:
        FaultPlan(failure_rate=2, crash_rate=-1, min_latency=-1, max_latency=1e10, seed=-1)
    for name in ("failure_rate", "crash_rate", "min_latency", "max_latency", "seed"):
        assert name in str(raised.value)
    with pytest.raises(ValueError, match=r"failure_rate \+ crash_rate"):
        FaultPlan(failure_rate=0.5, crash_rate=0.500001)
    with pytest.raises(ValueError, match="max_latency must not be less"):
        FaultPlan(min_latency=2, max_latency=1)


# --- properties over generated requests ----------------------------------------------------

_SPECIAL_VALUES: list[object] = [
    0,
    -1,
    MAX_ID,
    MAX_ID + 1,
    2**64,
    10**4300,
    10**5000,
    -(10**5000),
    MAX_QUANTITY,
    MAX_QUANTITY + 1,
    CARD,
    int(CARD),
    "5105 1051 0510 5100",
    "1_000",
    "\u0661\u0660",
    "12/30",
    "\u0661\u0662/\u0663\u0660",
    "19.98",
    " 19.98 ",
    "NaN",
    "-Infinity",
    "sNaN",
    "1e999999999999999999999",
    "x" * 100_000,
    "9" * 100_000,
    Decimal("sNaN"),
    Decimal("-0"),
    Decimal("9" * 5000),
    math.nan,
    math.inf,
    -0.0,
    1e300,
    b"19.98",
    (),
    [],
    {},
    set(),
    object(),
    _nested(1_500),
    _nested(20, CARD),
]

_values = st.one_of(
    st.sampled_from(_SPECIAL_VALUES).map(copy.copy),  # a copy: corruptions may add to it
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.decimals(),
    st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=20),
    st.text(alphabet="0123456789 -._/eE+", max_size=30),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
_keys = st.one_of(
    st.sampled_from(["user_id", "order_id", "items", "payment_info", "product_id", "quantity", "cvv", "x"]),
    st.sampled_from(["card_number", "expiry", "amount", "currency", CARD, "x" * 100_000]),
    st.text(max_size=12),
    st.integers(),
    st.sampled_from([10**5000, None, (1, 2), 1.5]),
)
_valid_amounts = st.one_of(
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000000000.00"), places=2).map(str),
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000000000.00"), places=2),
    st.integers(1, 1_000_000_000),
    st.sampled_from([19.98, 0.01, 5.5, 1e9]),
)


@st.composite
def _valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    products = draw(st.lists(st.integers(0, MAX_ID), min_size=1, max_size=5, unique=True))
    payment: dict[str, Any] = {
        "card_number": draw(st.sampled_from([APPROVED, OTHER_VALID, CARD, "4242 4242 4242 4242"])),
        "expiry": f"{draw(st.integers(1, 12)):02d}/{draw(st.integers(0, 99)):02d}",
        "amount": draw(_valid_amounts),
    }
    if draw(st.booleans()):
        payment["cvv"] = draw(st.sampled_from(["123", "1234", None]))
    if draw(st.booleans()):
        payment["currency"] = draw(st.sampled_from(["USD", "EUR", "JPY"]))
    return {
        "user_id": draw(st.integers(1, MAX_ID)),
        "order_id": draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)),
        "items": [{"product_id": p, "quantity": draw(st.integers(1, MAX_QUANTITY))} for p in products],
        "payment_info": payment,
    }


def _containers(request: dict[str, Any]) -> list[Any]:
    found: list[Any] = [request]
    items = request.get("items")
    if isinstance(items, list):
        found.append(items)
        found += [item for item in items if isinstance(item, dict)]
    if isinstance(request.get("payment_info"), dict):
        found.append(request["payment_info"])
    return found


@st.composite
def _corrupted_requests(draw: st.DrawFn) -> dict[str, Any]:
    request = draw(_valid_requests())
    for _ in range(draw(st.integers(0, 4))):
        target = draw(st.sampled_from(_containers(request)))
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if isinstance(target, list):
            if action == "add" or not target:
                target.append(draw(_values))
            elif action == "delete":
                del target[draw(st.integers(0, len(target) - 1))]
            else:
                target[draw(st.integers(0, len(target) - 1))] = draw(_values)
        elif action == "add":
            target[draw(_keys)] = draw(_values)
        elif target:
            key = draw(st.sampled_from(list(target)))
            if action == "delete":
                del target[key]
            else:
                target[key] = draw(_values)
    return request


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(_valid_requests())
def test_generated_valid_requests_pass(request_):
    assert isinstance(_outcome(request_), OrderRequest)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(_corrupted_requests())
def test_generated_requests_give_an_order_or_invalid_order(request_):
    _outcome(request_)


def _fuzz(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """A structural mutation of a request or one of its parts."""
    if isinstance(value, dict) and rng.random() < 0.8:
        value = dict(value)
        for _ in range(rng.randint(1, 2)):
            roll = rng.random()
            if roll < 0.15 or not value:
                value[rng.choice([*_SPECIAL_VALUES[:12], "coupon", "cvv", "currency", "amount"])] = (
                    rng.choice(_SPECIAL_VALUES)
                )
            elif roll < 0.3:
                del value[rng.choice(list(value))]
            else:
                key = rng.choice(list(value))
                value[key] = _fuzz(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value and rng.random() < 0.8:
        value = list(value)
        index = rng.randrange(len(value))
        roll = rng.random()
        if roll < 0.2:
            del value[index]
        elif roll < 0.3:
            value = value * rng.choice([2, 60])
        else:
            value[index] = _fuzz(rng, value[index], depth + 1)
        return value
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(_SPECIAL_VALUES)
    if roll < 0.6:
        return [value]
    if roll < 0.7:
        return {"a": value}
    if roll < 0.8 and isinstance(value, str):
        return value.translate({ord(d): 0x0660 + int(d) for d in "0123456789"})  # Arabic-Indic digits
    if roll < 0.9 and isinstance(value, int) and not isinstance(value, bool) and value.bit_length() < 64:
        return rng.choice([str(value), float(value), Decimal(value), -value, value + MAX_ID])
    return rng.choice([None, True, 1.5, -1, "", "\u0000"])


def test_six_thousand_structurally_fuzzed_requests():
    rng = random.Random(20240611)
    base = make_request(items=[(101, 2), (102, 1)], cvv="123", currency="EUR")
    outcomes = {OrderRequest: 0, InvalidOrder: 0}
    for _ in range(6_000):
        request = _fuzz(rng, base)
        outcome = _outcome(request)
        outcomes[type(outcome)] += 1
    assert outcomes[InvalidOrder] > 3_000 and outcomes[OrderRequest] > 100, outcomes


@pytest.mark.parametrize("order_id", [123, ["x"], None, b"x"])
def test_order_and_saga_refuse_an_id_that_is_not_a_string(order_id):
    """Found by trying to break it: order(123) answered for "123" once the journal was read,
    and a list raised a bare TypeError."""
    with OrderSystem(stock={1: 5}) as system:
        with pytest.raises(ValueError, match="order_id must be a string"):
            system.order(order_id)
        with pytest.raises(ValueError, match="order_id must be a string"):
            system.saga(order_id)


@pytest.mark.parametrize("stock", [{"x": 1}, 5, {1: -1}, {1: 1.5}])
def test_check_consistency_refuses_a_malformed_initial_stock_by_name(stock):
    with OrderSystem(stock={1: 5}) as system, pytest.raises(ValueError, match="invalid initial_stock"):
        system.check_consistency(stock)
