"""The spec's verification contents, for the fuzz tests: one copy of what the spec says.

Client-server API, "Key verification framework" and "Short Authentication String (SAS)
verification": each event type's fields and the type each must have, without the field that
ties an event to its transaction (``transaction_id`` to-device, ``m.relates_to`` in a room),
and the cancel codes the spec defines. Types: ``str``, ``int``, ``[str]`` (a list of strings),
``{str: str}`` (an object of strings).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from nerbot.domain import verification as v

SPEC_CODES = frozenset({
    "m.user", "m.timeout", "m.unknown_transaction", "m.unknown_method", "m.unexpected_message",
    "m.key_mismatch", "m.user_mismatch", "m.invalid_message", "m.accepted",
    "m.mismatched_commitment", "m.mismatched_sas"})

FIELDS: dict[str, dict[str, Any]] = {
    v.REQUEST: {"from_device": str, "methods": [str], "timestamp": int},  # to-device
    v.READY: {"from_device": str, "methods": [str]},
    v.START: {"from_device": str, "method": str, "key_agreement_protocols": [str],
              "hashes": [str], "message_authentication_codes": [str],
              "short_authentication_string": [str]},
    v.ACCEPT: {"commitment": str, "hash": str, "key_agreement_protocol": str,
               "message_authentication_code": str, "method": str,
               "short_authentication_string": [str]},
    v.KEY: {"key": str},
    v.MAC: {"keys": str, "mac": {str: str}},
    v.DONE: {},
    v.CANCEL: {"code": str, "reason": str},
}
# An in-room request is an m.room.message; its time is the event's origin_server_ts.
IN_ROOM_REQUEST: dict[str, Any] = {"msgtype": str, "body": str, "to": str, "from_device": str,
                                   "methods": [str]}
RELATES: dict[str, Any] = {"rel_type": str, "event_id": str}  # in-room later events


def to_device(extra: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every type's fields as sent to-device (with ``transaction_id``), plus ``extra`` types."""
    return {event_type: {**fields, "transaction_id": str}
            for event_type, fields in {**FIELDS, **(extra or {})}.items()}


def well_typed(kind: Any, *, strings: st.SearchStrategy[str], ints: st.SearchStrategy[int],
               mac_keys: st.SearchStrategy[str], list_max: int) -> st.SearchStrategy[Any]:
    """A value of a field's type: ``strings`` and ``ints`` for the scalars, lists of up to
    ``list_max``, and objects of strings keyed by ``mac_keys`` (a MAC's key IDs)."""
    if kind is str:
        return strings
    if kind is int:
        return ints
    if isinstance(kind, list):
        return st.lists(well_typed(kind[0], strings=strings, ints=ints, mac_keys=mac_keys,
                                   list_max=list_max), max_size=list_max)
    return st.dictionaries(mac_keys, strings, max_size=3)
