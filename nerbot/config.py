"""Configuration: TOML → frozen dataclasses, validated once, every problem named by its key.

The keys under ``[matrix]``, ``[storage]``, ``[bot]`` and ``[synapse_admin]`` in
config.example.toml are a contract with operators and deployment scripts; keys of our own
(``bot.undecryptable_grace_seconds``, ``[logging]``) sit beside them. Secrets may come from the
environment so the file itself can be committed. Validation collects every problem before
raising, so an operator fixes a config in one round trip instead of one error per restart.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

from nerbot.domain.assessment import FindingKind
from nerbot.domain.reminders import ReminderSettings, parse_duration, parse_time_of_day
from nerbot.errors import ConfigError
from nerbot.ids import RoomId, UserId, is_room_id, is_server_name, is_user_id, server_of

PASSWORD_ENV: Final = "NERBOT_PASSWORD"
ADMIN_TOKEN_ENV: Final = "NERBOT_ADMIN_TOKEN"
METRICS_LISTEN_ENV: Final = "NERBOT_METRICS_LISTEN"
# Seconds without a successful sync before /health says unhealthy (1 s to a day).
HEALTH_MAX_SYNC_AGE_RANGE: Final = (1, 86400)
LANGUAGES: Final = ("zh", "en")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
GRACE_RANGE: Final = (1, 3600)
# A week at least: rate limits, the walkthroughs and the reports look that far back.
KEEP_DAYS_RANGE: Final = (7, 3650)
DEFAULT_KEEP_DAYS: Final = 180
BACKUP_CHECKS: Final = ("off", "admin-login")
REMINDER_SCOPES: Final = ("rooms", "all-local")
DEFAULT_SCAN_EVERY_MS: Final = 6 * 3600 * 1000
# Values people paste from examples and tutorials; a real secret is never one of these.
_PLACEHOLDERS: Final = frozenset(
    {"change_me", "changeme", "change-me", "change me", "your-password", "your_password",
     "yourpassword", "your-token", "your_token", "<password>", "<token>", "xxx", "todo"}
)
FILE_KEY: Final = "<file>"


@dataclass(frozen=True, slots=True)
class MatrixConfig:
    """How the bot reaches and logs in to its homeserver."""

    homeserver: str
    user_id: UserId
    password: str = field(repr=False)  # never in logs or tracebacks
    device_name: str


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where the bot's durable state lives (session, crypto store, keys, database).

    ``keep_days``: how long records of what happened (verifications, alerts, delivered
    messages, ended walkthroughs, invitations, at-risk changes) are kept; state the bot decides
    with (reminder choices, sessions seen) is kept for as long as it matters, whatever this
    says.
    """

    data_dir: Path
    keep_days: int = DEFAULT_KEEP_DAYS


@dataclass(frozen=True, slots=True)
class BotConfig:
    """Behaviour towards users: default language, who is admin, who may invite the bot."""

    language: Literal["zh", "en"]
    admins: tuple[UserId, ...]
    allowed_servers: tuple[str, ...]
    undecryptable_grace_seconds: int


@dataclass(frozen=True, slots=True)
class SynapseAdminConfig:
    """Optional Synapse admin API access, for facts the client API does not expose."""

    token: str | None = field(repr=False)  # never in logs or tracebacks
    # "admin-login": read a user's server-side key backup by logging in as them through the
    # admin API (creates no device). Opt-in: it is a strong power, so operators must choose it.
    backup_check: Literal["off", "admin-login"] = "off"
    concurrency: int = 8
    # Lift Synapse's rate limits for the bot's own account at start (admin API
    # override_ratelimit 0/0): its defaults throttle the bot like one person typing.
    exempt_bot_from_ratelimit: bool = True


@dataclass(frozen=True, slots=True)
class AssessmentConfig:
    """How the hygiene assessment judges sessions."""

    stale_after_days: int = 90


@dataclass(frozen=True, slots=True)
class VerificationConfig:
    """Limits against abuse of emoji verification, per user."""

    max_per_hour: int = 5
    max_cancels_per_hour: int = 3


@dataclass(frozen=True, slots=True)
class RemindersConfig:
    """When the reminder scan runs, whom it covers, how fast it may send; ``policy`` decides."""

    enabled: bool = True
    scan_every_ms: int = DEFAULT_SCAN_EVERY_MS
    scan_at_minute: int | None = None  # daily at this local time instead of every N
    # "rooms": members of rooms the bot shares; "all-local": every local user (admin API)
    scope: Literal["rooms", "all-local"] = "rooms"
    max_sends_per_minute: int = 20
    policy: ReminderSettings = field(default_factory=ReminderSettings)


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """New-session and identity-reset alerts, sent seconds after sync reports a change."""

    enabled: bool = True
    debounce_seconds: int = 5


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The operators' side: an encrypted room for alarms, and when logins are alarming.

    ``room``: where alarms go (verification mismatches, too many new unverified sessions of
    one person in a day, someone else in the bot's own account); None: alarms only in the log.
    """

    room: RoomId | None = None
    unverified_logins_per_day: int = 1  # the seed article's threshold


@dataclass(frozen=True, slots=True)
class GuidesConfig:
    """The walkthroughs. ``web_client_url``: the community's own Element Web, where the phone
    path of ``verify-sessions`` sends people (Element X shows no full session list); "" means
    no link, never a public client that may be slow or unreachable from here."""

    web_client_url: str = ""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus ``/metrics`` and ``/health`` on ``listen`` (``host:port``); "" means off.

    ``health_max_sync_age_seconds``: ``/health`` answers 503 once the last successful sync is
    older than this. An idle bot syncs every 30 s (the long poll), so keep it above that.
    """

    listen: str = ""
    health_max_sync_age_seconds: int = 120

    @property
    def host(self) -> str:
        """The address to bind (an IPv6 address without its brackets)."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Log verbosity; applied by the CLI, not here, so importing config has no side effects."""

    level: str


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; ``source`` is the file it came from, if any."""

    matrix: MatrixConfig
    storage: StorageConfig
    bot: BotConfig
    synapse_admin: SynapseAdminConfig
    logging: LoggingConfig
    assessment: AssessmentConfig = AssessmentConfig()
    verification: VerificationConfig = VerificationConfig()
    reminders: RemindersConfig = RemindersConfig()
    alerts: AlertsConfig = AlertsConfig()
    guides: GuidesConfig = GuidesConfig()
    metrics: MetricsConfig = MetricsConfig()
    admin: AdminConfig = AdminConfig()
    source: Path | None = None

    @property
    def inviter_servers(self) -> tuple[str, ...]:
        """Servers whose users may invite the bot; when none are listed, only the bot's own."""
        return self.bot.allowed_servers or (server_of(self.matrix.user_id),)

    def is_admin(self, user_id: str) -> bool:
        """Whether ``user_id`` may run admin commands (exact match, IDs are case-sensitive)."""
        return user_id in self.bot.admins

    @property
    def session_path(self) -> Path:
        """The stored login (access token, device ID), so restarts keep the same device."""
        return self.storage.data_dir / "session.json"

    @property
    def crypto_store_dir(self) -> Path:
        """The Olm/Megolm store; losing it means losing the bot's device keys."""
        return self.storage.data_dir / "crypto"

    @property
    def cross_signing_keys_path(self) -> Path:
        """The bot's private cross-signing keys (its published identity)."""
        return self.storage.data_dir / "cross-signing.json"

    @property
    def database_path(self) -> Path:
        """The bot's own SQLite database (user preferences, bookkeeping)."""
        return self.storage.data_dir / "nerbot.db"


# Section → key → (expected type, default). Types: str, int, or list (of str).
_SCHEMA: Final[dict[str, dict[str, tuple[type, Any]]]] = {
    "matrix": {
        "homeserver": (str, "http://127.0.0.1:8008"),
        "user_id": (str, "@nerbot:localhost"),
        "password": (str, ""),
        "device_name": (str, "nerbot"),
    },
    "storage": {"data_dir": (str, "./data"), "keep_days": (int, DEFAULT_KEEP_DAYS)},
    "bot": {
        "language": (str, "zh"),
        "admins": (list, []),
        "allowed_servers": (list, []),
        "undecryptable_grace_seconds": (int, 30),
    },
    "synapse_admin": {"token": (str, ""), "backup_check": (str, "off"),
                      "concurrency": (int, 8), "exempt_bot_from_ratelimit": (bool, True)},
    "assessment": {"stale_after_days": (int, 90)},
    "verification": {"max_per_hour": (int, 5), "max_cancels_per_hour": (int, 3)},
    "reminders": {
        "enabled": (bool, True),
        "scan_every": (str, "6h"),
        "scan_at": (str, ""),
        "scope": (str, "rooms"),
        "remind_about": (list, ["no_cross_signing", "no_backup", "no_secret_storage",
                                "unverified_sessions"]),
        "grace": (str, "24h"),
        "backoff": (list, ["1d", "3d", "7d", "30d"]),
        "quiet_hours": (str, "22:00-09:00"),
        "timezone": (str, "Asia/Shanghai"),
        "max_sends_per_minute": (int, 20),
    },
    "alerts": {"enabled": (bool, True), "debounce_seconds": (int, 5)},
    "guides": {"web_client_url": (str, "")},
    "admin": {"room": (str, ""), "unverified_logins_per_day": (int, 1)},
    "metrics": {"listen": (str, ""), "health_max_sync_age_seconds": (int, 120)},
    "logging": {"level": (str, "INFO")},
}

_TYPE_NAMES: Final[tuple[tuple[type, str], ...]] = (
    (bool, "boolean"),  # before int: bool is a subclass of int
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "list"),
    (Mapping, "table"),
)
_EXPECTED: Final[dict[type, str]] = {str: "a string", int: "an integer", list: "a list",
                                     bool: "true or false"}


def _type_name(value: object) -> str:
    """TOML's name for a value's type, as operators know it from the file."""
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__  # datetime, date, time


def _has_type(value: object, kind: type) -> bool:
    """isinstance, except that a boolean is not an integer (``true`` is not ``1``)."""
    if kind is int and isinstance(value, bool):
        return False
    return isinstance(value, kind)


def _did_you_mean(what: str, name: str, known: list[str]) -> str:
    """``unknown key`` plus the closest known name, since most unknown keys are typos."""
    close = difflib.get_close_matches(name, known, n=1)
    return f'unknown {what} (did you mean "{close[0]}"?)' if close else f"unknown {what}"


class _Problems:
    """Collects ``(key, message)`` pairs and remembers which keys already failed."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.failed: set[str] = set()

    def add(self, key: str, message: str) -> None:
        self.items.append((key, message))
        self.failed.add(key)


def _read_sections(raw: Mapping[str, Any], problems: _Problems) -> dict[str, dict[str, Any]]:
    """Type-check every key; wrongly typed or absent values fall back to their defaults.

    Falling back keeps later checks from reporting the same mistake a second time.
    """
    for section in raw:
        if section not in _SCHEMA:
            problems.add(str(section), _did_you_mean("section", str(section), list(_SCHEMA)))
    values: dict[str, dict[str, Any]] = {}
    for section, keys in _SCHEMA.items():
        values[section] = {name: default for name, (_, default) in keys.items()}
        table = raw.get(section, {})
        if not isinstance(table, Mapping):
            problems.add(section, f"expected a table, got {_type_name(table)}")
            continue
        for name, value in table.items():
            dotted = f"{section}.{name}"
            if name not in keys:
                problems.add(dotted, _did_you_mean("key", str(name), list(keys)))
                continue
            kind = keys[name][0]
            if not _has_type(value, kind):
                problems.add(dotted, f"expected {_EXPECTED[kind]}, got {_type_name(value)}")
                continue
            if kind is list:
                bad = [i for i, item in enumerate(value) if not isinstance(item, str)]
                for i in bad:
                    problems.add(f"{dotted}[{i}]", f"expected a string, got {_type_name(value[i])}")
                if bad:
                    problems.failed.add(dotted)
                    continue
            values[section][name] = value
    return values


def _http_url(url: str, key: str, problems: _Problems, what: str,
              forbidden: str = "") -> urllib.parse.SplitResult | None:
    """``url`` split, if it is an http(s) URL with a host and no credentials (else a problem
    under ``key``: ``what`` says what it must be; ``forbidden`` lists characters it may not
    contain)."""
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        problems.add(key, what)
        return None
    host = parsed.netloc.rpartition("@")[2]
    if parsed.scheme not in ("http", "https") or not parsed.hostname \
            or not is_server_name(host) or any(c in url for c in forbidden):
        problems.add(key, what)
    elif parsed.username is not None or parsed.password is not None:
        problems.add(key, "must not contain a user name or password")
    elif port == 0:
        problems.add(key, "has an invalid port")
    else:
        return parsed
    return None


def _check_homeserver(url: str, problems: _Problems) -> str:
    """The homeserver's base URL without a trailing slash (API paths are appended to it)."""
    key = "matrix.homeserver"
    parsed = _http_url(url, key, problems, "must be an http:// or https:// URL with a host")
    if parsed is not None and (parsed.path not in ("", "/") or parsed.query or parsed.fragment):
        problems.add(key, "must be the server's base URL (no path, query or fragment)")
    return url.rstrip("/")


def _web_client_url(url: str, problems: _Problems) -> str:
    """The community's Element Web: "" (no link), or an http(s) URL people can open."""
    url = url.strip()
    if url:
        _http_url(url, "guides.web_client_url", problems,
                  "must be an http:// or https:// URL with a host, or empty",
                  forbidden=" <>()[]\"'")
    return url


_HOST_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _listen_host(host: str) -> bool:
    """An IPv4 address, a host name, or an IPv6 address in brackets (``[::1]``)."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    if host.replace(".", "").isdigit():
        try:
            return ipaddress.ip_address(host).version == 4
        except ValueError:
            return False
    return _HOST_NAME.fullmatch(host) is not None


def _metrics(section: Mapping[str, Any], env: Mapping[str, str],
             problems: _Problems) -> MetricsConfig:
    """The ``[metrics]`` section; ``NERBOT_METRICS_LISTEN``, when set, overrides ``listen``."""
    from_env = env.get(METRICS_LISTEN_ENV, "").strip()
    listen = from_env or section["listen"].strip()
    if listen:
        host, colon, port = listen.rpartition(":")
        if not colon or not _listen_host(host) or not port.isascii() or not port.isdigit() \
                or not 1 <= int(port) <= 65535:
            origin = f" (from {METRICS_LISTEN_ENV})" if from_env else ""
            problems.add("metrics.listen", f'expected host:port like "127.0.0.1:9464" '
                                           f'(port 1 to 65535), or "" for off{origin}')
    age = section["health_max_sync_age_seconds"]
    low, high = HEALTH_MAX_SYNC_AGE_RANGE
    if not low <= age <= high:
        problems.add("metrics.health_max_sync_age_seconds", f"must be between {low} and {high}")
    return MetricsConfig(listen, age)


def _secret(file_value: str, env: Mapping[str, str], env_name: str) -> str:
    """The environment wins when set and non-empty, so deployments can keep the file public."""
    return env.get(env_name, "") or file_value


def _is_placeholder(value: str) -> bool:
    return value.strip().lower() in _PLACEHOLDERS


def _data_dir(value: str, base_dir: Path) -> Path:
    """``~`` expanded; relative paths are relative to the config file, not the working dir."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def _duration(value: str, key: str, problems: _Problems) -> int | None:
    try:
        return parse_duration(value)
    except ValueError:
        problems.add(key, "not a duration (like 90m, 6h, 1d or 2w, at most 365d)")
        return None


def _reminders(r: Mapping[str, Any], token: str, problems: _Problems) -> RemindersConfig:
    """The ``[reminders]`` section; the policy object validates itself (time zone, ranges)."""
    every = _duration(r["scan_every"], "reminders.scan_every", problems)
    if every is not None and every < 5 * 60 * 1000:
        problems.add("reminders.scan_every", "must be at least 5m")
    scan_at = None
    if r["scan_at"].strip():
        try:
            scan_at = parse_time_of_day(r["scan_at"])
        except ValueError:
            problems.add("reminders.scan_at", 'not a time of day (like "10:00"), or empty')
    scope = r["scope"]
    if scope not in REMINDER_SCOPES:
        problems.add("reminders.scope", f"must be one of {', '.join(REMINDER_SCOPES)}")
    elif scope == "all-local" and not token:
        problems.add("reminders.scope", f"all-local needs synapse_admin.token "
                                        f"(or {ADMIN_TOKEN_ENV})")
    kinds: list[FindingKind] = []
    known = [k.value for k in FindingKind]
    for i, name in enumerate(r["remind_about"]):
        if name in known:
            kinds.append(FindingKind(name))
        else:
            problems.add(f"reminders.remind_about[{i}]", _did_you_mean("finding", name, known))
    grace = _duration(r["grace"], "reminders.grace", problems) if r["grace"] != "0" else 0
    backoff = [_duration(v, f"reminders.backoff[{i}]", problems)
               for i, v in enumerate(r["backoff"])]
    if not r["backoff"]:
        problems.add("reminders.backoff", "must list at least one interval")
    quiet = r["quiet_hours"].replace(" ", "")
    start = end = 0
    if quiet:
        try:
            first, second = quiet.split("-")
            start, end = parse_time_of_day(first), parse_time_of_day(second)
        except ValueError:
            problems.add("reminders.quiet_hours", 'expected "HH:MM-HH:MM" (or "" for none)')
    if not 1 <= r["max_sends_per_minute"] <= 6000:
        problems.add("reminders.max_sends_per_minute", "must be between 1 and 6000")
    policy = ReminderSettings()
    if grace is not None and all(b is not None for b in backoff) and backoff:
        try:
            policy = ReminderSettings(
                remind_on=frozenset(kinds), grace_ms=grace,
                backoff_ms=tuple(b for b in backoff if b is not None),
                quiet_start_minute=start, quiet_end_minute=end, timezone=r["timezone"])
        except ValueError as exc:
            problems.add("reminders.timezone" if "zone" in str(exc) else "reminders", str(exc))
    return RemindersConfig(
        enabled=r["enabled"], scan_every_ms=every or DEFAULT_SCAN_EVERY_MS,
        scan_at_minute=scan_at, scope=cast(Literal["rooms", "all-local"], scope),
        max_sends_per_minute=r["max_sends_per_minute"], policy=policy)


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path,
                 offline: bool = False) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem at once.

    ``env`` supplies NERBOT_PASSWORD / NERBOT_ADMIN_TOKEN (passed in, so tests need not touch
    the process environment); ``base_dir`` anchors a relative ``storage.data_dir``.
    """
    problems = _Problems()
    v = _read_sections(raw, problems)
    m, s, b, a, lg = v["matrix"], v["storage"], v["bot"], v["synapse_admin"], v["logging"]

    homeserver = _check_homeserver(m["homeserver"], problems)
    if not is_user_id(m["user_id"]):
        problems.add("matrix.user_id", "not a Matrix user ID (expected @name:server)")
    password = _secret(m["password"], env, PASSWORD_ENV)
    if "matrix.password" in problems.failed:
        pass  # wrong type already reported; "missing" would only repeat it
    elif not password and not offline:  # offline: commands that never log in
        problems.add("matrix.password",
                     f"missing: set it here or in the environment variable {PASSWORD_ENV}")
    elif _is_placeholder(password):
        problems.add("matrix.password", "still the example placeholder")
    if not m["device_name"].strip():
        problems.add("matrix.device_name", "must not be empty")

    if not s["data_dir"].strip():
        problems.add("storage.data_dir", "must not be empty")
    data_dir = _data_dir(s["data_dir"], base_dir)
    low, high = KEEP_DAYS_RANGE
    if not low <= s["keep_days"] <= high:
        problems.add("storage.keep_days", f"must be between {low} and {high}")

    if b["language"] not in LANGUAGES:
        problems.add("bot.language", f"must be one of {', '.join(LANGUAGES)}")
    for i, admin in enumerate(b["admins"]):
        if not is_user_id(admin):
            problems.add(f"bot.admins[{i}]", "not a Matrix user ID (expected @name:server)")
    for i, server in enumerate(b["allowed_servers"]):
        if not is_server_name(server):
            problems.add(f"bot.allowed_servers[{i}]", "not a server name (expected host[:port])")
    grace = b["undecryptable_grace_seconds"]
    low, high = GRACE_RANGE
    if not low <= grace <= high:
        problems.add("bot.undecryptable_grace_seconds", f"must be between {low} and {high}")

    token = _secret(a["token"], env, ADMIN_TOKEN_ENV).strip()
    if token and _is_placeholder(token):
        problems.add("synapse_admin.token", "still the example placeholder")

    backup_check = a["backup_check"]
    if backup_check not in BACKUP_CHECKS:
        problems.add("synapse_admin.backup_check", f"must be one of {', '.join(BACKUP_CHECKS)}")
    elif backup_check != "off" and not token:
        problems.add("synapse_admin.backup_check",
                     f"needs synapse_admin.token (or {ADMIN_TOKEN_ENV})")
    if not 1 <= a["concurrency"] <= 64:
        problems.add("synapse_admin.concurrency", "must be between 1 and 64")
    stale_days = v["assessment"]["stale_after_days"]
    if not 1 <= stale_days <= 3650:
        problems.add("assessment.stale_after_days", "must be between 1 and 3650")

    ver = v["verification"]
    for key in ("max_per_hour", "max_cancels_per_hour"):
        if not 1 <= ver[key] <= 100:
            problems.add(f"verification.{key}", "must be between 1 and 100")

    reminders = _reminders(v["reminders"], token, problems)
    alerts = v["alerts"]
    if not 1 <= alerts["debounce_seconds"] <= 300:
        problems.add("alerts.debounce_seconds", "must be between 1 and 300")

    web_client_url = _web_client_url(v["guides"]["web_client_url"], problems)
    admin = v["admin"]
    admin_room = admin["room"].strip()
    if admin_room and not is_room_id(admin_room):
        problems.add("admin.room", "not a room ID (expected !id:server; Element shows it in "
                                   "the room's settings, Advanced)")
    if not 1 <= admin["unverified_logins_per_day"] <= 1000:
        problems.add("admin.unverified_logins_per_day", "must be between 1 and 1000")
    metrics = _metrics(v["metrics"], env, problems)

    level = lg["level"].strip().upper()
    if level not in LOG_LEVELS:
        problems.add("logging.level", f"must be one of {', '.join(LOG_LEVELS)}")

    if problems.items:
        raise ConfigError(problems.items)
    return Config(
        matrix=MatrixConfig(homeserver, UserId(m["user_id"]), password, m["device_name"]),
        storage=StorageConfig(data_dir, s["keep_days"]),
        bot=BotConfig(
            language=cast(Literal["zh", "en"], b["language"]),
            admins=tuple(UserId(x) for x in b["admins"]),
            allowed_servers=tuple(b["allowed_servers"]),
            undecryptable_grace_seconds=grace,
        ),
        synapse_admin=SynapseAdminConfig(
            token or None, cast(Literal["off", "admin-login"], backup_check), a["concurrency"],
            a["exempt_bot_from_ratelimit"]),
        logging=LoggingConfig(level),
        assessment=AssessmentConfig(stale_days),
        verification=VerificationConfig(ver["max_per_hour"], ver["max_cancels_per_hour"]),
        reminders=reminders,
        alerts=AlertsConfig(alerts["enabled"], alerts["debounce_seconds"]),
        guides=GuidesConfig(web_client_url),
        admin=AdminConfig(RoomId(admin_room) if admin_room else None,
                          admin["unverified_logins_per_day"]),
        metrics=metrics,
    )


def load_config(path: Path, env: Mapping[str, str] | None = None,
                offline: bool = False) -> Config:
    """Read and validate a config file; ``env`` defaults to the process environment.

    File-level failures (missing, unreadable, not TOML) are a single ``<file>`` problem, since
    nothing inside the file can be checked until it parses.
    """
    environment = os.environ if env is None else env
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([(FILE_KEY, f"not found: {path}")]) from None
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError([(FILE_KEY, f"cannot read {path}: {reason}")]) from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([(FILE_KEY, f"not valid UTF-8 (byte {exc.start})")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(FILE_KEY, f"not valid TOML: {exc}")]) from None
    source = path.resolve()
    return dataclasses.replace(parse_config(raw, environment, source.parent, offline),
                               source=source)
