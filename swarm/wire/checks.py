"""Field checks shared by the wire records: each raises WireError naming the field and the rule."""

from __future__ import annotations

import math

from swarm.errors import WireError

MAX_PEER_ID_CHARS = 128
MAX_REQUEST_ID_CHARS = 64
MAX_U63 = 2**63 - 1


def check_peer_id(name: str, value: object, *, may_be_empty: bool = False) -> None:
    if may_be_empty and value == "":
        return
    if type(value) is not str or not 1 <= len(value) <= MAX_PEER_ID_CHARS or not value.isalnum():
        raise WireError(f"{name}={value!r}: expected a base58 peer id of 1 to {MAX_PEER_ID_CHARS} characters")


def check_request_id(name: str, value: object) -> None:
    if type(value) is not str or not 1 <= len(value) <= MAX_REQUEST_ID_CHARS or not value.isprintable():
        raise WireError(f"{name}={value!r}: expected 1 to {MAX_REQUEST_ID_CHARS} printable characters")


def check_count(name: str, value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_U63:
        raise WireError(f"{name}={value!r}: expected an int in [0, 2**63)")


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise WireError(f"{name} must be in [{low}, {high}], got {value!r}")


def check_text(name: str, value: object, max_chars: int) -> None:
    if type(value) is not str or len(value) > max_chars:
        length = len(value) if isinstance(value, str) else type(value).__name__
        raise WireError(f"{name}: expected a string of at most {max_chars} characters, got {length}")


def check_bytes(name: str, value: object, max_bytes: int) -> None:
    if not isinstance(value, bytes) or len(value) > max_bytes:
        raise WireError(f"{name}: expected at most {max_bytes} bytes")
