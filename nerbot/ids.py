"""Typed Matrix identifiers and the syntax checks shared by config and commands."""

from __future__ import annotations

import re
from typing import NewType

UserId = NewType("UserId", str)
DeviceId = NewType("DeviceId", str)
RoomId = NewType("RoomId", str)
EventId = NewType("EventId", str)

# Spec appendix "Server name": hostname or IP literal, optional port.
_SERVER_NAME = r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(?::[0-9]{1,5})?"
# Historical user IDs allow more than the strict grammar; accept printable ASCII without ':'.
_USER_ID_RE = re.compile(r"^@[\x21-\x39\x3b-\x7e]+:" + _SERVER_NAME + r"$")
_SERVER_NAME_RE = re.compile(r"^" + _SERVER_NAME + r"$")
# Room IDs are opaque after the sigil; room version 12 ones have no server part.
_ROOM_ID_RE = re.compile(r"^![\x21-\x7e]+$")


def is_user_id(value: str) -> bool:
    """True for a syntactically valid Matrix user ID (``@local:server``)."""
    return len(value) <= 255 and bool(_USER_ID_RE.match(value))


def is_room_id(value: str) -> bool:
    """True for something shaped like a room ID (``!opaque`` or ``!opaque:server``)."""
    return len(value) <= 255 and bool(_ROOM_ID_RE.match(value))


def is_server_name(value: str) -> bool:
    """True for a syntactically valid server name (``host[:port]``)."""
    return bool(_SERVER_NAME_RE.match(value))


def server_of(user_id: str) -> str:
    """The server part of a user ID (everything after the first ':')."""
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def localpart_of(user_id: str) -> str:
    """The localpart of a user ID, without the leading '@'."""
    return user_id[1:].split(":", 1)[0]
