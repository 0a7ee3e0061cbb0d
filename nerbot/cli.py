"""Command line: the only module that prints (results for a person at a terminal)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from nerbot import __version__
from nerbot.config import Config, load_config
from nerbot.datadir import check_data_dir
from nerbot.errors import ConfigError, IdentityError
from nerbot.logs import configure_logging

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_IDENTITY = 3
EXIT_LOGIN = 4

RESET_WARNING = """\
WARNING: this replaces the bot's cross-signing identity (master, self-signing and user-signing
keys). Everyone who verified the bot will see that its identity changed and will have to verify
it again. Publish the new fingerprint (nerbot fingerprint) where your users can check it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerbot",
        description="End-to-end-encrypted Matrix bot that helps people keep their keys backed "
        "up and their sessions verified.",
    )
    parser.add_argument("--version", action="version", version=f"nerbot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", required=True, type=Path, help="path to config.toml")
        return p

    with_config("run", "run the bot")
    with_config("check-config", "validate a config file and list every problem")
    reset = with_config("reset-identity", "replace the bot's cross-signing keys (asks first)")
    reset.add_argument("--yes", action="store_true", help="confirm the replacement")
    with_config("fingerprint", "print the bot's master-key fingerprint to publish")
    report = with_config("report", "the community's encryption report, from the bot's database "
                         "(works while the bot is stopped; needs no password)")
    report.add_argument("--json", action="store_true",
                        help="the stable JSON document (README: \"The report\")")
    report.add_argument("--lang", choices=("zh", "en"), default=None,
                        help="language of the text report (default: bot.language)")
    demo = sub.add_parser(
        "demo",
        help="start a throw-away local Synapse, the bot and a demo user, and show them talking",
        description="Start a throw-away local Synapse on 127.0.0.1, the bot and a demo user; the "
        "demo user opens an encrypted DM and sends !help; keeps running until Ctrl-C.",
    )
    demo.add_argument("--workdir", type=Path, default=Path(".nerbot-demo"),
                      help="where the homeserver and bot keep their data (default: .nerbot-demo)")
    demo.add_argument("--port", type=int, default=None, help="homeserver port (default: free)")
    demo.add_argument("--exit-after-reply", action="store_true",
                      help="stop once the bot has answered (for scripted checks)")
    return parser


def _load(path: Path) -> Config:
    config = load_config(path, os.environ)
    configure_logging(config.logging.level)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            checked = load_config(args.config, os.environ)
            # The data directory as the bot would find it: ConfigError if it would refuse to
            # start, notes about what it will make private itself (nerbot.datadir).
            for note in check_data_dir(checked.storage.data_dir):
                print(note)
            print(f"{args.config}: OK")
            return EXIT_OK
        if args.command == "demo":
            configure_logging("INFO")
            from nerbot.localdev.demo import run_demo

            return asyncio.run(run_demo(args.workdir, args.port, print, args.exit_after_reply))
        if args.command == "report":
            return _report(load_config(args.config, os.environ, offline=True), args.json,
                           args.lang)
        config = _load(args.config)
        if args.command == "run":
            return asyncio.run(_run(config))
        if args.command == "fingerprint":
            return _fingerprint(config)
        if args.command == "reset-identity":
            return asyncio.run(_reset_identity(config, args.yes))
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except IdentityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_IDENTITY
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_USAGE


async def _run(config: Config) -> int:
    from nerbot.app import NerbotApp
    from nerbot.matrix.session import LoginFailed

    app = NerbotApp(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Only possible in the main thread (tests call main() from a worker thread).
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(app.stop()))
    try:
        await app.run_until_stopped()
    except LoginFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOGIN
    finally:
        await app.stop()
    return EXIT_OK


def _report(config: Config, as_json: bool, lang: str | None) -> int:
    import json
    import time

    from nerbot.commands.report import render_community_report
    from nerbot.i18n import Catalog
    from nerbot.report_service import collect_report
    from nerbot.store import Store

    if not config.database_path.exists():
        print(f"No database at {config.database_path}: the bot has not run with this "
              "storage.data_dir yet.", file=sys.stderr)
        return EXIT_CONFIG
    store = Store(config.database_path)
    try:
        report = collect_report(store, int(time.time() * 1000), config.bot.admins)
    finally:
        store.close()
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        catalog = Catalog.load(default=config.bot.language)
        print(render_community_report(catalog, lang or config.bot.language, report,
                                      list(config.bot.admins)))
    return EXIT_OK


def _fingerprint(config: Config) -> int:
    from nerbot.matrix.crosssigning import CrossSigningKeys, fingerprint

    keys = CrossSigningKeys.load(config.cross_signing_keys_path)
    if keys is None:
        print(f"No cross-signing keys in {config.cross_signing_keys_path} yet: start the bot "
              "once (nerbot run) to create them.", file=sys.stderr)
        return EXIT_IDENTITY
    print(fingerprint(keys.master_public))
    return EXIT_OK


async def _reset_identity(config: Config, confirmed: bool) -> int:
    from nerbot.datadir import prepare_data_dir, restrict_umask
    from nerbot.matrix.crosssigning import fingerprint
    from nerbot.matrix.http import MatrixHttp
    from nerbot.matrix.identity import reset_identity
    from nerbot.matrix.session import open_session
    from nerbot.store import Store

    print(RESET_WARNING, file=sys.stderr)
    if not confirmed:
        print("Nothing changed. Run again with --yes to replace the identity.", file=sys.stderr)
        return EXIT_USAGE
    restrict_umask()
    prepare_data_dir(config.storage.data_dir)  # as the bot does at start: or ConfigError
    store = Store(config.database_path)
    session = await open_session(config, store)
    http = MatrixHttp(config.matrix.homeserver, session.access_token)
    try:
        result = await reset_identity(
            http, config.matrix.user_id, session.device_id, session.device_ed25519,
            config.matrix.password, config.cross_signing_keys_path,
        )
    finally:
        await http.close()
        with contextlib.suppress(Exception):
            await session.client.close()
        store.close()
    print(f"New master-key fingerprint: {fingerprint(result.master_key)}")
    return EXIT_OK
