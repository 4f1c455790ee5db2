"""Events (and snapshots) as JSON with a type name and a schema version.

Only registered dataclasses can be written, so a value that must never be
stored - a card number, say - fails loudly instead of leaking to disk.
Nested values are tagged so they come back with their types:
`{"$type": name, ...fields}`, `{"$decimal": "19.98"}`, `{"$set": [...]}`,
`{"$dict": [[key, value], ...]}`; JSON arrays come back as tuples.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["EventCodec", "SerializationError"]

Upcaster = Callable[[int, dict[str, Any]], dict[str, Any]]

_PLAIN = frozenset({str, int, bool, float, type(None)})
_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


class SerializationError(Exception):
    """A value cannot be written, or stored data cannot be read back."""


@dataclass(frozen=True, slots=True)
class _Registration:
    cls: type
    name: str
    version: int
    upcast: Upcaster | None
    fields: tuple[str, ...]


class EventCodec:
    """A registry of the dataclasses a journal may hold."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Registration] = {}
        self._by_class: dict[type, _Registration] = {}

    def register(
        self,
        cls: type,
        *,
        name: str | None = None,
        version: int = 1,
        upcast: Upcaster | None = None,
    ) -> None:
        """Allow `cls` in the journal under `name` (default: the class name).

        Bump `version` when the fields change, and give `upcast(old_version,
        fields) -> fields` to turn stored older versions into the current one.
        """
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        fields = tuple(f.name for f in dataclasses.fields(cls))
        registration = _Registration(cls, name or cls.__name__, version, upcast, fields)
        existing = self._by_name.get(registration.name)
        if existing is not None and existing.cls is not cls:
            raise ValueError(f"type name {registration.name!r} is taken by {existing.cls!r}")
        self._by_name[registration.name] = registration
        self._by_class[cls] = registration

    def register_all(self, *classes: type) -> None:
        for cls in classes:
            self.register(cls)

    def knows(self, type_name: str) -> bool:
        return type_name in self._by_name

    def name_of(self, cls: type) -> str:
        """The stored type name of a registered class."""
        registration = self._by_class.get(cls)
        if registration is None:
            raise SerializationError(f"{cls.__name__} is not registered for the journal")
        return registration.name

    def encode(self, value: Any) -> tuple[str, int, str]:
        """(type name, version, JSON of the fields) of a registered dataclass."""
        registration = self._registration_of(value)
        return registration.name, registration.version, _dumps(self._fields(registration, value))

    def _fields(self, registration: _Registration, value: Any) -> dict[str, Any]:
        # The hot path of every append: plain values are taken as they are, without a call.
        to_json, plain = self._to_json, _PLAIN
        fields = {}
        for name in registration.fields:
            field_value = getattr(value, name)
            fields[name] = field_value if type(field_value) in plain else to_json(field_value)
        return fields

    def decode(self, type_name: str, version: int, data: str) -> Any:
        """The value stored as (type name, version, JSON): the inverse of `encode`.

        Raises SerializationError, and nothing else, for any stored data that
        does not decode: unknown type, unreadable JSON, a version newer than
        the code, a malformed tagged value (a `$decimal` that is not a decimal
        string, a `$set` or `$dict` of the wrong shape, an untagged object),
        fields that do not fit the class (missing, unknown), or an upcaster or
        constructor that fails on them. The original error, if any, is chained.
        """
        registration = self._by_name.get(type_name)
        if registration is None:
            raise SerializationError(f"unknown type {type_name!r}")
        try:
            fields = json.loads(data)
        except (ValueError, TypeError) as error:
            raise SerializationError(f"unreadable JSON for {type_name}: {error}") from None
        if not isinstance(fields, dict):
            raise SerializationError(f"{type_name}: stored data is not an object")
        try:
            return self._build(registration, version, fields)
        except SerializationError:
            raise
        except Exception as error:  # stored data that does not fit: an upcaster's KeyError, say
            raise SerializationError(
                f"{type_name}: stored data does not decode: {type(error).__name__}: {error}"
            ) from error

    # --- internals ---

    def _registration_of(self, value: Any) -> _Registration:
        registration = self._by_class.get(type(value))
        if registration is None:
            raise SerializationError(
                f"{type(value).__name__} is not registered for the journal "
                "(only registered dataclasses are ever written)"
            )
        return registration

    def _to_json(self, value: Any) -> Any:
        kind = type(value)
        if kind in _PLAIN:
            return value
        if kind is tuple or kind is list:
            to_json, plain = self._to_json, _PLAIN
            return [v if type(v) in plain else to_json(v) for v in value]
        if kind is Decimal:
            return {"$decimal": str(value)}
        registration = self._by_class.get(kind)
        if registration is not None:
            return {"$type": registration.name, **self._fields(registration, value)}
        if isinstance(value, (set, frozenset)):
            return {"$set": sorted((self._to_json(v) for v in value), key=repr)}
        if isinstance(value, dict):
            return {"$dict": [[self._to_json(k), self._to_json(v)] for k, v in value.items()]}
        if isinstance(value, (bool, int, str, float)):  # subclasses, e.g. IntEnum
            return value
        self._registration_of(value)  # raises: not registered
        raise AssertionError("unreachable")

    def _from_json(self, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(self._from_json(v) for v in value)
        if not isinstance(value, dict):
            return value
        if "$decimal" in value:
            return _decimal(value)
        if "$set" in value:
            return {self._from_json(v) for v in _tagged_list(value, "$set")}
        if "$dict" in value:
            pairs = _tagged_list(value, "$dict")
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
                raise SerializationError("malformed $dict in stored data: not a list of [key, value] pairs")
            return {self._from_json(k): self._from_json(v) for k, v in pairs}
        if "$type" in value:
            fields = dict(value)
            name = fields.pop("$type")
            registration = self._by_name.get(name) if isinstance(name, str) else None
            if registration is None:
                raise SerializationError(f"unknown type {name!r}")
            return self._build(registration, registration.version, fields)
        raise SerializationError(f"untagged object in stored data: {sorted(value)}")

    def _build(self, registration: _Registration, version: int, fields: dict[str, Any]) -> Any:
        if version > registration.version:
            raise SerializationError(
                f"{registration.name} version {version} is newer than this code ({registration.version})"
            )
        if version < registration.version:
            if registration.upcast is None:
                raise SerializationError(
                    f"{registration.name} version {version} is stored but no upcaster is registered"
                )
            fields = registration.upcast(version, fields)
        values = {k: self._from_json(v) for k, v in fields.items()}
        try:
            return registration.cls(**values)
        except TypeError as error:
            raise SerializationError(f"{registration.name}: fields do not fit: {error}") from None


def _tagged_list(value: dict[str, Any], tag: str) -> list[Any]:
    """The list under `tag` in `{tag: [...]}`; SerializationError for any other shape."""
    content = value[tag]
    if len(value) != 1 or not isinstance(content, list):
        raise SerializationError(f"malformed {tag} in stored data: {_dumps(value)[:80]}")
    return content


def _decimal(value: dict[str, Any]) -> Decimal:
    """`{"$decimal": "12.34"}` as a Decimal; SerializationError for any other shape or text.

    Only a string is accepted: `encode` never writes anything else, and a JSON
    number would come back as a binary float's exact value.
    """
    text = value["$decimal"]
    if len(value) != 1 or not isinstance(text, str):
        raise SerializationError(f"malformed $decimal in stored data: {_dumps(value)[:80]}")
    try:
        return Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation, and the signals a context may trap
        raise SerializationError(f"malformed $decimal in stored data: {text[:40]!r}") from None
