"""Config validation: every kind of problem, reported all at once, as `key: what is wrong`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nerbot.cli import main
from nerbot.config import load_config, parse_config
from nerbot.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENV = {"NERBOT_PASSWORD": "pw-from-env"}


def problems(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, ENV if env is None else env, Path("/srv/nerbot"))
    return info.value.lines()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"bot": {"langauge": "en"}}, 'bot.langauge: unknown key (did you mean "language"?)'),
        ({"matrx": {}}, 'matrx: unknown key (did you mean "matrix"?)'),
        ({"matrix": {"homeserver": 8008}}, "matrix.homeserver: expected a string, got integer"),
        ({"bot": {"undecryptable_grace_seconds": True}},
         "bot.undecryptable_grace_seconds: expected an integer, got boolean"),
        ({"bot": {"admins": "@a:b"}}, "bot.admins: expected a list, got string"),
        ({"bot": {"admins": ["@a:b", 3]}}, "bot.admins[1]: expected a string, got integer"),
        ({"matrix": {"homeserver": "ftp://example.org"}},
         "matrix.homeserver: must be an http:// or https:// URL with a host"),
        ({"matrix": {"homeserver": "example.org"}},
         "matrix.homeserver: must be an http:// or https:// URL with a host"),
        ({"matrix": {"homeserver": "https://example.org/_matrix"}},
         "matrix.homeserver: must be the server's base URL (no path, query or fragment)"),
        ({"matrix": {"user_id": "nerbot"}},
         "matrix.user_id: not a Matrix user ID (expected @name:server)"),
        ({"bot": {"admins": ["alice@example.org"]}},
         "bot.admins[0]: not a Matrix user ID (expected @name:server)"),
        ({"bot": {"allowed_servers": ["bad server"]}},
         "bot.allowed_servers[0]: not a server name (expected host[:port])"),
        ({"bot": {"language": "fr"}}, "bot.language: must be one of zh, en"),
        ({"bot": {"undecryptable_grace_seconds": 0}},
         "bot.undecryptable_grace_seconds: must be between 1 and 3600"),
        ({"logging": {"level": "LOUD"}},
         "logging.level: must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"matrix": "x"}, "matrix: expected a table, got string"),
    ],
)
def test_each_kind_of_problem(raw: dict[str, Any], expected: str) -> None:
    assert problems(raw) == [expected]


def test_missing_secret() -> None:
    assert problems({}, env={}) == [
        "matrix.password: missing: set it here or in the environment variable NERBOT_PASSWORD"
    ]


def test_placeholder_password_is_rejected() -> None:
    assert problems({"matrix": {"password": "CHANGE_ME"}}, env={}) == [
        "matrix.password: still the example placeholder"
    ]


def test_all_problems_are_reported_together() -> None:
    found = problems({"matrix": {"user_id": "x", "homeserver": "nope"}, "bot": {"x": 1}}, env={})
    assert len(found) == 4


def test_env_overrides_file_secrets_and_repr_hides_them() -> None:
    config = parse_config(
        {"matrix": {"password": "from-file"}, "synapse_admin": {"token": "file-token"}},
        {"NERBOT_PASSWORD": "from-env", "NERBOT_ADMIN_TOKEN": "env-token"},
        Path("/srv"),
    )
    assert config.matrix.password == "from-env"
    assert config.synapse_admin.token == "env-token"
    assert "from-env" not in repr(config) and "env-token" not in repr(config)


def test_empty_admin_token_is_none() -> None:
    assert parse_config({}, ENV, Path("/srv")).synapse_admin.token is None


def test_relative_data_dir_resolves_against_config_dir(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.toml"
    path.parent.mkdir()
    path.write_text('[storage]\ndata_dir = "state"\n')
    config = load_config(path, ENV)
    assert config.storage.data_dir == (tmp_path / "conf" / "state").resolve()
    assert config.database_path.parent == config.storage.data_dir


def test_inviter_servers_default_to_own_server() -> None:
    config = parse_config({"matrix": {"user_id": "@bot:nerchat.example"}}, ENV, Path("/"))
    assert config.inviter_servers == ("nerchat.example",)
    config = parse_config({"bot": {"allowed_servers": ["a.example", "b.example:8448"]}}, ENV,
                          Path("/"))
    assert config.inviter_servers == ("a.example", "b.example:8448")


def test_example_file_parses_with_env_password_only() -> None:
    example = ROOT / "config.example.toml"
    assert load_config(example, ENV).matrix.user_id == "@nerbot:localhost"
    with pytest.raises(ConfigError) as info:
        load_config(example, {})
    assert info.value.lines() == [
        "matrix.password: missing: set it here or in the environment variable NERBOT_PASSWORD"
    ]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "none.toml", ENV)
    assert info.value.lines()[0].startswith("<file>: not found")
    bad = tmp_path / "bad.toml"
    bad.write_text("[matrix\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, ENV)
    assert info.value.lines()[0].startswith("<file>: not valid TOML")


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NERBOT_PASSWORD", raising=False)
    bad = tmp_path / "c.toml"
    bad.write_text('[matrix]\nuser_id = "nobody"\n[bot]\nlanguage = "fr"\n')
    assert main(["check-config", "-c", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "matrix.user_id: not a Matrix user ID (expected @name:server)",
        "matrix.password: missing: set it here or in the environment variable NERBOT_PASSWORD",
        "bot.language: must be one of zh, en",
    ]
    monkeypatch.setenv("NERBOT_PASSWORD", "pw")
    assert main(["check-config", "-c", str(ROOT / "config.example.toml")]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")


def test_run_fails_fast_on_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NERBOT_PASSWORD", "pw")
    bad = tmp_path / "c.toml"
    bad.write_text('[matrix]\nhomeserver = "nope"\n')
    assert main(["run", "-c", str(bad)]) == 1
    assert capsys.readouterr().err.strip() == (
        "matrix.homeserver: must be an http:// or https:// URL with a host")


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("nerbot 0.")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for sub in ("run", "check-config", "demo", "reset-identity", "fingerprint"):
        assert sub in out
