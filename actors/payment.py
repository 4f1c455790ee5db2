"""The payment service: authorize, then capture or void, per order.

A simulation of a card processor that follows the test-card convention of
payment providers. The card number is used to decide and then forgotten:
only its last four digits are kept. A void that overtakes its authorize
leaves a tombstone, and the late authorize is refused.

A finished payment (captured, voided, declined, or a tombstone) is kept for
the retention window, then forgotten (`RetentionExpired`); what was captured
is also summed per currency in running totals that are never forgotten, so
the money can be audited against the orders whatever has been forgotten.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from saga_actors.actors.validation import PaymentCard
from saga_actors.sagas.participant import Answer, ParticipantActor
from saga_actors.sagas.retention import ExpireRetention, Retained, RetentionExpired

__all__ = [
    "AuthorizePayment",
    "CapturePayment",
    "CapturesView",
    "GetCaptures",
    "GetPayments",
    "PaymentActor",
    "PaymentAuthorized",
    "PaymentCaptured",
    "PaymentDeclined",
    "PaymentState",
    "PaymentView",
    "PaymentVoided",
    "VoidPayment",
    "answer",
    "card_verdict",
    "decide",
    "evolve",
]

PERSISTENCE_ID = "payment"

# Test cards (as payment providers document them).
APPROVED_CARD = "4242424242424242"
DECLINED_CARDS = {
    "4000000000000002": "card_declined",
    "4000000000009995": "insufficient_funds",
}
EXPIRED_CARD = "expired_card"


# --- commands ---


@dataclass(frozen=True, slots=True)
class AuthorizePayment:
    order_id: str
    amount: Decimal
    currency: str
    card: PaymentCard  # its repr is masked


@dataclass(frozen=True, slots=True)
class CapturePayment:
    order_id: str


@dataclass(frozen=True, slots=True)
class VoidPayment:
    order_id: str


@dataclass(frozen=True, slots=True)
class GetPayments:
    """Query: the view of every authorization active or finished within the retention window."""


@dataclass(frozen=True, slots=True)
class GetCaptures:
    """Query: every payment ever captured, counted and summed (a `CapturesView`)."""


# --- events ---


@dataclass(frozen=True, slots=True)
class PaymentAuthorized:
    order_id: str
    amount: Decimal
    currency: str
    card_last4: str


@dataclass(frozen=True, slots=True)
class PaymentDeclined:
    order_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PaymentCaptured:
    order_id: str


@dataclass(frozen=True, slots=True)
class PaymentVoided:
    order_id: str


# --- state ---


PaymentStatus = Literal["authorized", "captured", "voided"]


@dataclass(frozen=True, slots=True)
class Authorization:
    """One order's authorization; immutable (a change replaces it), so copies of the state share it."""

    amount: Decimal
    currency: str
    card_last4: str
    status: PaymentStatus


@dataclass(slots=True)
class PaymentState:
    """Payments by order id, active or finished within the retention window, and running
    totals of every capture ever (never forgotten)."""

    authorizations: dict[str, Authorization] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    voided_unseen: set[str] = field(default_factory=set)  # tombstones
    retained: Retained = field(default_factory=Retained)  # the finished payments
    captured_count: int = 0  # payments ever captured
    captured_total: dict[str, Decimal] = field(default_factory=dict)  # currency -> amount ever captured

    def known(self, order_id: str) -> bool:
        return order_id in self.authorizations or order_id in self.declined or order_id in self.voided_unseen

    def copy(self) -> PaymentState:
        """A copy for a snapshot or a view: the containers are copied, the immutable entries shared."""
        return PaymentState(
            dict(self.authorizations),
            dict(self.declined),
            set(self.voided_unseen),
            self.retained.copy(),
            self.captured_count,
            dict(self.captured_total),
        )


@dataclass(frozen=True, slots=True)
class PaymentView:
    state: PaymentStatus
    amount: Decimal


@dataclass(frozen=True, slots=True)
class CapturesView:
    """Every payment ever captured: how many, and the amount per currency (three-letter code)."""

    payments: int
    amounts: Mapping[str, Decimal]


# --- rules ---


def card_verdict(card: PaymentCard, today: datetime.date) -> str | None:
    """Why the simulated processor declines `card`, or None if it approves."""
    if card.number in DECLINED_CARDS:
        return DECLINED_CARDS[card.number]
    month, year = int(card.expiry[:2]), 2000 + int(card.expiry[3:])
    if (year, month) < (today.year, today.month):
        return EXPIRED_CARD
    return None


def decide(command: Any, state: PaymentState, today: datetime.date | None = None) -> list[Any]:
    match command:
        case AuthorizePayment(order_id=order_id, amount=amount, currency=currency, card=card):
            if state.known(order_id):
                return []  # answered from the first result
            reason = card_verdict(card, today or datetime.date.today())
            if reason is not None:
                return [PaymentDeclined(order_id, reason)]
            return [PaymentAuthorized(order_id, amount, currency, card.last4)]
        case CapturePayment(order_id=order_id):
            return [PaymentCaptured(order_id)] if _status(state, order_id) == "authorized" else []
        case VoidPayment(order_id=order_id):
            if _status(state, order_id) == "authorized" or not state.known(order_id):
                return [PaymentVoided(order_id)]
            return []
        case ExpireRetention():
            return state.retained.expire(command)
    raise TypeError(f"payment: unknown command {type(command).__name__}")


def answer(command: Any, state: PaymentState) -> Answer:
    order_id = command.order_id
    status = _status(state, order_id)
    match command:
        case AuthorizePayment():
            if status in ("authorized", "captured"):
                return True, None
            if order_id in state.declined:
                return False, state.declined[order_id]
            return False, "voided"
        case CapturePayment():
            if status == "captured":
                return True, None
            return False, "voided" if status == "voided" else "not_authorized"
        case VoidPayment():
            if status == "captured":
                return False, "already_captured"
            return True, None
    raise TypeError(f"payment: unknown command {type(command).__name__}")


def evolve(state: PaymentState, event: Any) -> PaymentState:
    match event:
        case PaymentAuthorized(order_id=order_id, amount=amount, currency=currency, card_last4=last4):
            state.authorizations[order_id] = Authorization(amount, currency, last4, "authorized")
        case PaymentDeclined(order_id=order_id, reason=reason):
            state.declined[order_id] = reason
            state.retained.finish(order_id)
        case PaymentCaptured(order_id=order_id):
            captured = replace(state.authorizations[order_id], status="captured")
            state.authorizations[order_id] = captured
            state.captured_count += 1
            total = state.captured_total.get(captured.currency, Decimal(0))
            state.captured_total[captured.currency] = total + captured.amount
            state.retained.finish(order_id)
        case PaymentVoided(order_id=order_id):
            authorization = state.authorizations.get(order_id)
            if authorization is not None:
                state.authorizations[order_id] = replace(authorization, status="voided")
            else:
                state.voided_unseen.add(order_id)
            state.retained.finish(order_id)
        case RetentionExpired():
            for order_id in state.retained.forget(event):
                state.authorizations.pop(order_id, None)
                state.declined.pop(order_id, None)
                state.voided_unseen.discard(order_id)
        case _:
            raise TypeError(f"payment: unknown event {type(event).__name__}")
    return state


def views(state: PaymentState) -> dict[str, PaymentView]:
    return {o: PaymentView(a.status, a.amount) for o, a in state.authorizations.items()}


def captures(state: PaymentState) -> CapturesView:
    return CapturesView(state.captured_count, dict(state.captured_total))


def _status(state: PaymentState, order_id: str) -> str | None:
    authorization = state.authorizations.get(order_id)
    return authorization.status if authorization is not None else None


# --- the actor ---


class PaymentActor(ParticipantActor[PaymentState]):
    PERSISTENCE_ID = PERSISTENCE_ID

    def state_size(self, state: PaymentState) -> int:
        return len(state.authorizations) + len(state.declined) + len(state.voided_unseen)

    def initial_state(self) -> PaymentState:
        return PaymentState()

    def apply_event(self, state: PaymentState, event: Any) -> PaymentState:
        return evolve(state, event)

    def decide(self, command: Any, state: PaymentState) -> list[Any]:
        return decide(command, state)

    def answer(self, command: Any, state: PaymentState) -> Answer:
        return answer(command, state)

    def on_other_message(self, message: Any) -> Any:
        if isinstance(message, GetPayments):
            return views(self.state)
        if isinstance(message, GetCaptures):
            return captures(self.state)
        return super().on_other_message(message)
