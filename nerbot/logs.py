"""Logging setup, done once by the CLI (never at import time)."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

# Anything that looks like a Matrix access token or a bearer header is masked in log output.
_SECRET_PATTERNS = (
    (re.compile(r"\b(?:syt|mct)_[A-Za-z0-9_]+"), "<redacted>"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1<redacted>"),
    (re.compile(r"(?i)(access_token=)[^&\s]+"), r"\1<redacted>"),
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Last line of defence: masks token-shaped strings even if a library logs them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


class RedactingFormatter(logging.Formatter):
    """The same masks over the whole output, tracebacks included (an exception's text, e.g. a
    request URL with ``access_token=``, is not part of the message the filter sees)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# nio's DEBUG output includes whole login responses (access tokens), so nio never logs below
# WARNING here, whatever the configured level; nio.crypto warns about every history event a
# device cannot decrypt (normal for a bot), so it is kept to errors.
_LIBRARY_LEVELS = {
    "nio": logging.WARNING,
    "nio.crypto": logging.ERROR,
    "peewee": logging.WARNING,
    "aiohttp.access": logging.WARNING,
    "apscheduler": logging.WARNING,  # "Running job …" for every scan; our scans log themselves
}


def quiet_libraries() -> None:
    """Cap chatty or secret-leaking library loggers (idempotent; the app calls it on start)."""
    for name, level in _LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(level)


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (not the one at set-up, which may be closed
    by then: a test harness swaps it per test)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    handler = _CurrentStderr()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_libraries()
