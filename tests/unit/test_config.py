"""Config validation: every kind of problem, reported all at once, as `key: what is wrong`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from nerbot.cli import main
from nerbot.config import (
    BotConfig,
    Config,
    GuidesConfig,
    LoggingConfig,
    MatrixConfig,
    StorageConfig,
    SynapseAdminConfig,
    load_config,
    parse_config,
)
from nerbot.errors import ConfigError
from nerbot.ids import UserId

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"
ENV = {"NERBOT_PASSWORD": "pw-from-env"}
MISSING_PASSWORD = (
    "matrix.password: missing: set it here or in the environment variable NERBOT_PASSWORD"
)
NOT_URL = "matrix.homeserver: must be an http:// or https:// URL with a host"
NOT_BASE_URL = "matrix.homeserver: must be the server's base URL (no path, query or fragment)"


def problems(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """The `key: message` lines parse_config reports for ``raw``."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, ENV if env is None else env, Path("/srv/nerbot"))
    return info.value.lines()


def file_problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV if env is None else env)
    return info.value.lines()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # unknown sections and keys, with a suggestion when one is close
        ({"bot": {"langauge": "en"}}, 'bot.langauge: unknown key (did you mean "language"?)'),
        ({"bot": {"colour": "red"}}, "bot.colour: unknown key"),
        ({"matrx": {}}, 'matrx: unknown section (did you mean "matrix"?)'),
        ({"weather": {}}, "weather: unknown section"),
        # wrong types
        ({"matrix": "x"}, "matrix: expected a table, got string"),
        ({"matrix": {"homeserver": 8008}}, "matrix.homeserver: expected a string, got integer"),
        ({"matrix": {"device_name": 1.5}}, "matrix.device_name: expected a string, got float"),
        ({"storage": {"data_dir": ["a"]}}, "storage.data_dir: expected a string, got list"),
        ({"bot": {"language": {"x": 1}}}, "bot.language: expected a string, got table"),
        ({"bot": {"undecryptable_grace_seconds": True}},
         "bot.undecryptable_grace_seconds: expected an integer, got boolean"),
        ({"bot": {"undecryptable_grace_seconds": "30"}},
         "bot.undecryptable_grace_seconds: expected an integer, got string"),
        ({"bot": {"admins": "@a:b"}}, "bot.admins: expected a list, got string"),
        ({"bot": {"admins": ["@a:b", 3]}}, "bot.admins[1]: expected a string, got integer"),
        ({"bot": {"allowed_servers": [False]}},
         "bot.allowed_servers[0]: expected a string, got boolean"),
        ({"synapse_admin": {"token": 1}}, "synapse_admin.token: expected a string, got integer"),
        # homeserver URLs
        ({"matrix": {"homeserver": "ftp://example.org"}}, NOT_URL),
        ({"matrix": {"homeserver": "example.org"}}, NOT_URL),
        ({"matrix": {"homeserver": "https://"}}, NOT_URL),
        ({"matrix": {"homeserver": ""}}, NOT_URL),
        ({"matrix": {"homeserver": "https://exa mple.org"}}, NOT_URL),
        ({"matrix": {"homeserver": "https://example.org:99999"}}, NOT_URL),
        ({"matrix": {"homeserver": "http://[::1"}}, NOT_URL),
        ({"matrix": {"homeserver": "https://example.org/_matrix"}}, NOT_BASE_URL),
        ({"matrix": {"homeserver": "https://example.org/?x=1"}}, NOT_BASE_URL),
        ({"matrix": {"homeserver": "https://example.org#top"}}, NOT_BASE_URL),
        ({"matrix": {"homeserver": "https://bot:pw@example.org"}},
         "matrix.homeserver: must not contain a user name or password"),
        # identifiers
        ({"matrix": {"user_id": "nerbot"}},
         "matrix.user_id: not a Matrix user ID (expected @name:server)"),
        ({"matrix": {"user_id": "@nerbot"}},
         "matrix.user_id: not a Matrix user ID (expected @name:server)"),
        ({"bot": {"admins": ["@ok:example.org", "alice@example.org"]}},
         "bot.admins[1]: not a Matrix user ID (expected @name:server)"),
        ({"bot": {"allowed_servers": ["bad server"]}},
         "bot.allowed_servers[0]: not a server name (expected host[:port])"),
        ({"bot": {"allowed_servers": ["https://example.org"]}},
         "bot.allowed_servers[0]: not a server name (expected host[:port])"),
        # choices, ranges, emptiness
        ({"bot": {"language": "fr"}}, "bot.language: must be one of zh, en"),
        ({"bot": {"undecryptable_grace_seconds": 0}},
         "bot.undecryptable_grace_seconds: must be between 1 and 3600"),
        ({"bot": {"undecryptable_grace_seconds": 3601}},
         "bot.undecryptable_grace_seconds: must be between 1 and 3600"),
        ({"logging": {"level": "LOUD"}},
         "logging.level: must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"matrix": {"device_name": "  "}}, "matrix.device_name: must not be empty"),
        ({"storage": {"data_dir": ""}}, "storage.data_dir: must not be empty"),
        ({"storage": {"keep_days": 6}}, "storage.keep_days: must be between 7 and 3650"),
        ({"storage": {"keep_days": 3651}}, "storage.keep_days: must be between 7 and 3650"),
        ({"storage": {"keep_days": "180"}}, "storage.keep_days: expected an integer, got string"),
        ({"storage": {"keep_days": 1.5}}, "storage.keep_days: expected an integer, got float"),
        # placeholders copied from examples
        ({"synapse_admin": {"token": "CHANGE_ME"}},
         "synapse_admin.token: still the example placeholder"),
    ],
)
def test_each_kind_of_problem(raw: dict[str, Any], expected: str) -> None:
    assert problems(raw) == [expected]


@pytest.mark.parametrize("env", [{}, {"NERBOT_PASSWORD": ""}])
def test_missing_password(env: dict[str, str]) -> None:
    assert problems({}, env=env) == [MISSING_PASSWORD]


@pytest.mark.parametrize("placeholder", ["CHANGE_ME", "changeme", " Change-Me "])
def test_placeholder_password_is_rejected(placeholder: str) -> None:
    assert problems({"matrix": {"password": placeholder}}, env={}) == [
        "matrix.password: still the example placeholder"
    ]


def test_wrongly_typed_password_is_reported_once() -> None:
    assert problems({"matrix": {"password": 1234}}, env={}) == [
        "matrix.password: expected a string, got integer"
    ]


def test_all_problems_are_reported_together_in_order() -> None:
    raw = {
        "matrix": {"user_id": "x", "homeserver": "nope"},
        "bot": {"x": 1, "admins": ["a", "@b:c", 7], "undecryptable_grace_seconds": -1},
        "logging": {"level": "verbose"},
        "mystery": {},
    }
    assert problems(raw, env={}) == [
        "mystery: unknown section",
        "bot.x: unknown key",
        "bot.admins[2]: expected a string, got integer",
        NOT_URL,
        "matrix.user_id: not a Matrix user ID (expected @name:server)",
        MISSING_PASSWORD,
        "bot.undecryptable_grace_seconds: must be between 1 and 3600",
        "logging.level: must be one of DEBUG, INFO, WARNING, ERROR",
    ]


def test_defaults() -> None:
    config = parse_config({}, ENV, Path("/srv/nerbot"))
    assert config == Config(
        matrix=MatrixConfig("http://127.0.0.1:8008", UserId("@nerbot:localhost"), "pw-from-env",
                            "nerbot"),
        storage=StorageConfig(Path("/srv/nerbot/data")),
        bot=BotConfig("zh", (), (), 30),
        synapse_admin=SynapseAdminConfig(None),
        logging=LoggingConfig("INFO"),
        source=None,
    )


def test_web_client_url_default_and_validation() -> None:
    """``[guides] web_client_url``: the community's own Element Web for the phone path of
    verify-sessions; empty by default (no link, never a public client)."""
    assert parse_config({}, ENV, Path("/srv")).guides == GuidesConfig("")
    for url in ("https://chat.example.org", "http://10.0.0.5:8080", "https://chat.example/#/",
                "  https://chat.example.org  "):
        config = parse_config({"guides": {"web_client_url": url}}, ENV, Path("/srv"))
        assert config.guides.web_client_url == url.strip()
    bad = "guides.web_client_url: must be an http:// or https:// URL with a host, or empty"
    for url in ("chat.example.org", "ftp://chat.example", "https://", "https://a b.example",
                "https://chat.example/(x)", "javascript:alert(1)", "https://x:99999"):
        assert problems({"guides": {"web_client_url": url}}) == [bad], url
    assert problems({"guides": {"web_client_url": "https://me:pw@chat.example"}}) == [
        "guides.web_client_url: must not contain a user name or password"]
    assert problems({"guides": {"web_client_url": 5}}) == [
        "guides.web_client_url: expected a string, got integer"]
    assert problems({"guides": {"web_client": "x"}}) == [
        'guides.web_client: unknown key (did you mean "web_client_url"?)']


def test_keep_days_default_and_bounds() -> None:
    assert parse_config({}, ENV, Path("/srv")).storage.keep_days == 180
    for days in (7, 30, 3650):
        config = parse_config({"storage": {"keep_days": days}}, ENV, Path("/srv"))
        assert config.storage == StorageConfig(Path("/srv/data"), keep_days=days)


def test_values_are_normalised() -> None:
    config = parse_config(
        {"matrix": {"homeserver": "https://matrix.example.org/"},
         "bot": {"language": "en", "admins": ["@a:example.org"]},
         "logging": {"level": "debug"}},
        ENV, Path("/"),
    )
    assert config.matrix.homeserver == "https://matrix.example.org"
    assert config.bot.admins == ("@a:example.org",)
    assert config.logging.level == "DEBUG"
    assert config.is_admin("@a:example.org") and not config.is_admin("@b:example.org")


def test_env_overrides_file_secrets_and_repr_hides_them() -> None:
    config = parse_config(
        {"matrix": {"password": "from-file"}, "synapse_admin": {"token": "file-token"}},
        {"NERBOT_PASSWORD": "from-env", "NERBOT_ADMIN_TOKEN": "env-token"},
        Path("/srv"),
    )
    assert config.matrix.password == "from-env"
    assert config.synapse_admin.token == "env-token"
    for text in (repr(config), str(config), repr(config.matrix), repr(config.synapse_admin)):
        assert "from-env" not in text and "env-token" not in text


def test_file_secrets_used_when_env_empty() -> None:
    config = parse_config(
        {"matrix": {"password": "from-file"}, "synapse_admin": {"token": "file-token"}},
        {"NERBOT_PASSWORD": "", "NERBOT_ADMIN_TOKEN": ""},
        Path("/srv"),
    )
    assert config.matrix.password == "from-file"
    assert config.synapse_admin.token == "file-token"
    assert "from-file" not in repr(config) and "file-token" not in repr(config)


def test_empty_admin_token_is_none() -> None:
    assert parse_config({}, ENV, Path("/srv")).synapse_admin.token is None


def test_config_is_frozen() -> None:
    config = parse_config({}, ENV, Path("/srv"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bot.language = "en"  # type: ignore[misc]


def test_relative_data_dir_resolves_against_config_dir(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.toml"
    path.parent.mkdir()
    path.write_text('[storage]\ndata_dir = "state"\n')
    config = load_config(path, ENV)
    data_dir = (tmp_path / "conf" / "state").resolve()
    assert config.storage.data_dir == data_dir
    assert config.source == path.resolve()
    assert config.session_path == data_dir / "session.json"
    assert config.crypto_store_dir == data_dir / "crypto"
    assert config.cross_signing_keys_path == data_dir / "cross-signing.json"
    assert config.database_path == data_dir / "nerbot.db"


def test_absolute_and_home_data_dir() -> None:
    assert parse_config({"storage": {"data_dir": "/var/lib/nerbot"}}, ENV,
                        Path("/etc")).storage.data_dir == Path("/var/lib/nerbot")
    home = parse_config({"storage": {"data_dir": "~/nerbot"}}, ENV, Path("/etc")).storage.data_dir
    assert home == Path.home() / "nerbot"


def test_inviter_servers_default_to_own_server() -> None:
    config = parse_config({"matrix": {"user_id": "@bot:nerchat.example"}}, ENV, Path("/"))
    assert config.inviter_servers == ("nerchat.example",)
    config = parse_config({"bot": {"allowed_servers": ["a.example", "b.example:8448"]}}, ENV,
                          Path("/"))
    assert config.inviter_servers == ("a.example", "b.example:8448")


def test_example_file_parses_with_env_password_only() -> None:
    config = load_config(EXAMPLE, ENV)
    assert config.matrix.user_id == "@nerbot:localhost"
    assert config.matrix.password == "pw-from-env"
    assert config.storage.data_dir == ROOT / "data"
    assert config.bot.undecryptable_grace_seconds == 30
    assert file_problems(EXAMPLE, env={}) == [MISSING_PASSWORD]


def test_example_file_documents_every_default() -> None:
    """The example is the reference: its values are exactly parse_config's defaults."""
    from_example = load_config(EXAMPLE, ENV)
    from_nothing = parse_config({}, ENV, ROOT)
    assert dataclasses.replace(from_example, source=None) == from_nothing


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    assert file_problems(missing) == [f"<file>: not found: {missing}"]


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[matrix]\nhomeserver = "x"\nuser_id = \n')
    [line] = file_problems(bad)
    assert line.startswith("<file>: not valid TOML: ")
    assert "line 3" in line and "column" in line


def test_problems_inside_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[bot]\nlanguage = "fr"\nadmins = ["@a:b", 1]\n')
    assert file_problems(path) == [
        "bot.admins[1]: expected a string, got integer",
        "bot.language: must be one of zh, en",
    ]


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NERBOT_PASSWORD", raising=False)
    bad = tmp_path / "c.toml"
    bad.write_text('[matrix]\nuser_id = "nobody"\n[bot]\nlanguage = "fr"\n')
    assert main(["check-config", "-c", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "matrix.user_id: not a Matrix user ID (expected @name:server)",
        MISSING_PASSWORD,
        "bot.language: must be one of zh, en",
    ]
    monkeypatch.setenv("NERBOT_PASSWORD", "pw")
    assert main(["check-config", "-c", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")


def test_run_fails_fast_on_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NERBOT_PASSWORD", "pw")
    bad = tmp_path / "c.toml"
    bad.write_text('[matrix]\nhomeserver = "nope"\n')
    assert main(["run", "-c", str(bad)]) == 1
    assert capsys.readouterr().err.strip() == NOT_URL


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("nerbot 0.")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for sub in ("run", "check-config", "demo", "reset-identity", "fingerprint"):
        assert sub in out
