"""The msgpack envelope and the typed, validating decoder for every record a peer can send.

A message on the wire is `[WIRE_VERSION, type_id, body]`, where body lists the record's fields in
declaration order (nested records the same way). Decoding goes through an explicit type table, checks
every field against its annotation, ignores unknown trailing fields and fills missing optional ones
from their defaults, so old and new peers interoperate. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

import msgpack

from swarm.errors import WireError

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20  # control messages; bulk data goes in frames, not here
MAX_BIN_BYTES = 1 << 20
MAX_ARRAY_LEN = 65_536
MAX_STR_BYTES = 65_536
MAX_DEPTH = 8

T = TypeVar("T")
# Type ids: 1-19 core records (hardware, plan), 20-39 bulk-data headers (KV, hidden states),
# 40 and up the peer protocols. An id is never reused for another record.
_TYPES: dict[int, type] = {}
_IDS: dict[type, int] = {}


def message(type_id: int):
    """Class decorator: register a frozen dataclass as a wire message with a fixed type id."""

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be a wire message")
        if type_id in _TYPES and _TYPES[type_id] is not cls:
            raise TypeError(f"wire type id {type_id} is taken by {_TYPES[type_id].__name__}")
        _TYPES[type_id] = cls
        _IDS[cls] = type_id
        return cls

    return register


def encode(msg: Any) -> bytes:
    """Bytes of a registered message."""
    type_id = _IDS.get(type(msg))
    if type_id is None:
        raise TypeError(f"{type(msg).__name__} is not a registered wire message")
    return msgpack.packb([WIRE_VERSION, type_id, to_primitive(msg)], use_bin_type=True)


def decode(data: bytes, *, expect: type[T] | None = None, max_bytes: int = MAX_MESSAGE_BYTES) -> T:
    """The message in `data`, validated field by field; WireError says what is wrong."""
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=False, max_bin_len=MAX_BIN_BYTES,
                                   max_str_len=MAX_STR_BYTES, max_array_len=MAX_ARRAY_LEN,
                                   max_map_len=MAX_ARRAY_LEN, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise WireError(f"not a valid msgpack message: {e}") from None
    if not (isinstance(envelope, list) and len(envelope) == 3):
        raise WireError("a message must be [wire_version, type_id, body]")
    version, type_id, body = envelope
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version!r} is not supported (this peer speaks {WIRE_VERSION}); "
                        "upgrade the older peer")
    cls = _TYPES.get(type_id) if isinstance(type_id, int) else None
    if cls is None:
        raise WireError(f"unknown message type {type_id!r}")
    if expect is not None and cls is not expect:
        raise WireError(f"expected a {expect.__name__}, got a {cls.__name__}")
    return from_primitive(cls, body)


def to_primitive(value: Any) -> Any:
    """A record as nested lists of primitives (fields in declaration order)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [to_primitive(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, tuple | list):
        return [to_primitive(v) for v in value]
    if isinstance(value, dict):
        return {k: to_primitive(v) for k, v in value.items()}
    return value


def from_primitive(cls: type[T], body: Any, *, where: str = "") -> T:
    """Build and validate a record of type `cls` from the lists `to_primitive` produced."""
    return _convert(cls, body, where or cls.__name__, 0)


@typing.no_type_check
def _convert(tp: Any, value: Any, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise WireError(f"{where}: nested too deeply")
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _record(tp, value, where, depth)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where, depth)
            except WireError as e:
                errors.append(str(e))
        raise WireError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {options}")
    if origin is tuple:
        return _tuple(tp, value, where, depth)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise WireError(f"{where}: expected a map, got {type(value).__name__}")
        return {_convert(key_tp, k, f"{where} key", depth + 1): _convert(value_tp, v, f"{where}[{k!r}]", depth + 1)
                for k, v in value.items()}
    return _scalar(tp, value, where)


def _scalar(tp: type, value: Any, where: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is bytes and isinstance(value, bytearray):
        value = bytes(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise WireError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {_short(value)}")
    if tp is float and value != value:
        raise WireError(f"{where}: NaN is not allowed")
    return value


def _tuple(tp: Any, value: Any, where: str, depth: int) -> tuple:
    if not isinstance(value, list | tuple):
        raise WireError(f"{where}: expected a list, got {type(value).__name__}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    if len(value) != len(args):
        raise WireError(f"{where}: expected {len(args)} items, got {len(value)}")
    return tuple(_convert(a, v, f"{where}[{i}]", depth + 1) for i, (a, v) in enumerate(zip(args, value, strict=True)))


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(name, resolved type, is_required) of each init field; resolving hints is the slow part of decoding."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                 for f in dataclasses.fields(cls) if f.init)


def _record(cls: type, value: Any, where: str, depth: int) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, list | tuple):
        raise WireError(f"{where}: expected a {cls.__name__} record (a list), got {type(value).__name__}")
    kwargs = {}
    for i, (name, field_type, is_required) in enumerate(_fields(cls)):
        if i < len(value):
            kwargs[name] = _convert(field_type, value[i], f"{where}.{name}", depth + 1)
        elif is_required:
            raise WireError(f"{where}: missing required field {name!r}")
    try:
        return cls(**kwargs)
    except WireError:
        raise
    except (ValueError, TypeError) as e:
        raise WireError(f"{where}: {e}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
