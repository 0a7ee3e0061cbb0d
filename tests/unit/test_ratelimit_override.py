"""The bot's Synapse rate-limit override: what is read, what is set, what is said."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from nerbot.app import NerbotApp
from nerbot.config import parse_config
from nerbot.errors import MatrixRequestError
from nerbot.matrix.admin import AdminProbe, RatelimitOverride, lift_ratelimit_request

BOT = "@nerbot:chat.example"
PATH = "/_synapse/admin/v1/users/%40nerbot%3Achat.example/override_ratelimit"
REQUEST = ('curl -X POST -H "Authorization: Bearer <admin token>" '
           """-d '{"messages_per_second":0,"burst_count":0}' """
           f"https://matrix.chat.example{PATH}")
TOKEN = "syt_admin_secret"
FORBIDDEN = MatrixRequestError("GET", PATH, 403, {"errcode": "M_FORBIDDEN",
                                                  "error": "You are not a server admin"})


class FakeHttp:
    """``MatrixHttp.request`` answering from a script: (status, body) or an exception."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, Any, str | None]] = []

    async def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                      ok_statuses: tuple[int, ...] = (200,),
                      timeout_seconds: float | None = None) -> tuple[int, dict[str, Any]]:
        self.calls.append((method, path, body, token))
        assert timeout_seconds is not None  # a start-up check never waits a minute
        answer = self.answers[method]
        if isinstance(answer, BaseException):
            raise answer
        return 200, answer


def app_with(answers: dict[str, Any] | None, exempt: bool = True
             ) -> tuple[NerbotApp, FakeHttp]:
    """A bot (not started) whose admin probe talks to ``answers``; None: no admin token."""
    raw: dict[str, Any] = {
        "matrix": {"homeserver": "https://matrix.chat.example/", "user_id": BOT},
        "synapse_admin": {"token": TOKEN if answers is not None else "",
                          "exempt_bot_from_ratelimit": exempt}}
    app = NerbotApp(parse_config(raw, {"NERBOT_PASSWORD": "pw"}, Path("/srv/nerbot")))
    http = FakeHttp(answers or {})
    if answers is not None:
        app.admin_probe = AdminProbe(http, TOKEN, backup_check=False)  # type: ignore[arg-type]
    return app, http


async def said(app: NerbotApp, caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    """Run the start-up step; the one line it logged (level, text)."""
    caplog.set_level(logging.DEBUG, logger="nerbot")
    await app._exempt_from_rate_limits()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "nerbot.app"]
    assert len(lines) == 1, lines
    assert TOKEN not in lines[0][1]
    return lines[0]


def test_the_request_for_the_operator_is_exact() -> None:
    assert lift_ratelimit_request("https://matrix.chat.example/", BOT) == REQUEST


def test_the_new_key_defaults_to_on() -> None:
    config = parse_config({}, {"NERBOT_PASSWORD": "pw"}, Path("/srv"))
    assert config.synapse_admin.exempt_bot_from_ratelimit is True
    with pytest.raises(Exception, match="exempt_bot_from_ratelimit: expected true or false"):
        parse_config({"synapse_admin": {"exempt_bot_from_ratelimit": "no"}},
                     {"NERBOT_PASSWORD": "pw"}, Path("/srv"))


async def test_without_a_token_nothing_is_asked_and_the_request_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, http = app_with(None)
    level, text = await said(app, caplog)
    assert level == logging.WARNING and text.endswith(REQUEST)
    assert "no synapse_admin.token" in text
    assert app.rate_limited is None and http.calls == []


async def test_no_override_is_lifted_to_zero(caplog: pytest.LogCaptureFixture) -> None:
    app, http = app_with({"GET": {}, "POST": {"messages_per_second": 0, "burst_count": 0}})
    assert await said(app, caplog) == (
        logging.INFO, "Synapse rate limits: lifted for the bot (was no override; "
                      "override now 0/s, burst 0)")
    assert app.rate_limited is False
    assert http.calls == [("GET", PATH, None, TOKEN),
                          ("POST", PATH, {"messages_per_second": 0, "burst_count": 0}, TOKEN)]


async def test_a_limiting_override_is_lifted_too(caplog: pytest.LogCaptureFixture) -> None:
    app, http = app_with({"GET": {"messages_per_second": 2, "burst_count": 20},
                          "POST": {"messages_per_second": 0, "burst_count": 0}})
    level, text = await said(app, caplog)
    assert level == logging.INFO and "was override 2/s, burst 20" in text
    assert app.rate_limited is False and [c[0] for c in http.calls] == ["GET", "POST"]


@pytest.mark.parametrize("found", [{"messages_per_second": 0, "burst_count": 0},
                                   {"messages_per_second": 0, "burst_count": 7}])
async def test_an_exempt_bot_only_says_so(found: dict[str, int],
                                          caplog: pytest.LogCaptureFixture) -> None:
    app, http = app_with({"GET": found})
    level, text = await said(app, caplog)
    assert level == logging.INFO and text.startswith("Synapse rate limits: the bot is exempt")
    assert app.rate_limited is False and [c[0] for c in http.calls] == ["GET"]


async def test_with_the_exemption_off_it_checks_and_asks_the_operator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, http = app_with({"GET": {}}, exempt=False)
    level, text = await said(app, caplog)
    assert level == logging.WARNING and text.endswith(REQUEST)
    assert "(no override)" in text and "exempt_bot_from_ratelimit is false" in text
    assert app.rate_limited is True and [c[0] for c in http.calls] == ["GET"]


@pytest.mark.parametrize("error", [FORBIDDEN, TimeoutError(), ConnectionRefusedError(111, "x")],
                         ids=["not a server admin", "time-out", "unreachable"])
async def test_a_failed_check_is_one_warning_and_unknown(
    error: BaseException, caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = app_with({"GET": error})
    level, text = await said(app, caplog)
    assert level == logging.WARNING and text.endswith(REQUEST)
    assert text.startswith("Synapse rate limits: could not check the bot's override: ")
    assert app.rate_limited is None
    if error is FORBIDDEN:
        assert "403 M_FORBIDDEN You are not a server admin" in text


@pytest.mark.parametrize("post", [FORBIDDEN, {"messages_per_second": 1, "burst_count": 1}],
                         ids=["refused", "stored limits"])
async def test_limits_that_could_not_be_lifted_are_known(
    post: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = app_with({"GET": {"messages_per_second": 1, "burst_count": 1}, "POST": post})
    level, text = await said(app, caplog)
    assert level == logging.WARNING and text.endswith(REQUEST)
    assert text.startswith("Synapse rate limits: could not lift them (override 1/s, burst 1)")
    assert app.rate_limited is True


@pytest.mark.parametrize(("body", "expected"), [
    ({}, None),
    ({"messages_per_second": 0, "burst_count": 0}, RatelimitOverride(0, 0)),
    ({"messages_per_second": 0.2, "burst_count": 10}, RatelimitOverride(0.2, 10)),
    ({"messages_per_second": None, "burst_count": None}, RatelimitOverride(0, 0)),  # null = 0
    ({"messages_per_second": True, "burst_count": 0}, ValueError),
    ({"messages_per_second": False, "burst_count": 0}, ValueError),
    ({"burst_count": 5}, RatelimitOverride(0, 5)),
    ({"messages_per_second": 0, "burst_count": "x"}, ValueError),
])
async def test_what_synapse_answers_is_read_as_synapse_means_it(
    body: dict[str, Any], expected: RatelimitOverride | type[ValueError] | None,
) -> None:
    app, _ = app_with({"GET": body})
    assert app.admin_probe is not None
    if expected is ValueError:  # never taken for an exemption
        with pytest.raises(ValueError, match="unexpected override_ratelimit answer"):
            await app.admin_probe.ratelimit_override(BOT)
        return
    found = await app.admin_probe.ratelimit_override(BOT)
    assert found == expected
    assert found is None or found.unlimited == (not body.get("messages_per_second"))


async def test_a_malformed_answer_is_a_failed_check(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = app_with({"GET": {"messages_per_second": "0"}})
    level, text = await said(app, caplog)
    assert level == logging.WARNING and "unexpected override_ratelimit answer" in text
    assert app.rate_limited is None
