"""What the CLI's log handler writes: token-shaped strings masked, tracebacks included."""

from __future__ import annotations

import logging

import pytest

from nerbot.logs import configure_logging

TOKEN = "syt_bm90YXJlYWx0b2tlbg_AbCdEfGhIjKlMnOpQrSt_1a2b3c"


def test_a_token_in_an_exception_is_masked_in_the_traceback_too(
        capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("INFO")
        try:
            raise RuntimeError(f"GET /sync?access_token=abc123&since=s1 failed with {TOKEN}")
        except RuntimeError:
            logging.getLogger("nerbot.test").exception("Sync failed for Bearer %s", TOKEN)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    written = capsys.readouterr().err
    assert "Traceback" in written and "RuntimeError" in written
    assert TOKEN not in written and "abc123" not in written
    assert "access_token=<redacted>" in written
