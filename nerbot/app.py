"""Composition root: config → store → catalog → Matrix session → identity → commands → sync."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nerbot.alarm_service import AlarmService
from nerbot.alert_service import AlertService
from nerbot.clock import SystemClock
from nerbot.commands.basic import basic_commands
from nerbot.commands.guide import GuideConversation, guide_commands
from nerbot.commands.registry import CommandRegistry, CommandRouter, IncomingText
from nerbot.commands.remind import MessageText, remind_commands
from nerbot.commands.report import report_commands
from nerbot.commands.status import status_commands
from nerbot.commands.verify import VerificationConversation, verify_commands
from nerbot.config import Config
from nerbot.datadir import prepare_data_dir, restrict_umask
from nerbot.domain.admin_trust import AdminCheck, check_admin_session
from nerbot.domain.assessment import AssessmentPolicy
from nerbot.domain.community import CommunityReport, day_of
from nerbot.domain.reminders import held_kinds
from nerbot.domain.verification import VerificationLimits
from nerbot.errors import ConfigError, FactsUnavailable
from nerbot.guides import load_library
from nerbot.hygiene import HygieneService
from nerbot.i18n import Catalog
from nerbot.i18n.catalog import load_sas_emoji
from nerbot.ids import EventId, RoomId, UserId, server_of
from nerbot.logs import quiet_libraries
from nerbot.matrix.admin import AdminProbe, lift_ratelimit_request, override_text
from nerbot.matrix.crosssigning import CrossSigningKeys, fingerprint
from nerbot.matrix.events import EventRouter
from nerbot.matrix.http import MatrixHttp
from nerbot.matrix.identity import IdentityResult, ensure_identity
from nerbot.matrix.keys import FETCH_ERRORS, KeyDirectory, user_exists
from nerbot.matrix.reachability import UNREACHABLE_ERRORS, Recovery, versions_probe
from nerbot.matrix.roomindex import RoomIndex
from nerbot.matrix.session import MatrixSession, open_session
from nerbot.matrix.syncer import SyncLoop
from nerbot.matrix.transport import DirectRooms, MatrixTransport
from nerbot.matrix.verification import VerificationService
from nerbot.metrics import BotMetrics, MetricsServer, StateSources
from nerbot.outbox import OutboxSender
from nerbot.ports import Clock
from nerbot.reminder_service import LAST_SCAN_META, ReminderService
from nerbot.report_service import RATE_LIMITED_META, collect_report, snapshot_today
from nerbot.runner import TaskRunner
from nerbot.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_START_META = "first_started_ms"
UNDECRYPTABLE_RETRY_SECONDS = 1.0
RETENTION_EVERY_SECONDS = 24 * 3600


class NerbotApp:
    """One running bot. ``start`` returns once the first sync has been processed."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.catalog = Catalog.load(default=config.bot.language)
        self.runner = TaskRunner()
        self.store: Store | None = None
        self.session: MatrixSession | None = None
        self.http: MatrixHttp | None = None
        self.transport: MatrixTransport | None = None
        self.identity: IdentityResult | None = None
        self.events: EventRouter | None = None
        self.router: CommandRouter | None = None
        self.hygiene: HygieneService | None = None
        self.directory: KeyDirectory | None = None
        self.verifier: VerificationService | None = None
        self.guides: GuideConversation | None = None
        self.admin_probe: AdminProbe | None = None
        self.outbox: OutboxSender | None = None
        self.alerts: AlertService | None = None
        self.alarms: AlarmService | None = None
        self.reminders: ReminderService | None = None
        self.text: MessageText | None = None
        self.syncer: SyncLoop | None = None
        self.room_index: RoomIndex | None = None
        self.recovery: Recovery | None = None
        # Does Synapse rate-limit the bot's account? None: not known (no admin token, or the
        # check failed); False: exempt (override with rate 0); True: limits apply.
        self.rate_limited: bool | None = None
        self.metrics = BotMetrics()  # counted always; served only with [metrics] listen
        self.metrics_server: MetricsServer | None = None
        self._stopped = asyncio.Event()
        self._stopping: asyncio.Future[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, first_sync_timeout: float = 120.0) -> None:
        quiet_libraries()  # whoever configured logging, nio must not log tokens
        config = self.config
        restrict_umask()  # before anything is written to the data directory
        prepare_data_dir(config.storage.data_dir)  # or ConfigError: it cannot be made private
        store = self.store = Store(config.database_path)
        now = self.clock.now_ms()
        if store.get_meta(FIRST_START_META) is None:
            store.set_meta(FIRST_START_META, str(now))
        not_before = int(store.get_meta(FIRST_START_META) or now)

        http = self.http = MatrixHttp(config.matrix.homeserver)
        self.recovery = Recovery(versions_probe(http.versions))
        session = self.session = await self._when_reachable(
            lambda: open_session(config, store), "login"
        )
        client = session.client
        http.access_token = session.access_token
        if not session.resumes_sync:  # see Store.claim_event
            # No stored sync position (crypto store new or recreated): the first sync brings
            # each room's latest events however old, which a claim kept a week may not cover;
            # as on the very first start, what came before this start is not for the bot.
            not_before = max(not_before, self.clock.now_ms())
        self.identity = await self._when_reachable(
            lambda: ensure_identity(
                http,
                config.matrix.user_id,
                session.device_id,
                session.device_ed25519,
                config.matrix.password,
                config.cross_signing_keys_path,
            ),
            "cross-signing setup",
        )
        logger.info("Cross-signing identity: %s", self.identity.state.value)

        transport = self.transport = MatrixTransport(client, http, store, self.clock)
        hygiene = self.hygiene = self._build_hygiene(http)
        await self._exempt_from_rate_limits()
        if self.rate_limited is not None:  # for `nerbot report` on a stopped bot
            store.set_meta(RATE_LIMITED_META, "limited" if self.rate_limited else "exempt")
        registry = CommandRegistry()
        registry.extend(
            basic_commands(registry, store, self.clock.now_ms, self.master_fingerprint)
        )
        registry.extend(status_commands(hygiene, lambda user: user_exists(http, user)))
        registry.extend(report_commands(
            self.community_report, list(config.bot.admins), config.admin.room,
            encrypted=lambda room: self._room_state(RoomId(room)) == "encrypted"))
        guides = self.guides = GuideConversation(load_library(), store, hygiene, transport,
                                                 self.catalog, self.clock.now_ms,
                                                 config.guides.web_client_url)
        verifier = self.verifier = self._build_verifier(client, http, store, transport,
                                                        on_verified=guides.on_verified)
        registry.extend(verify_commands(verifier, transport.ensure_dm))
        registry.extend(guide_commands(guides))
        reminders = self._build_outreach(store, transport)
        assert self.text is not None
        registry.extend(remind_commands(store, hygiene, reminders.decision_for, self.text,
                                        self.clock.now_ms))
        self.router = CommandRouter(
            registry, self.catalog, transport, store.get_language, self._check_admin,
            interpret=guides.interpret, metrics=self.metrics,
        )
        events = self.events = EventRouter(
            client,
            store,
            self.runner,
            self.clock,
            inviter_servers=frozenset(config.inviter_servers),
            grace_seconds=config.bot.undecryptable_grace_seconds,
            on_message=self._on_message,
            on_joined=self._on_joined,
            on_undecryptable=self._on_undecryptable,
            not_before_ms=not_before,
            on_devices_changed=self._on_devices_changed,
        )
        events.register()
        verifier.register()
        rooms = self.room_index = RoomIndex(client, store)
        resume_from = rooms.resume()
        events.resume_gaps()  # before the first sync: its messages come after these
        # After the EventRouter's: a sync's position is saved once its device changes were
        # noted (AlertService), so a crash between the two replays the sync, never skips it.
        rooms.register()

        def refused(initial: bool) -> None:
            rooms.refused()
            if initial:  # each room's latest events however old: as on a start without a
                # stored position, what came before now is not for the bot
                events.not_before_ms = max(events.not_before_ms, self.clock.now_ms())

        syncer = self.syncer = SyncLoop(client, self.recovery, settle=self.runner.settle,
                                        on_reconnected=self._on_reconnected,
                                        resume_from=resume_from, on_resume_refused=refused)
        events.sync_since = lambda: syncer.since
        self.runner.spawn(syncer.run(), name="sync")
        self.runner.every(UNDECRYPTABLE_RETRY_SECONDS, events.hold.retry, name="undecryptable")
        await asyncio.wait_for(syncer.first_sync.wait(), first_sync_timeout)
        for kept in rooms.pending_invites:
            assert kept.inviter is not None
            events.decide_kept_invite(kept.room_id, kept.inviter, kept.is_direct)
        if self.alerts is not None:
            self.alerts.resume()  # changes the last run noted and did not get to check
        if config.metrics.listen:
            await self._serve_metrics(store, syncer)
        self.runner.every(RETENTION_EVERY_SECONDS, self._prune, name="retention")
        if config.reminders.enabled:
            reminders.start()  # delivers what a crash left pending, then scans if one is due
        elif store.pending_messages(limit=1):  # alerts (or old reminders) a crash left pending
            assert self.outbox is not None
            self.runner.spawn(self.outbox.deliver(), name="outbox at start")
        self.runner.spawn(verifier.end_interrupted(), name="end interrupted verifications")
        self.runner.spawn(guides.resend_unsent(), name="guide steps a crash kept back")
        self.runner.spawn(self._check_own_account(), name="own account")
        self.runner.spawn(transport.direct.reconcile(), name="m.direct at start")
        if self.alarms is not None:
            self.alarms.check_room()  # says at once if the admin room cannot take alarms
        logger.info("nerbot is running as %s (device %s)", client.user_id, client.device_id)

    async def stop(self) -> None:
        """Stop once; a second caller (the CLI's ``finally`` after SIGTERM's handler) waits
        for the first to finish, or the loop would end with sessions still open."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        self._stopped.set()
        if self.metrics_server is not None:  # first: its gauges read the store
            await self.metrics_server.stop()
        if self.reminders is not None:
            await self.reminders.stop()
        if self.syncer is not None:
            self.syncer.stop()
        await self.runner.stop()
        if self.transport is not None:
            await self.transport.close()
        if self.session is not None:
            await self.session.client.close()
        if self.http is not None:
            await self.http.close()
        if self.store is not None:
            self.store.close()
        logger.info("nerbot stopped")

    async def run_until_stopped(self) -> None:
        await self.start()
        await self._stopped.wait()

    def _build_hygiene(self, http: MatrixHttp) -> HygieneService:
        config = self.config
        self.directory = KeyDirectory(http, shares_room=self._shares_room)
        admin = None
        if config.synapse_admin.token:
            admin = self.admin_probe = AdminProbe(http, config.synapse_admin.token,
                               backup_check=config.synapse_admin.backup_check == "admin-login",
                               concurrency=config.synapse_admin.concurrency, clock=self.clock)
        policy = AssessmentPolicy(stale_after_days=config.assessment.stale_after_days)
        home = server_of(config.matrix.user_id)
        assert self.store is not None
        return HygieneService(self.directory, admin, policy, self.clock,
                              is_local=lambda user_id: server_of(user_id) == home,
                              record=self.store.record_assessments,
                              activity=admin.listed if admin is not None else None,
                              kept=self.store)

    async def _exempt_from_rate_limits(self) -> None:
        """Check Synapse's rate-limit override for the bot and, unless switched off, set it
        to 0/0 (no limits): Synapse's defaults throttle the bot like one person typing.

        Sets ``rate_limited``. One log line says what was found or done; every failure is a
        WARNING with the request a server admin can run instead, and never stops the bot.
        """
        config = self.config
        bot = config.matrix.user_id
        request = lift_ratelimit_request(config.matrix.homeserver, bot)
        probe = self.admin_probe
        if probe is None:
            self.rate_limited = None
            logger.warning("Synapse rate limits: not checked (no synapse_admin.token); with "
                           "Synapse's defaults the bot is throttled like one person (8 people "
                           "asking at once wait 25 s instead of 0.35 s). A server admin lifts "
                           "them for the bot with: %s", request)
            return
        step = "check the bot's override"
        try:
            found = await probe.ratelimit_override(bot)
            if found is not None and found.unlimited:
                self.rate_limited = False
                logger.info("Synapse rate limits: the bot is exempt (%s, set before)",
                            override_text(found))
                return
            self.rate_limited = True
            if not config.synapse_admin.exempt_bot_from_ratelimit:
                logger.warning("Synapse rate limits apply to the bot (%s) and "
                               "synapse_admin.exempt_bot_from_ratelimit is false; a server "
                               "admin lifts them with: %s", override_text(found), request)
                return
            step = f"lift them ({override_text(found)})"
            now = await probe.lift_ratelimit(bot)
        except Exception as exc:  # a start-up check must never stop the bot
            logger.warning("Synapse rate limits: could not %s: %s; a server admin lifts them "
                           "for the bot with: %s", step, str(exc) or type(exc).__name__,
                           request)
            return
        if now is None or not now.unlimited:
            logger.warning("Synapse rate limits: could not %s: Synapse stored %s; a server "
                           "admin lifts them for the bot with: %s", step, override_text(now),
                           request)
            return
        self.rate_limited = False
        logger.info("Synapse rate limits: lifted for the bot (was %s; override now %s)",
                    override_text(found), now)

    def _build_outreach(self, store: Store, transport: MatrixTransport) -> ReminderService:
        """Reminders and alerts, sharing one text source and one exactly-once outbox."""
        config = self.config
        assert self.hygiene is not None and self.directory is not None
        text = self.text = MessageText(self.catalog, store, config.reminders.policy.zone)
        policy = config.reminders.policy
        outbox = self.outbox = OutboxSender(
            store, transport, self.clock.now_ms, config.reminders.max_sends_per_minute,
            metrics=self.metrics, held_kinds=lambda: held_kinds(self.clock.now_ms(), policy))
        directory = self.directory
        alerts = self.alerts = AlertService(
            store, directory, text, outbox, self.clock, self.runner, config.matrix.user_id,
            debounce_seconds=config.alerts.debounce_seconds, enabled=config.alerts.enabled)

        async def observe(user_id: UserId) -> object:  # the scan's facts, no extra query
            return await alerts.check(user_id, facts=directory.cached(user_id), deliver=False)

        self.reminders = ReminderService(config.reminders, store, self.hygiene, self._audience,
                                         text, outbox, self.clock, observe_keys=observe,
                                         on_scanned=self._scanned)
        outbox.still_wanted = self.reminders.still_due
        alarms = self.alarms = AlarmService(
            store, self.catalog, config.bot.language, self.clock, config.admin.room,
            self._room_state, deliver=self._deliver_soon,
            logins_per_day=config.admin.unverified_logins_per_day, counted=self.metrics.alarm)
        alerts.on_new_sessions = alarms.sessions_counted
        return self.reminders

    def _on_devices_changed(self, user_ids: list[str], first_sync: bool = False) -> None:
        if self.config.matrix.user_id in user_ids:  # the bot's own account: is it still ours?
            self.runner.spawn(self._check_own_account(), name="own account")
        if self.hygiene is not None:
            # A full-state first sync (no kept position) lists every room-mate, changed or not.
            # Admin facts kept from the last run then stand or fall by the user listing
            # (changing one's own devices is a request, which moves ``last_seen_ts``). A
            # resumed first sync lists real changes, like any later one.
            full_state = first_sync and not (self.room_index and self.room_index.resumed)
            self.hygiene.invalidate(user_ids, keep_admin_facts=full_state)
        if self.alerts is not None:
            self.alerts.devices_changed(user_ids)

    async def _audience(self) -> list[UserId]:
        """Whom reminders cover: room-mates from allowed servers, or every local user."""
        config = self.config
        if config.reminders.scope == "all-local" and self.admin_probe is not None:
            users = await self.admin_probe.local_users()
        else:
            assert self.session is not None
            users = sorted({u for room in self.session.client.rooms.values()
                            for u in room.users})
        servers = set(config.inviter_servers)
        return [UserId(u) for u in users
                if u != config.matrix.user_id and server_of(u) in servers]

    def _build_verifier(self, client: Any, http: MatrixHttp, store: Store,
                        transport: MatrixTransport,
                        on_verified: Callable[[UserId], Awaitable[None]]
                        ) -> VerificationService:
        config = self.config
        keys = CrossSigningKeys.load(config.cross_signing_keys_path)
        verifier = VerificationService(
            client, http, store, self.clock, self.runner,
            cross_signing=lambda: keys,
            is_allowed=lambda user: server_of(user) in config.inviter_servers,
            limits=VerificationLimits(config.verification.max_per_hour,
                                      config.verification.max_cancels_per_hour),
            send_room=lambda room, kind, content: transport.send_content(room, content, kind),
            metrics=self.metrics,
        )
        conversation = VerificationConversation(transport, self.catalog, load_sas_emoji(),
                                                store.get_language)
        conversation.on_verified.append(on_verified)
        verifier.ui = conversation
        verifier.on_mismatch = lambda user, txn, transport, code: (
            self.alarms.mismatch(user, txn, transport, code) if self.alarms else None)
        return verifier

    async def _serve_metrics(self, store: Store, syncer: SyncLoop) -> None:
        """``/metrics`` and ``/health`` on ``[metrics] listen``; a taken port stops the start."""
        settings = self.config.metrics

        def seconds_since_scan() -> float | None:
            last = store.get_meta(LAST_SCAN_META)
            return None if last is None else max(0, self.clock.now_ms() - int(last)) / 1000

        self.metrics.watch(StateSources(
            people=store.hygiene_state_counts,
            outbox_pending=store.pending_count,
            seconds_since_sync=syncer.seconds_since_success,
            seconds_since_scan=seconds_since_scan,
            rate_limited=lambda: self.rate_limited,
        ))
        server = MetricsServer(self.metrics, settings.host, settings.port,
                               syncer.seconds_since_success,
                               settings.health_max_sync_age_seconds,
                               rate_limited=lambda: self.rate_limited)
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError([("metrics.listen", f"cannot listen on {settings.listen}: "
                                f"{exc.strerror or exc}")]) from None
        self.metrics_server = server

    # -- operators: report, admin trust, alarms --------------------------------------------

    def community_report(self) -> CommunityReport:
        assert self.store is not None
        now = self.clock.now_ms()
        if not self.store.daily_snapshots([day_of(now)]):
            snapshot_today(self.store, now)
        return collect_report(self.store, now, self.config.bot.admins, self.rate_limited)

    def _scanned(self, users: list[UserId]) -> None:
        """After a full scan: people no longer served drop out; today's numbers are kept."""
        assert self.store is not None
        gone = self.store.forget_assessments_except(users)
        if gone:
            logger.info("Report: %d people no longer served left the numbers", gone)
        snapshot_today(self.store, self.clock.now_ms())

    async def _check_admin(self, user_id: UserId, sender_key: str | None) -> AdminCheck:
        """An admin command is taken only from a session the admin's own identity signed."""
        if not self.config.is_admin(user_id):
            return AdminCheck.NOT_ADMIN
        assert self.directory is not None
        result = AdminCheck.NOT_ENCRYPTED
        for fresh in (False, True):  # a session made a moment ago may not be cached yet
            facts = (await self.directory.facts([user_id], fresh=fresh)).get(user_id)
            if facts is None:
                raise FactsUnavailable(user_id)
            result = check_admin_session(True, sender_key, facts)
            if result in (AdminCheck.TRUSTED, AdminCheck.NOT_ENCRYPTED):
                break
        return result

    def _room_state(self, room_id: RoomId) -> str:
        assert self.session is not None
        client = self.session.client
        if room_id in client.invited_rooms:
            return "invited"
        room = client.rooms.get(room_id)
        if room is None or self.config.matrix.user_id not in room.users:
            return "absent"
        return "encrypted" if room.encrypted else "unencrypted"

    def _deliver_soon(self) -> None:
        if self.outbox is not None:
            self.runner.spawn(self.outbox.deliver(), name="outbox for an alarm")

    async def _check_own_account(self) -> None:
        """Sessions of the bot's account other than its own, or an identity not its own,
        mean someone else has the bot's password: the admins' loudest alarm."""
        assert self.http is not None and self.session is not None
        assert self.identity is not None and self.directory is not None
        if self.alarms is None:
            return
        bot = self.config.matrix.user_id
        try:
            _, response = await self.http.request("GET", "/_matrix/client/v3/devices")
            facts = (await self.directory.facts([bot], fresh=True)).get(bot)
        except FETCH_ERRORS as exc:
            logger.warning("Could not check the bot's own sessions: %s", exc)
            return
        devices = {str(d.get("device_id")): d.get("display_name")
                   for d in response.get("devices", []) if isinstance(d, dict)}
        self.alarms.own_account(bot, self.session.device_id, devices,
                                facts.master_key if facts is not None else None,
                                self.identity.master_key)

    async def _prune(self) -> None:
        """Old records go (``Store.prune`` says which; pending messages never)."""
        assert self.store is not None
        self.store.prune(self.clock.now_ms(), self.config.storage.keep_days)

    def _shares_room(self, user_id: str) -> bool:
        return self.events is not None and self.events.shares_room(user_id)

    def master_fingerprint(self) -> str:
        assert self.identity is not None
        return fingerprint(self.identity.master_key)

    # -- helpers ----------------------------------------------------------------------------

    async def _when_reachable(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``attempt``, waiting out an unreachable homeserver (probed every few seconds)."""
        assert self.recovery is not None
        while True:
            try:
                return await attempt()
            except UNREACHABLE_ERRORS as exc:
                logger.warning("%s: homeserver unreachable (%s); checking every %.0f s",
                               what, type(exc).__name__, self.recovery.probe_seconds)
            await self.recovery.wait_until_reachable()

    def _on_reconnected(self) -> None:
        """Background work that failed while the homeserver was away is tried again now."""
        if self.outbox is not None and self.store is not None \
                and self.store.pending_messages(limit=1):
            self.runner.spawn(self.outbox.deliver(), name="outbox after outage")
        if self.alerts is not None:
            self.alerts.retry_now()
        if self.reminders is not None and self.config.reminders.enabled:
            self.runner.spawn(self.reminders.retry_failed(), name="scan after outage")
        if self.transport is not None:
            self.runner.spawn(self._direct_after_outage(self.transport.direct),
                              name="m.direct after outage")

    async def _direct_after_outage(self, direct: DirectRooms) -> None:
        """A ``m.direct`` write that failed meanwhile (and what a failed start-up check left
        undone) is written now, not only at the next new DM, stop or start."""
        try:
            await direct.reconcile()  # one read; a write only if the map lacks rooms
        except Exception as exc:  # still pending: the next reconnection, DM or stop writes it
            logger.warning("Writing m.direct after the outage failed: %s: %s",
                           type(exc).__name__, exc)

    # -- handlers ---------------------------------------------------------------------------

    async def _on_message(
        self, room_id: RoomId, sender: UserId, event_id: EventId, body: str, is_dm: bool,
        sender_key: str | None,
    ) -> None:
        assert self.router is not None and self.store is not None
        self.store.touch_user(sender, self.clock.now_ms())
        await self.router.handle(IncomingText(sender, room_id, event_id, body, is_dm,
                                              sender_key))

    async def _on_joined(self, room_id: RoomId, inviter: UserId, is_direct: bool) -> None:
        assert self.transport is not None and self.store is not None
        language = self.catalog.language(self.store.get_language(inviter))
        await self.transport.send_notice(room_id, self.catalog.t(language, "room.welcome"))

    async def _on_undecryptable(self, room_id: RoomId, sender: UserId) -> None:
        assert self.transport is not None and self.store is not None
        language = self.catalog.language(self.store.get_language(sender))
        await self.transport.send_notice(
            room_id, self.catalog.t(language, "room.undecryptable", user=sender)
        )
