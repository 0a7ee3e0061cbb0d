// A Matrix verification peer on matrix-js-sdk + its Rust crypto (the crypto Element uses),
// driven by nerbot's tests over JSON lines.
//
// stdin:  one command per line: {"id": <any>, "cmd": "<name>", ...args}
// stdout: replies {"id": <same>, "ok": true, ...} / {"id": <same>, "ok": false, "error": "..."}
//         and events {"event": "<kind>", ...} as they happen. Nothing else is written to stdout.
// stderr: logs (matrix-js-sdk's own at JSPEER_LOG level, default "warn").
//
// One program for every SDK pair: JSPEER_SDK_DIR names the pair's directory (tests/jspeer for
// matrix-js-sdk 36 + crypto-wasm 13, tests/jspeer43 for 43 + 18; default: this file's own), and
// the SDK is loaded through that directory's sdk.mjs. Where the pairs differ, the peer asks the
// SDK what it has rather than trusting a version number.
//
// The protocol is documented in nerbot/localdev/jspeer.py.

import path from "node:path";
import process from "node:process";
import readline from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";

// Everything the SDK prints goes to stderr: stdout carries the protocol only. This must happen
// before the SDK is loaded, hence the dynamic imports below.
const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;
console.warn = toStderr;
console.trace = toStderr;

const SDK_DIR = path.resolve(process.env.JSPEER_SDK_DIR || path.dirname(fileURLToPath(import.meta.url)));
const { sdk, cryptoApi, logger, wasm, versions } = await import(pathToFileURL(path.join(SDK_DIR, "sdk.mjs")).href);
const { CryptoEvent, VerificationPhase, VerificationRequestEvent, VerifierEvent } = cryptoApi;
const SDK_VERSION = versions.js_sdk.split(".").map((n) => Number.parseInt(n, 10));

logger.setLevel(process.env.JSPEER_LOG || "warn", false);

const PHASES = {
  [VerificationPhase.Unsent]: "unsent",
  [VerificationPhase.Requested]: "requested",
  [VerificationPhase.Ready]: "ready",
  [VerificationPhase.Started]: "started",
  [VerificationPhase.Cancelled]: "cancelled",
  [VerificationPhase.Done]: "done",
};
const SAS = "m.sas.v1";
const VERIFICATION_PREFIX = "m.key.verification.";

const t0 = Date.now();
function log(...args) {
  console.error(`[jspeer ${((Date.now() - t0) / 1000).toFixed(3)}]`, ...args);
}

function send(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function emit(kind, fields) {
  send({ event: kind, t: Date.now(), ...fields });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function required(args, ...names) {
  for (const name of names) {
    if (args[name] === undefined || args[name] === null) throw new Error(`missing argument: ${name}`);
  }
}

// ---------------------------------------------------------------------------------------------
// State

let client = null;
let password = null; // kept for UIA (cross-signing bootstrap)
const secretStorageKeys = new Map(); // secret-storage key ID -> private key (bootstrap_recovery)
let stalled = false;
let seq = 0;

/** txn -> Tracked; `current` is the request the last request_device, request_dm, accept_next or next_request chose. */
const tracked = new Map();
let current = null;

/** Incoming requests not yet handed out by next_request/accept_next, and their waiters. */
const incoming = [];
const incomingWaiters = [];

function crypto() {
  if (!client) throw new Error("not logged in");
  const c = client.getCrypto();
  if (!c) throw new Error("crypto not initialised");
  return c;
}

function describe(req) {
  return {
    txn: req.transactionId ?? null,
    other_user: req.otherUserId,
    other_device: req.otherDeviceId ?? null,
    room_id: req.roomId ?? null,
    initiated_by_me: req.initiatedByMe,
    phase: PHASES[req.phase] ?? String(req.phase),
    // (req.methods throws "not implemented" in the Rust-backed request.)
    timeout_ms: req.timeout,
    chosen_method: req.chosenMethod ?? null,
  };
}

/**
 * One verification request this peer follows: emits its phase changes, drives SAS (start it
 * when `startSas` and the request is ready; accept it when the other side starts), and emits the
 * emoji/decimals, done and cancelled.
 */
class Tracked {
  constructor(req, { startSas }) {
    this.req = req;
    this.key = req.transactionId ?? `local-${++seq}`;
    this.startSas = startSas;
    this.lastPhase = null;
    this.verifier = null;
    this.sas = null;
    this.cancelReason = null;
    this.starting = false;
    this.finished = false;
    req.on(VerificationRequestEvent.Change, () => this.onChange());
    this.onChange();
  }

  get txn() {
    return this.req.transactionId ?? this.key;
  }

  onChange() {
    const req = this.req;
    if (req.transactionId && this.key !== req.transactionId) {
      tracked.delete(this.key);
      this.key = req.transactionId;
      tracked.set(this.key, this);
    }
    const phase = req.phase;
    if (phase !== this.lastPhase) {
      this.lastPhase = phase;
      emit("phase", { txn: this.txn, phase: PHASES[phase] ?? String(phase), other_user: req.otherUserId });
      if (phase === VerificationPhase.Done) this.finish("done", {});
      if (phase === VerificationPhase.Cancelled) {
        this.finish("cancelled", {
          code: req.cancellationCode ?? null,
          reason: this.cancelReason,
          by: req.cancellingUserId ?? null,
          by_me: req.cancellingUserId === client?.getUserId(),
        });
      }
    }
    if (stalled) return;
    if (phase === VerificationPhase.Ready && this.startSas && !this.starting && !req.verifier) {
      this.starting = true;
      req.startVerification(SAS).then(
        (verifier) => this.attach(verifier),
        (e) => log("startVerification failed:", e?.message ?? e),
      );
    }
    if (phase === VerificationPhase.Started && req.verifier && !this.verifier) {
      if (req.chosenMethod && req.chosenMethod !== SAS) {
        log("other side started", req.chosenMethod, "- only SAS is supported; cancelling");
        req.cancel({ code: "m.unknown_method", reason: "only m.sas.v1 here" }).catch(() => {});
        return;
      }
      this.attach(req.verifier);
    }
  }

  attach(verifier) {
    if (this.verifier) return;
    this.verifier = verifier;
    const onSas = (callbacks) => {
      this.sas = callbacks;
      emit("sas", {
        txn: this.txn,
        emoji: callbacks.sas.emoji ?? null,
        decimal: callbacks.sas.decimal ?? null,
        other_user: this.req.otherUserId,
      });
    };
    verifier.on(VerifierEvent.ShowSas, onSas);
    verifier.on(VerifierEvent.Cancel, (e) => {
      if (e instanceof Error) this.cancelReason = e.message;
      else if (e && typeof e.getContent === "function") this.cancelReason = e.getContent().reason ?? null;
    });
    // verify() sends accept/key as needed and resolves once the MACs match (or rejects on cancel).
    verifier.verify().then(
      () => log("verifier.verify() resolved for", this.txn),
      (e) => {
        this.cancelReason = this.cancelReason ?? e?.message ?? String(e);
        log("verifier.verify() rejected for", this.txn, this.cancelReason);
      },
    );
    const existing = verifier.getShowSasCallbacks();
    if (existing && !this.sas) onSas(existing);
  }

  finish(kind, fields) {
    if (this.finished) return;
    this.finished = true;
    emit(kind, { txn: this.txn, other_user: this.req.otherUserId, ...fields });
  }
}

function follow(req, opts) {
  const key = req.transactionId;
  if (key && tracked.has(key)) {
    const t = tracked.get(key);
    if (opts.startSas !== undefined) t.startSas = opts.startSas;
    t.onChange();
    return t;
  }
  const t = new Tracked(req, opts);
  tracked.set(t.key, t);
  return t;
}

function pick(args) {
  if (args.txn) {
    const t = tracked.get(args.txn);
    if (!t) throw new Error(`no verification request ${args.txn}`);
    return t;
  }
  if (!current) throw new Error("no current verification request");
  return current;
}

function onRequestReceived(req) {
  if (stalled) {
    log("stalled: ignoring incoming request", req.transactionId);
    return;
  }
  emit("request", describe(req));
  const waiter = incomingWaiters.shift();
  if (waiter) waiter(req);
  else incoming.push(req);
}

function nextIncoming(timeoutMs) {
  if (incoming.length) return Promise.resolve(incoming.shift());
  return new Promise((resolve, reject) => {
    const waiter = (req) => {
      clearTimeout(timer);
      resolve(req);
    };
    const timer = setTimeout(() => {
      const i = incomingWaiters.indexOf(waiter);
      if (i >= 0) incomingWaiters.splice(i, 1);
      reject(new Error(`no incoming verification request within ${timeoutMs} ms`));
    }, timeoutMs);
    incomingWaiters.push(waiter);
  });
}

/** Verification events in a batch of to-device events, dropped while stalled. */
function dropStalled(events) {
  if (!stalled) return events;
  const kept = events.filter((ev) => !String(ev.type ?? "").startsWith(VERIFICATION_PREFIX));
  for (const ev of events.filter((e) => !kept.includes(e))) {
    // One event per dropped step, with its transaction: a test waits for its own, not for a
    // late step of an earlier test's verification that happens to arrive during the stall.
    log(`stalled: dropped to-device ${ev.type}`);
    emit("stall_dropped", { transport: "to-device", type: String(ev.type),
                            txn: ev.content?.transaction_id ?? null });
  }
  return kept;
}

/**
 * From `stall` on, incoming verification steps (to-device and in-room) never reach the crypto.
 *
 * To-device events reach the Rust crypto through the sync loop's crypto callbacks, which
 * changed between the pairs:
 * - js-sdk 36: `preprocessToDeviceMessages(events)` with the to-device events alone (device
 *   lists and key counts went separately, to `processDeviceLists`/`processKeyCounts`);
 * - newer releases (43 here): one `processSyncChanges({toDeviceEvents, deviceLists,
 *   oneTimeKeysCounts, unusedFallbackKeys})` per sync response, returning the received messages.
 * Whichever this SDK has is wrapped; the rest of the response passes through untouched.
 * In-room steps go through the private `onKeyVerificationEvent` in both.
 */
function installStallFilter(rustCrypto) {
  if (typeof rustCrypto.processSyncChanges === "function") {
    const processSyncChanges = rustCrypto.processSyncChanges.bind(rustCrypto);
    rustCrypto.processSyncChanges = (changes) =>
      processSyncChanges({ ...changes, toDeviceEvents: dropStalled(changes.toDeviceEvents ?? []) });
  } else if (typeof rustCrypto.preprocessToDeviceMessages === "function") {
    const preprocess = rustCrypto.preprocessToDeviceMessages.bind(rustCrypto);
    rustCrypto.preprocessToDeviceMessages = (events) => preprocess(dropStalled(events));
  } else {
    throw new Error(`matrix-js-sdk ${versions.js_sdk}: no to-device hook to stall (processSyncChanges / preprocessToDeviceMessages)`);
  }
  if (typeof rustCrypto.onKeyVerificationEvent !== "function") {
    throw new Error(`matrix-js-sdk ${versions.js_sdk}: no onKeyVerificationEvent to stall`);
  }
  const onRoomEvent = rustCrypto.onKeyVerificationEvent.bind(rustCrypto);
  rustCrypto.onKeyVerificationEvent = async (event) => {
    if (stalled) {
      log("stalled: dropped in-room verification event", event.getType());
      emit("stall_dropped", { transport: "room", count: 1 });
      return;
    }
    return onRoomEvent(event);
  };
}

/**
 * js-sdk 36's initRustCrypto turns the Rust crypto's global tracing on at Debug: follow
 * JSPEER_LOG instead. Since 37.13 (matrix-js-sdk#4918) initRustCrypto hands the client's logger
 * to `OlmMachine.initFromStore` and turns no global tracing on, so `logger.setLevel` above
 * already governs the Rust side and nothing is turned on here.
 */
function quietRustTracing() {
  if (SDK_VERSION[0] > 37 || (SDK_VERSION[0] === 37 && SDK_VERSION[1] >= 13)) return;
  const level = (process.env.JSPEER_LOG || "warn").toLowerCase();
  const levels = {
    trace: wasm.LoggerLevel.Trace,
    debug: wasm.LoggerLevel.Debug,
    info: wasm.LoggerLevel.Info,
    warn: wasm.LoggerLevel.Warn,
    error: wasm.LoggerLevel.Error,
  };
  try {
    new wasm.Tracing(levels[level] ?? wasm.LoggerLevel.Warn).turnOn();
  } catch (e) {
    log("could not set Rust tracing level:", e?.message ?? e);
  }
}

function waitForSync(c, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("first sync timed out")), timeoutMs);
    const onSync = (state, _prev, data) => {
      if (state === "PREPARED" || state === "SYNCING") {
        clearTimeout(timer);
        c.off(sdk.ClientEvent.Sync, onSync);
        resolve();
      } else if (state === "ERROR") {
        log("sync error:", data?.error?.message ?? data);
      }
    };
    c.on(sdk.ClientEvent.Sync, onSync);
  });
}

/**
 * The next m.room.message `sender` sends into `roomId` from now on, once decrypted (an event
 * still being decrypted, or that failed to, is looked at again when it is decrypted). With
 * `expect`, a message whose body lacks it is skipped (its body goes into `skipped`).
 * Resolves to {at: performance.now() when readable, event_id, body, msgtype}; `.cancel()`
 * stops waiting.
 */
function nextMessage(roomId, sender, expect, skipped, timeoutMs) {
  const seen = new Set();
  let onTimeline, onDecrypted, timer, fail;
  const promise = new Promise((resolve, reject) => {
    fail = reject;
    const check = (ev) => {
      if (ev.getRoomId() !== roomId || ev.getSender() !== sender || seen.has(ev.getId())) return;
      if (ev.isBeingDecrypted() || ev.shouldAttemptDecryption() || ev.isDecryptionFailure()) return;
      if (ev.getType() !== "m.room.message") return;
      const at = performance.now();
      seen.add(ev.getId());
      const body = String(ev.getContent().body ?? "");
      if (expect && !body.includes(expect)) {
        skipped.push(body.slice(0, 200));
        return;
      }
      resolve({ at, event_id: ev.getId(), body, msgtype: ev.getContent().msgtype ?? null });
    };
    onTimeline = (ev, _room, toStart, removed) => {
      if (!toStart && !removed) check(ev);
    };
    onDecrypted = (ev) => check(ev);
    client.on(sdk.RoomEvent.Timeline, onTimeline);
    client.on(sdk.MatrixEventEvent.Decrypted, onDecrypted);
    timer = setTimeout(() => reject(new Error(`no message from ${sender} in ${roomId} within ${timeoutMs} ms`)), timeoutMs);
  });
  const done = () => {
    clearTimeout(timer);
    client.off(sdk.RoomEvent.Timeline, onTimeline);
    client.off(sdk.MatrixEventEvent.Decrypted, onDecrypted);
  };
  promise.then(done, done);
  promise.cancel = () => fail(new Error("cancelled"));
  return promise;
}

async function waitFor(check, timeoutMs, what, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------------------------
// Commands

const commands = {
  async login(args) {
    required(args, "homeserver", "user_id", "password");
    if (client) throw new Error("already logged in");
    const started = Date.now();
    const anon = sdk.createClient({ baseUrl: args.homeserver });
    const res = await anon.loginRequest({
      type: "m.login.password",
      identifier: { type: "m.id.user", user: args.user_id },
      password: args.password,
      initial_device_display_name: args.device_name ?? "jspeer",
    });
    password = args.password;
    client = sdk.createClient({
      baseUrl: args.homeserver,
      userId: res.user_id,
      deviceId: res.device_id,
      accessToken: res.access_token,
      // As Element does: the secret-storage key made by bootstrap_recovery is kept in memory,
      // so the crypto can store (and read back) secrets with it.
      cryptoCallbacks: {
        getSecretStorageKey: async ({ keys }) => {
          const keyId = Object.keys(keys).find((id) => secretStorageKeys.has(id));
          return keyId ? [keyId, secretStorageKeys.get(keyId)] : null;
        },
        cacheSecretStorageKey: (keyId, _keyInfo, key) => secretStorageKeys.set(keyId, key),
      },
    });
    await client.initRustCrypto({ useIndexedDB: false });
    quietRustTracing();
    installStallFilter(client.getCrypto());
    client.on(CryptoEvent.VerificationRequestReceived, onRequestReceived);
    const synced = waitForSync(client, (args.timeout ?? 30) * 1000);
    await client.startClient({ initialSyncLimit: 1, lazyLoadMembers: false });
    await synced;
    log(`logged in as ${res.user_id} / ${res.device_id}`);
    return {
      user_id: res.user_id,
      device_id: res.device_id,
      ed25519: client.getCrypto() ? (await client.getCrypto().getOwnDeviceKeys()).ed25519 : null,
      seconds: (Date.now() - started) / 1000,
    };
  },

  async bootstrap_cross_signing(args) {
    const pw = args.password ?? password;
    const c = crypto();
    const userId = client.getUserId();
    await c.bootstrapCrossSigning({
      setupNewCrossSigning: Boolean(args.reset),
      authUploadDeviceSigningKeys: async (makeRequest) => {
        const auth = { type: "m.login.password", identifier: { type: "m.id.user", user: userId }, password: pw };
        try {
          await makeRequest(auth);
        } catch (e) {
          // Some servers want the UIA session from a first, unauthenticated attempt.
          const session = e?.data?.session;
          if (!session) throw e;
          await makeRequest({ ...auth, session });
        }
      },
    });
    return {
      ready: await c.isCrossSigningReady(),
      master_key: await c.getCrossSigningKeyId(),
    };
  },

  /**
   * Element's "set up recovery": a new recovery key, secret storage with it as the default key
   * (the cross-signing private keys stored in it) and a new server-side key backup, whose key
   * goes into secret storage too. Needs bootstrap_cross_signing first.
   */
  async bootstrap_recovery() {
    const c = crypto();
    const recoveryKey = await c.createRecoveryKeyFromPassphrase();
    await c.bootstrapSecretStorage({
      createSecretStorageKey: async () => recoveryKey,
      setupNewSecretStorage: true,
      setupNewKeyBackup: true,
    });
    // js-sdk 36's resetKeyBackup starts a re-check of the server's backup without awaiting it
    // (getKeyBackupInfo then answers from the check made before the backup existed); 43's
    // starts none. Await a check here.
    const check = await c.checkKeyBackupAndEnable();
    // Readiness is judged from the client's copy of its account data, which the sync brings
    // back after the upload: wait (up to 10 s) for that echo, as Element's UI does.
    let ready = await c.isSecretStorageReady();
    for (let i = 0; !ready && i < 100; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      ready = await c.isSecretStorageReady();
    }
    return {
      secret_storage_ready: ready,
      backup_version: check?.backupInfo?.version ?? null,
      backup_trusted: check?.trustInfo?.trusted ?? null,
      backup_active_version: await c.getActiveSessionBackupVersion(),
      recovery_key: recoveryKey.encodedPrivateKey ?? null,
    };
  },

  async create_dm(args) {
    required(args, "user_id");
    const initial_state = args.encrypted === false ? [] : [
      { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
    ];
    const { room_id } = await client.createRoom({
      is_direct: true,
      preset: "trusted_private_chat",
      invite: [args.user_id],
      initial_state,
      name: args.name,
    });
    await waitFor(() => client.getRoom(room_id), 10_000, `room ${room_id} in sync`);
    return { room_id };
  },

  async join(args) {
    required(args, "room_id");
    await client.joinRoom(args.room_id);
    await waitFor(() => client.getRoom(args.room_id)?.getMyMembership() === "join", 10_000,
      `joined ${args.room_id} in sync`);
    return { room_id: args.room_id };
  },

  /** Wait until this peer's sync sees `user_id` with `membership` (default join) in the room. */
  async wait_member(args) {
    required(args, "room_id", "user_id");
    const membership = args.membership ?? "join";
    await waitFor(
      () => client.getRoom(args.room_id)?.getMember(args.user_id)?.membership === membership,
      (args.timeout ?? 15) * 1000, `${args.user_id} ${membership} in ${args.room_id}`);
    return {};
  },

  /**
   * Send `body` (m.text, encrypted if the room is) and, with `reply_from`, wait for that
   * user's next message in the room (see nextMessage). Timed here, not over the pipe:
   * `sent_ms` until the server accepted ours, `rtt_ms` until the reply was decrypted.
   */
  async send_text(args) {
    required(args, "room_id", "body");
    const skipped = [];
    const reply = args.reply_from
      ? nextMessage(args.room_id, args.reply_from, args.expect, skipped, (args.timeout ?? 30) * 1000)
      : null;
    reply?.catch(() => {}); // a failed send must not leave an unhandled rejection behind
    const started = performance.now();
    let event_id;
    try {
      ({ event_id } = await client.sendMessage(args.room_id, { msgtype: "m.text", body: args.body }));
    } catch (e) {
      reply?.cancel();
      throw e;
    }
    const sent_ms = performance.now() - started;
    if (!reply) return { event_id, sent_ms };
    const { at, ...message } = await reply;
    return { event_id, sent_ms, rtt_ms: at - started, reply: message, skipped };
  },

  async track(args) {
    required(args, "user_id");
    const c = crypto();
    const timeoutMs = (args.timeout ?? 15) * 1000;
    const devices = await waitFor(async () => {
      const map = await c.getUserDeviceInfo([args.user_id], true);
      const mine = map.get(args.user_id) ?? new Map();
      if (args.device_id && !mine.has(args.device_id)) return null;
      return mine;
    }, timeoutMs, `devices of ${args.user_id}`, 200);
    return { devices: [...devices.keys()] };
  },

  async request_device(args) {
    required(args, "user_id", "device_id");
    const req = await crypto().requestDeviceVerification(args.user_id, args.device_id);
    current = follow(req, { startSas: args.start_sas ?? true });
    return describe(req);
  },

  async request_dm(args) {
    required(args, "user_id", "room_id");
    const req = await crypto().requestVerificationDM(args.user_id, args.room_id);
    current = follow(req, { startSas: args.start_sas ?? true });
    return describe(req);
  },

  async next_request(args) {
    const req = await nextIncoming((args.timeout ?? 30) * 1000);
    current = follow(req, { startSas: args.start_sas ?? false });
    return describe(req);
  },

  async accept_next(args) {
    const req = await nextIncoming((args.timeout ?? 30) * 1000);
    current = follow(req, { startSas: args.start_sas ?? false });
    await req.accept();
    return describe(req);
  },

  async accept(args) {
    const t = pick(args);
    if (args.start_sas !== undefined) t.startSas = args.start_sas;
    await t.req.accept();
    return describe(t.req);
  },

  async start_sas(args) {
    const t = pick(args);
    t.startSas = true;
    t.onChange();
    return describe(t.req);
  },

  async confirm(args) {
    const t = pick(args);
    if (!t.sas) throw new Error("no SAS shown yet");
    if (args.match === false) {
      t.sas.mismatch();
    } else {
      await t.sas.confirm();
    }
    return { txn: t.txn };
  },

  async cancel(args) {
    const t = pick(args);
    await t.req.cancel({ code: args.code ?? "m.user", reason: args.reason ?? "cancelled by jspeer" });
    return { txn: t.txn };
  },

  async stall(args) {
    stalled = args.on ?? true;
    return { stalled };
  },

  async requests() {
    return { requests: [...tracked.values()].map((t) => describe(t.req)), current: current?.txn ?? null };
  },

  async status(args) {
    required(args, "user_id");
    const c = crypto();
    const user = await c.getUserVerificationStatus(args.user_id);
    const out = {
      // `known` is js-sdk 43's (we hold an identity for them); js-sdk 36 has no such field.
      identity_known: user.known ?? null,
      identity_verified: user.isVerified(),
      cross_signing_verified: user.isCrossSigningVerified(),
      identity_was_verified: user.wasCrossSigningVerified(),
      identity_needs_approval: user.needsUserApproval,
    };
    if (args.device_id) {
      const dev = await c.getDeviceVerificationStatus(args.user_id, args.device_id);
      out.device_known = dev !== null;
      out.device_verified = dev?.isVerified() ?? false;
      out.device_locally_verified = dev?.localVerified ?? false;
      out.device_cross_signing_verified = dev?.crossSigningVerified ?? false;
      out.device_signed_by_owner = dev?.signedByOwner ?? false;
    }
    return out;
  },

  async whoami() {
    return { user_id: client?.getUserId() ?? null, device_id: client?.getDeviceId() ?? null };
  },

  async logout() {
    if (!client) return { logged_out: false };
    await client.logout(true);
    client.stopClient();
    client = null;
    return { logged_out: true };
  },

  async quit() {
    setTimeout(() => shutdown(0), 10);
    return {};
  },
};

// ---------------------------------------------------------------------------------------------
// Main loop

let shuttingDown = false;
function shutdown(code) {
  if (shuttingDown) return;
  shuttingDown = true;
  try {
    client?.stopClient();
  } catch (e) {
    log("stopClient:", e?.message ?? e);
  }
  process.stdout.write("", () => process.exit(code));
}

async function handle(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    send({ id: null, ok: false, error: `not JSON: ${line.slice(0, 200)}` });
    return;
  }
  const { id = null, cmd, ...args } = msg;
  const fn = commands[cmd];
  if (!fn) {
    send({ id, ok: false, error: `unknown command: ${cmd}` });
    return;
  }
  try {
    const result = (await fn(args)) ?? {};
    send({ ...result, id, ok: true });
  } catch (e) {
    const error = e?.message ?? String(e);
    log(`command ${cmd} failed:`, e?.stack ?? error);
    send({ id, ok: false, error, errcode: e?.errcode ?? null });
  }
}

process.on("unhandledRejection", (e) => log("unhandled rejection:", e?.stack ?? e));
process.on("SIGTERM", () => shutdown(0));

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on("line", (line) => {
  if (line.trim()) handle(line); // commands run concurrently; replies carry their id
});
rl.on("close", () => shutdown(0));
send({ event: "ready", t: Date.now(), pid: process.pid, node: process.version, ...versions });
