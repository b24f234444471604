"""How values become bytes: node results and inputs (Celery's JSON), the canonical bytes a
graph id is hashed from, and the one error record every failure is stored as."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from kombu.utils import json as kjson

from .errors import SerializationError


def encode_value(value: Any, what: Callable[[], str]) -> str:
    """JSON for a result, input or shared-state value, with Celery's JSON types
    (datetime, Decimal, UUID); ``what()`` names the value in the error."""
    try:
        return kjson.dumps(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what()}: a value of type {type(value).__name__} cannot be encoded as JSON "
            "(return plain data: dict, list, str, numbers, bool, None, datetime, Decimal, UUID)"
        ) from exc


def decode_value(raw: bytes | str) -> Any:
    return kjson.loads(raw)


def canonical(data: Any) -> bytes:
    """Sorted keys, no spaces: the same data always gives the same bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# -- error records ---------------------------------------------------------------------


def error_record(
    node_id: str, exc_type: str, module: str, message: str, traceback: str = ""
) -> str:
    """The JSON stored for a failure: in the run record (why the run failed) and in a
    node's state (a member that failed under its group's policy)."""
    return json.dumps(
        {
            "node": node_id,
            "type": exc_type,
            "module": module,
            "message": message,
            "traceback": traceback or "",
        }
    )


def exception_record(node_id: str, exc: BaseException, traceback: str = "") -> str:
    """:func:`error_record` of a raised exception."""
    return error_record(node_id, type(exc).__name__, type(exc).__module__, str(exc), traceback)


def parse_error(raw: str | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None
