"""Configuration: TOML → frozen dataclasses, validated once, every problem named by its key.

The keys under ``[matrix]``, ``[storage]``, ``[bot]`` and ``[synapse_admin]`` in
config.example.toml are a contract with operators and deployment scripts; keys of our own sit
beside them. Secrets may come from the environment so the file itself can be committed.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from nerbot.errors import ConfigError
from nerbot.ids import UserId, is_server_name, is_user_id, server_of

PASSWORD_ENV = "NERBOT_PASSWORD"
ADMIN_TOKEN_ENV = "NERBOT_ADMIN_TOKEN"
LANGUAGES = ("zh", "en")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PLACEHOLDERS = {"change_me", "changeme", "change-me", "your-password", "secret", "xxx"}


@dataclass(frozen=True, slots=True)
class MatrixConfig:
    homeserver: str
    user_id: UserId
    password: str = field(repr=False)
    device_name: str


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: Path


@dataclass(frozen=True, slots=True)
class BotConfig:
    language: Literal["zh", "en"]
    admins: tuple[UserId, ...]
    allowed_servers: tuple[str, ...]
    undecryptable_grace_seconds: int


@dataclass(frozen=True, slots=True)
class SynapseAdminConfig:
    token: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str


@dataclass(frozen=True, slots=True)
class Config:
    matrix: MatrixConfig
    storage: StorageConfig
    bot: BotConfig
    synapse_admin: SynapseAdminConfig
    logging: LoggingConfig
    source: Path | None = None

    @property
    def inviter_servers(self) -> tuple[str, ...]:
        """Servers whose users may invite the bot; by default only the bot's own."""
        return self.bot.allowed_servers or (server_of(self.matrix.user_id),)

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.bot.admins

    @property
    def session_path(self) -> Path:
        return self.storage.data_dir / "session.txt"

    @property
    def crypto_store_dir(self) -> Path:
        return self.storage.data_dir / "crypto"

    @property
    def cross_signing_keys_path(self) -> Path:
        return self.storage.data_dir / "cross-signing.json"

    @property
    def database_path(self) -> Path:
        return self.storage.data_dir / "nerbot.db"


# The schema: section → key → (type, default). Types: str, int, list-of-str.
_SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "matrix": {
        "homeserver": (str, "http://127.0.0.1:8008"),
        "user_id": (str, "@nerbot:localhost"),
        "password": (str, ""),
        "device_name": (str, "nerbot"),
    },
    "storage": {"data_dir": (str, "./data")},
    "bot": {
        "language": (str, "zh"),
        "admins": (list, []),
        "allowed_servers": (list, []),
        "undecryptable_grace_seconds": (int, 30),
    },
    "synapse_admin": {"token": (str, "")},
    "logging": {"level": (str, "INFO")},
}



def _type_name(value: object) -> str:
    for kind in (bool, int, float, str, list, dict):
        if isinstance(value, kind):
            return {bool: "boolean", int: "integer", float: "float", str: "string", list: "list",
                    dict: "table"}[kind]
    return type(value).__name__


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f'unknown key (did you mean "{close[0]}"?)' if close else "unknown key"


class _Collector:
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append((key, message))


def _read_sections(raw: Mapping[str, Any], problems: _Collector) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {}
    for section in raw:
        if section not in _SCHEMA:
            problems.add(section, _unknown(section, list(_SCHEMA)))
    for section, keys in _SCHEMA.items():
        table = raw.get(section, {})
        values[section] = {name: default for name, (_, default) in keys.items()}
        if not isinstance(table, dict):
            problems.add(section, f"expected a table, got {_type_name(table)}")
            continue
        for name, value in table.items():
            dotted = f"{section}.{name}"
            if name not in keys:
                problems.add(dotted, _unknown(name, list(keys)))
                continue
            kind = keys[name][0]
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                problems.add(dotted, f"expected an integer, got {_type_name(value)}")
            elif kind is str and not isinstance(value, str):
                problems.add(dotted, f"expected a string, got {_type_name(value)}")
            elif kind is list and not isinstance(value, list):
                problems.add(dotted, f"expected a list, got {_type_name(value)}")
            elif kind is list:
                bad = [i for i, item in enumerate(value) if not isinstance(item, str)]
                for i in bad:
                    problems.add(f"{dotted}[{i}]",
                                 f"expected a string, got {_type_name(value[i])}")
                if not bad:
                    values[section][name] = value
            else:
                values[section][name] = value
    return values


def _check_homeserver(url: str, problems: _Collector) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        problems.add("matrix.homeserver", "must be an http:// or https:// URL with a host")
    elif parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        problems.add("matrix.homeserver",
                     "must be the server's base URL (no path, query or fragment)")
    else:
        try:
            _ = parsed.port
        except ValueError:
            problems.add("matrix.homeserver", "has an invalid port")
    return url.rstrip("/")


def _secret(value: str, env: Mapping[str, str], env_name: str) -> str:
    from_env = env.get(env_name, "")
    return from_env if from_env else value


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems = _Collector()
    v = _read_sections(raw, problems)
    m, s, b, a, lg = v["matrix"], v["storage"], v["bot"], v["synapse_admin"], v["logging"]

    homeserver = _check_homeserver(m["homeserver"], problems)
    if not is_user_id(m["user_id"]):
        problems.add("matrix.user_id", "not a Matrix user ID (expected @name:server)")
    password = _secret(m["password"], env, PASSWORD_ENV)
    if not password:
        problems.add("matrix.password",
                     f"missing: set it here or in the environment variable {PASSWORD_ENV}")
    elif password.strip().lower() in PLACEHOLDERS:
        problems.add("matrix.password", "still the example placeholder")
    if not m["device_name"].strip():
        problems.add("matrix.device_name", "must not be empty")

    if not s["data_dir"].strip():
        problems.add("storage.data_dir", "must not be empty")
    data_dir = Path(os.path.expanduser(s["data_dir"]))
    if not data_dir.is_absolute():
        data_dir = (base_dir / data_dir).resolve()

    if b["language"] not in LANGUAGES:
        problems.add("bot.language", f"must be one of {', '.join(LANGUAGES)}")
    for i, admin in enumerate(b["admins"]):
        if not is_user_id(admin):
            problems.add(f"bot.admins[{i}]", "not a Matrix user ID (expected @name:server)")
    for i, server in enumerate(b["allowed_servers"]):
        if not is_server_name(server):
            problems.add(f"bot.allowed_servers[{i}]", "not a server name (expected host[:port])")
    grace = b["undecryptable_grace_seconds"]
    if not 1 <= grace <= 3600:
        problems.add("bot.undecryptable_grace_seconds", "must be between 1 and 3600")

    level = lg["level"].upper()
    if level not in LOG_LEVELS:
        problems.add("logging.level", f"must be one of {', '.join(LOG_LEVELS)}")

    if problems.problems:
        raise ConfigError(problems.problems)
    token = _secret(a["token"], env, ADMIN_TOKEN_ENV)
    return Config(
        matrix=MatrixConfig(homeserver, UserId(m["user_id"]), password, m["device_name"]),
        storage=StorageConfig(data_dir),
        bot=BotConfig(
            language=cast(Literal["zh", "en"], b["language"]),
            admins=tuple(UserId(x) for x in b["admins"]),
            allowed_servers=tuple(b["allowed_servers"]),
            undecryptable_grace_seconds=grace,
        ),
        synapse_admin=SynapseAdminConfig(token or None),
        logging=LoggingConfig(level),
    )


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file (env defaults to the process environment)."""
    environment = os.environ if env is None else env
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([("<file>", f"not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([("<file>", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([("<file>", f"not valid TOML: {exc}")]) from None
    config = parse_config(raw, environment, path.resolve().parent)
    return Config(config.matrix, config.storage, config.bot, config.synapse_admin,
                  config.logging, path.resolve())
