// tether.js — the browser client for the Tether WebSocket gateway. No dependencies.
//
// What it does for you, so that you do not write it again:
// - an application-level heartbeat (browsers cannot send protocol pings): the JSON `ping`
//   command, or the text "ping" in raw mode; ANY inbound message proves the server alive;
//   silence for pingInterval + pongTimeout closes the socket locally (4000, "heartbeat timeout");
// - reconnect with exponential backoff and full jitter, one reconnect in flight, never two
//   (`onerror` is ignored: `onclose` always follows it); at once when the browser goes `online`,
//   never while `navigator.onLine` is false; the server's `disconnect` advice is honoured;
// - every close explained: {code, reason, wasClean, initiator, willReconnect, retryIn, attempt};
// - subscriptions re-established after every reconnect; a queue for sends, bounded in messages
//   and bytes, that holds them while disconnected and while the socket's bufferedAmount is over
//   maxBufferedAmount (WebSocket.send never refuses: without this, a slow network grows memory);
// - `close()` and a page going into the back/forward cache settle every promise and report
//   `stopped` at once: the old socket is detached, so nothing it does later reaches the next one;
// - text and binary messages both ways: `send()` takes a string (a text frame) or an
//   ArrayBuffer / typed array / DataView / Blob (a binary frame); binary messages arrive as
//   ArrayBuffers (`binaryType = 'arraybuffer'`, the same in browsers and Node);
// - a JWT (`token`) sent with `connect` on every connection, refreshed with `getToken` when the
//   server says it expired (4002), and no socket opens while that refresh is in flight;
//   4501/4502 (token required/invalid) stop the client.
//
// `pingInterval: 0` turns the heartbeat off and `maxAttempts: 0` turns reconnecting off: with
// both, in raw mode, the client is a plain WebSocket that sends nothing it was not asked to
// (how web/test/autobahn-client.mjs runs the Autobahn conformance cases through it).
//
// When WebSocket cannot get through (a proxy strips `Upgrade`, a balancer answers 403), JSON
// mode falls back by itself to a session over plain HTTP (`transports`, tether-fallback.js):
// after `fallbackAfter` WebSocket attempts that failed before `open` (or did not open within
// `openTimeout`), it tries HTTP-streaming, then SSE; what worked is remembered for the page's
// lifetime, and while on a fallback it probes WebSocket every `upgradeProbe` ms (jittered) and
// moves back once one opens. Backoff and jitter apply to every transport; every close says
// which transport it happened on.
//
// The pure parts (backoff, heartbeat, reconnect policy, close codes) are exported and mirror
// tether-core's Rust types, with the same defaults and semantics.

import { HttpStreamSocket, SseSocket } from './tether-fallback.js';

export { HttpStreamSocket, SseSocket, streamEndpoints } from './tether-fallback.js';

export const SUBPROTOCOL = 'tether.v1.json';

/** The transport that last opened, per URL, for the page's lifetime. */
const workedFor = new Map();

/** How long `getToken` may take before the client gives up (and stops, saying why). */
const TOKEN_TIMEOUT_MS = 10000;

/** setTimeout fires at once for delays beyond 2^31 - 1 ms; longer waits are cut to this. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** WebSocket has no "drained" event: while sends wait for bufferedAmount to fall, look this often. */
const DRAIN_POLL_MS = 10;

/**
 * Defaults, identical to tether-core's `defaults.rs` (offlineQueueBytes and maxBufferedAmount
 * have no Rust counterpart: the Rust client bounds its queue by messages only, and its socket
 * writes wait for the kernel). Times in milliseconds.
 */
export const DEFAULTS = Object.freeze({
  protocol: 'json', // or 'raw'
  pingInterval: 25000, // 0: no heartbeat at all (no pings, no dead-server detection)
  pongTimeout: 10000,
  backoffInitial: 1000,
  backoffMax: 30000,
  backoffFactor: 2,
  minUptime: 5000,
  maxAttempts: Infinity, // 0: never reconnect
  offlineQueue: 1000, // messages waiting to be sent (for a connection, or for the socket to drain)...
  offlineQueueBytes: 4 * 1024 * 1024, // ...and their payload bytes (UTF-8 for text): 1,000 × 4 KiB
  maxBufferedAmount: 1024 * 1024, // socket bytes not yet sent above which send() waits in the queue
  rawPing: 'ping',
  rawPong: 'pong',
  closeOnPageHide: true,
  autoConnect: true,
  token: null, // JWT sent with `connect` first on every connection (JSON mode)
  getToken: null, // async () => fresh JWT, called after a 4002 (token expired) before reconnecting
  // JSON mode: tried in this order; raw mode is WebSocket only.
  transports: Object.freeze(['websocket', 'http_stream', 'sse']),
  fallbackAfter: 2, // attempts of a transport that fail before `open`, then the next transport
  openTimeout: 10000, // an attempt not open by then counts as failed (0: no limit)
  upgradeProbe: 30000, // on a fallback, try WebSocket again this often, jittered (0: never)
});

/**
 * Close codes and the client action for each: 'reconnect', 'hint' (reconnect after the server's
 * retry_after_ms when given) or 'stop'. Mirrors tether_core::close_code::CATALOGUE; a test checks
 * it against the table in docs/protocol.md.
 */
export const CLOSE_CODES = Object.freeze({
  1000: ['normal', 'reconnect'],
  1001: ['going away', 'reconnect'],
  1002: ['protocol error', 'reconnect'],
  1003: ['unsupported data', 'reconnect'],
  1005: ['no status', 'reconnect'],
  1006: ['abnormal closure', 'reconnect'],
  1007: ['invalid payload', 'reconnect'],
  1008: ['policy violation', 'stop'],
  1009: ['message too big', 'reconnect'],
  1011: ['internal error', 'reconnect'],
  1012: ['service restart', 'hint'],
  1013: ['try again later', 'hint'],
  1015: ['TLS handshake', 'reconnect'],
  4000: ['heartbeat timeout', 'reconnect'],
  4002: ['token expired', 'reconnect'],
  4501: ['token required', 'stop'],
  4502: ['token invalid', 'stop'],
});

/** The catalogue row for a code, or its band: 4000–4499 transient, 4500–4999 terminal. */
export function closeCodeInfo(code) {
  const row = CLOSE_CODES[code];
  if (row) return { name: row[0], advice: row[1] };
  if (code >= 4500 && code <= 4999) return { name: 'terminal', advice: 'stop' };
  if (code >= 4000 && code <= 4499) return { name: 'transient', advice: 'reconnect' };
  return { name: 'unknown', advice: 'reconnect' };
}

/** True for what `send()` transmits as a binary frame: bytes (see isBytes) or a Blob. */
export function isBinary(data) {
  return isBytes(data) || isBlob(data);
}

/** An ArrayBuffer (from this realm or another: an iframe, a vm context) or a view of one. */
function isBytes(data) {
  return ArrayBuffer.isView(data) || Object.prototype.toString.call(data) === '[object ArrayBuffer]';
}

function isBlob(data) {
  return typeof Blob === 'function' && data instanceof Blob;
}

/**
 * Payload bytes of a message on the wire: UTF-8 bytes for a string (a lone surrogate is sent
 * as U+FFFD, 3 bytes), the byte length of binary data. What the offline queue counts.
 */
export function messageSize(data) {
  if (isBlob(data)) return data.size;
  if (typeof data !== 'string') return data.byteLength;
  let bytes = data.length; // one byte per UTF-16 unit, plus the extra ones below
  for (let i = 0; i < data.length; i++) {
    const unit = data.charCodeAt(i);
    if (unit < 0x80) continue;
    if (unit < 0x800) {
      bytes += 1;
    } else if (unit >= 0xd800 && unit < 0xdc00 && (data.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      bytes += 2; // a surrogate pair: 4 bytes for two units
      i++;
    } else {
      bytes += 2;
    }
  }
  return bytes;
}

/** Upper bound of the jitter window before attempt `attempt` (1-based). */
export function backoffCeiling(attempt, options = {}) {
  const opts = { ...DEFAULTS, ...options };
  const exp = Math.min(Math.max(attempt - 1, 0), 64);
  const ceiling = opts.backoffInitial * Math.pow(Math.max(opts.backoffFactor, 1), exp);
  return Number.isFinite(ceiling) ? Math.min(ceiling, opts.backoffMax) : opts.backoffMax;
}

/** Full jitter: uniform in [0, ceiling]; `unit` is a number in [0, 1). */
export function backoffDelay(attempt, unit, options = {}) {
  return backoffCeiling(attempt, options) * Math.min(Math.max(unit, 0), 1);
}

/**
 * Liveness, driven by an explicit `now` (ms). A ping goes out when nothing arrived for `interval`
 * (any inbound message resets that timer); the server is dead when a ping stayed unanswered — no
 * message at all since it was sent — for `timeout`.
 *
 * The deadline counts from the ping, not from the last message: browsers run timers in hidden
 * tabs about once a minute, and a timer that wakes late must first ask, not conclude that a
 * healthy but quiet connection died. With punctual timers this is the Rust heartbeat's rule
 * (dead after interval + timeout of silence).
 */
export class Heartbeat {
  constructor(interval, timeout, now) {
    this.interval = Math.max(1, interval);
    this.timeout = Math.max(0, timeout);
    this.lastSeen = now;
    this.lastPing = now;
    this.pingSentAt = null;
    this.lastRtt = null;
  }

  /** When the outstanding ping counts as unanswered, or null when none is outstanding. */
  deadline() {
    return this.#waiting() ? this.pingSentAt + this.timeout : null;
  }

  #waiting() {
    return this.pingSentAt !== null && this.lastSeen < this.pingSentAt;
  }

  onInbound(now) {
    this.lastSeen = Math.max(this.lastSeen, now);
  }

  /** The answer to a ping sent at `sentAt` arrived: returns the round trip in ms. */
  onPong(now, sentAt = this.pingSentAt) {
    this.onInbound(now);
    if (sentAt === null) return null;
    this.lastRtt = Math.max(0, now - sentAt);
    return this.lastRtt;
  }

  /** What to do at `now`: {action: 'ping'} (then poll again), {action: 'dead'}, {action: 'wait', at}. */
  poll(now) {
    if (this.#waiting()) {
      if (now >= this.pingSentAt + this.timeout) return { action: 'dead' };
      return { action: 'wait', at: this.pingSentAt + this.timeout };
    }
    const due = Math.max(this.lastSeen, this.lastPing) + this.interval;
    if (now >= due) {
      this.pingSentAt = this.lastPing = now;
      return { action: 'ping' };
    }
    return { action: 'wait', at: due };
  }
}

/** The reconnect policy; same rules as tether_core::reconnect::Reconnector. */
export class Reconnector {
  constructor(options = {}) {
    this.opts = { ...DEFAULTS, ...options };
    this.failures = 0;
    this.openedAt = null;
  }

  onOpen(now) {
    this.openedAt = now;
  }

  /**
   * Decide after a close or failed connect.
   * ended: {code, byUser, adviceReconnect, adviceRetryAfter, fatal}; unit in [0, 1).
   * Returns {retry: true, attempt, delay} or {retry: false, reason}.
   */
  onClose(now, ended, unit) {
    const openedAt = this.openedAt;
    this.openedAt = null;
    if (ended.byUser) return { retry: false, reason: 'closed by the application' };
    if (ended.fatal) return { retry: false, reason: `retrying cannot help: ${ended.fatal}` };
    if (ended.adviceReconnect === false) return { retry: false, reason: 'the server advised not to reconnect' };
    if (ended.code != null && closeCodeInfo(ended.code).advice === 'stop') {
      return { retry: false, reason: `close code ${ended.code} means retrying cannot help` };
    }
    if (openedAt !== null && now - openedAt >= this.opts.minUptime) this.failures = 0;
    this.failures += 1;
    if (this.failures > this.opts.maxAttempts) {
      if (this.opts.maxAttempts <= 0) return { retry: false, reason: 'reconnecting is off (maxAttempts: 0)' };
      return { retry: false, reason: `gave up after ${this.opts.maxAttempts} failed attempts` };
    }
    const hint = ended.adviceRetryAfter;
    const delay = hint != null ? hint + hint * Math.min(Math.max(unit, 0), 1) : backoffDelay(this.failures, unit, this.opts);
    return { retry: true, attempt: this.failures, delay };
  }
}

const hasWindow = typeof globalThis.addEventListener === 'function' && typeof globalThis.removeEventListener === 'function';
const isOffline = () => typeof navigator !== 'undefined' && navigator.onLine === false;

/**
 * A connection to a Tether gateway that outlives any one WebSocket.
 *
 * Events (use `client.on(type, fn)` or `addEventListener`; the payload is `event.detail`):
 * state {state}, open {reconnected}, close {code, reason, wasClean, initiator, willReconnect,
 * retryIn, attempt}, publication {channel, offset, data}, message {data} (a string, or an
 * ArrayBuffer for a binary message), subscribed {channel, resubscribe, recovered, reason, server}
 * (`server: true`: a subscription the server made — the token's user channel and `channels`
 * claim at `connect`, recovered after a reconnect; or the server API's), unsubscribed {channel}
 * (the server API ended one), identified {clientId}
 * (the id the server gave this connection, with its first reply), join / leave / user_join /
 * user_leave {channel, info: {client, user, info}} (channels with join_leave), rtt {ms}, error
 * {code, message, id}, stopped {reason}.
 */
export class TetherClient extends EventTarget {
  #opts;
  #WebSocket;
  #ws = null;
  #generation = 0;
  #state = 'closed';
  #heartbeat = null;
  #hbTimer = null;
  #retryTimer = null;
  #waitingForOnline = false;
  #reconnector;
  #channels = new Map(); // channel → {handlers: Set, waiters: [{resolve, reject}], confirmed, position}
  // Channels the server subscribed this client to (the token's at `connect`, the server API's):
  // channel → last position seen; sent with `connect` after a reconnect so the server recovers them.
  #serverChannels = new Map();
  #pending = new Map(); // command id → {resolve, reject, kind, channel, resubscribe, sentAt}
  #rawPingAt = null;
  #attempts = 0; // connect attempts since connect(): the first is 'connecting', later ones 'reconnecting'
  #resumeOnShow = false; // the page went into the back/forward cache with the client running
  #queue = []; // waiting to be sent: [{data, id, resolve, reject, size}]
  #queuedBytes = 0; // the queue's messageSize() total
  #drainTimer = null;
  #nextId = 1;
  #token = null;
  #tokenRefresh = null; // the getToken() in flight after a 4002, until it settles
  #tokenFailure = null; // why the last refresh failed, until an open asks for the token
  #openAfterRefresh = false; // an open waits for the refresh in flight
  #advice = null;
  #openedBefore = false;
  #stopped = false;
  #listeners = [];
  #transport; // the transport the next (or current) attempt uses
  #failedHere = 0; // attempts of #transport that failed before `open`
  #opened = false; // the current attempt opened
  #openTimer = null;
  #probeTimer = null;
  #probe = null; // a WebSocket trying whether upgrades get through again

  /** Round trip of the latest heartbeat, in ms (null before the first). */
  rtt = null;
  /**
   * The id the server gave the current connection (JSON mode): how others see this client in
   * presence. Null until the first reply on a connection (sent right after it opens).
   */
  clientId = null;
  /** When the next reconnect attempt starts (ms since epoch), for countdowns; null otherwise. */
  nextRetryAt = null;
  /** The latest close's details (the `close` event's payload), or null. */
  lastClose = null;
  /** Counters that show what the client did. */
  stats = { connectAttempts: 0, opens: 0, heartbeatTimeouts: 0 };

  constructor(url, options = {}) {
    super();
    this.url = String(url);
    this.#opts = { ...DEFAULTS, ...options };
    this.#WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package)');
    }
    if (this.#opts.protocol !== 'json' && this.#opts.protocol !== 'raw') {
      throw new TypeError(`protocol must be 'json' or 'raw', not ${this.#opts.protocol}`);
    }
    const known = ['websocket', 'http_stream', 'sse'];
    const transports = this.#transports();
    if (transports.length === 0 || transports.some((t) => !known.includes(t))) {
      throw new TypeError(`transports must be some of ${known.join(', ')}, not ${JSON.stringify(this.#opts.transports)}`);
    }
    this.#transport = transports.includes(workedFor.get(this.url)) ? workedFor.get(this.url) : transports[0];
    this.#token = this.#opts.token || null;
    this.#reconnector = new Reconnector(this.#opts);
    if (hasWindow) {
      this.#listen('online', () => this.#onOnline());
      if (this.#opts.closeOnPageHide) {
        this.#listen('pagehide', (e) => this.#onPageHide(e));
        this.#listen('pageshow', (e) => this.#onPageShow(e));
      }
    }
    if (this.#opts.autoConnect) this.connect();
  }

  /** True while a reconnect waits for the browser's `online` event. */
  get waitingForOnline() {
    return this.#waitingForOnline;
  }

  /** The extensions the server agreed to on the current connection ('' when none or closed),
   * e.g. 'permessage-deflate; server_no_context_takeover; client_no_context_takeover'. */
  get extensions() {
    return this.#ws?.extensions ?? '';
  }

  /** The transport of the current (or next) connection: 'websocket' | 'http_stream' | 'sse'. */
  get transport() {
    return this.#transport;
  }

  /** 'connecting' | 'open' | 'reconnecting' | 'closed'. */
  get state() {
    return this.#state;
  }

  /** Subscribe `fn` to events of `type`; returns a function that unsubscribes it. */
  on(type, fn) {
    const listener = (e) => fn(e.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /** Start (or restart after `close()`) connecting. */
  connect() {
    if (!this.#stopped && (this.#ws || this.#retryTimer || this.#waitingForOnline || this.#openAfterRefresh)) return;
    this.#clearRetry();
    this.#stopped = false;
    this.#resumeOnShow = false;
    this.#attempts = 0;
    this.#openedBefore = false;
    this.#reconnector = new Reconnector(this.#opts);
    this.#tokenFailure = null; // a refresh that failed before belongs to the run that stopped
    this.#setState('connecting');
    this.#openWithToken();
  }

  /**
   * Close with `code` (1000 or 3000–4999) and stop reconnecting. Reports at once: every pending
   * command and queued send rejects, then `close` (when a socket was there) and `stopped`.
   */
  close(code = 1000, reason = 'client closing') {
    this.#halt({ code, reason, closeSocket: true, why: 'close() was called', stopped: 'closed by the application' });
  }

  /** Remove every listener the client put on the window, and close. */
  dispose() {
    this.close();
    for (const [type, fn] of this.#listeners) globalThis.removeEventListener(type, fn);
    this.#listeners = [];
  }

  /**
   * Subscribe to a channel (JSON mode); kept across reconnects. `handler(data, publication)` is
   * called for each publication. Resolves when the server confirms; rejects on refusal.
   */
  subscribe(channel, handler) {
    this.#requireJson('subscribe');
    if (this.#stopped) return Promise.reject(new Error('the client has stopped; call connect() first'));
    let entry = this.#channels.get(channel);
    const fresh = !entry;
    if (!entry) {
      entry = { handlers: new Set(), waiters: [], confirmed: false, position: null };
      this.#channels.set(channel, entry);
    }
    if (handler) entry.handlers.add(handler);
    return new Promise((resolve, reject) => {
      if (!fresh && entry.confirmed) return resolve();
      entry.waiters.push({ resolve, reject });
      if (fresh && this.#isOpen()) this.#sendSubscribe(channel, false);
    });
  }

  /** Remove `handler` (or every handler) from `channel`; the last one unsubscribes. */
  unsubscribe(channel, handler) {
    const entry = this.#channels.get(channel);
    if (!entry) return;
    if (handler) entry.handlers.delete(handler);
    else entry.handlers.clear();
    if (entry.handlers.size > 0) return;
    this.#channels.delete(channel);
    for (const w of entry.waiters) w.reject(new Error(`unsubscribed from ${channel}`));
    if (this.#isOpen()) this.#command({ cmd: 'unsubscribe', channel }).catch(() => {});
  }

  /** Publish (JSON mode; the server must allow client publishing). Queued while disconnected. */
  publish(channel, data) {
    this.#requireJson('publish');
    return this.#command({ cmd: 'publish', channel, data });
  }

  /**
   * Who is in a presence channel this client subscribes to: {clientId: {client, user, info}}.
   * Rejects (error.code 'not_subscribed', 'presence_disabled') when the server refuses.
   */
  presence(channel) {
    this.#requireJson('presence');
    return this.#command({ cmd: 'presence', channel }).then((r) => r.clients || {});
  }

  /**
   * A page of a subscribed channel's history: {publications: [{offset, data}], epoch, offset}.
   * The latest `limit` (default 100), or with `since` ({epoch, offset}) the first `limit` after
   * it; newest first with `reverse`. `recovered: false` and a `reason` when history no longer
   * covers `since`.
   */
  history(channel, { limit = 100, since = undefined, reverse = false } = {}) {
    this.#requireJson('history');
    return this.#command({ cmd: 'history', channel, limit, since, reverse });
  }

  /** How many clients and distinct users are in a presence channel: {numClients, numUsers}. */
  presenceStats(channel) {
    this.#requireJson('presenceStats');
    return this.#command({ cmd: 'presence_stats', channel }).then((r) => ({ numClients: r.num_clients ?? 0, numUsers: r.num_users ?? 0 }));
  }

  /**
   * Send a message as is: a string as text; an ArrayBuffer, typed array, DataView or Blob as
   * binary (anything else is sent as its String() text). Queued while disconnected, and while
   * the socket holds more than maxBufferedAmount unsent bytes (a queued buffer is copied, so it
   * may be reused at once); resolves once handed to the socket, so awaiting each send() keeps
   * pace with the network. Rejects when the queue is full.
   */
  send(data) {
    return this.#enqueue(typeof data === 'string' || isBinary(data) ? data : String(data));
  }

  // --- connection lifecycle -----------------------------------------------------------------

  #open() {
    this.#clearRetry();
    this.nextRetryAt = null;
    this.#advice = null;
    this.stats.connectAttempts += 1;
    this.#attempts += 1;
    this.#setState(this.#attempts === 1 ? 'connecting' : 'reconnecting');
    const generation = ++this.#generation;
    this.#opened = false;
    let ws;
    try {
      const impl = { fetch: this.#opts.fetch, EventSource: this.#opts.EventSource };
      if (this.#transport === 'http_stream') ws = new HttpStreamSocket(this.url, impl);
      else if (this.#transport === 'sse') ws = new SseSocket(this.url, impl);
      else ws = this.#opts.protocol === 'json' ? new this.#WebSocket(this.url, [SUBPROTOCOL]) : new this.#WebSocket(this.url);
    } catch (e) {
      // A malformed URL throws synchronously; retrying cannot fix it.
      this.#ended({ code: 1006, reason: String(e && e.message ? e.message : e), wasClean: false, initiator: 'client', fatal: 'bad URL' });
      return;
    }
    // Binary messages arrive as ArrayBuffers, in browsers (whose default is Blob) and in `ws`
    // (whose default is a Node Buffer) alike.
    ws.binaryType = 'arraybuffer';
    this.#ws = ws;
    const current = () => generation === this.#generation && this.#ws === ws;
    ws.onopen = () => current() && this.#onOpen(ws);
    ws.onmessage = (e) => current() && this.#onMessage(e.data);
    // `error` always precedes `close`; reacting to both is how two reconnect loops are born.
    ws.onerror = () => {};
    ws.onclose = (e) => {
      if (!current()) return;
      const initiator = e.code === 1006 ? 'network' : 'server';
      this.#ended({ code: e.code, reason: e.reason, wasClean: e.wasClean, initiator });
    };
    const { openTimeout } = this.#opts;
    if (openTimeout > 0) {
      this.#openTimer = setTimeout(() => {
        this.#openTimer = null;
        if (!current() || this.#opened) return;
        // Some proxies hold an upgrade (or a stream) without answering: do not wait forever.
        this.#detach(ws);
        try {
          ws.close();
        } catch {
          /* already closing */
        }
        this.#ended({ code: 1006, reason: `${this.#transport} did not open within ${openTimeout} ms (openTimeout)`, wasClean: false, initiator: 'client' });
      }, openTimeout);
    }
  }

  /** The transports this client may use, in order (raw mode: WebSocket only). */
  #transports() {
    if (this.#opts.protocol !== 'json') return ['websocket'];
    return [...(this.#opts.transports || ['websocket'])];
  }

  #clearOpenTimer() {
    if (this.#openTimer) clearTimeout(this.#openTimer);
    this.#openTimer = null;
  }

  /** On a fallback, try a WebSocket now and then; once one opens, move back to it. */
  #scheduleProbe() {
    this.#stopProbe();
    const every = this.#opts.upgradeProbe;
    if (!(every > 0) || this.#transport === 'websocket' || !this.#transports().includes('websocket')) return;
    const delay = every * (0.5 + Math.random());
    this.#probeTimer = setTimeout(() => {
      this.#probeTimer = null;
      let probe;
      try {
        probe = new this.#WebSocket(this.url, [SUBPROTOCOL]);
      } catch {
        return;
      }
      this.#probe = probe;
      const done = (upgraded) => {
        if (this.#probe !== probe) return;
        this.#probe = null;
        probe.onopen = probe.onclose = null;
        probe.onerror = () => {};
        if (upgraded) this.#upgrade();
        else this.#scheduleProbe();
      };
      probe.onopen = () => {
        try {
          probe.close(1000, 'probe');
        } catch {
          /* closing anyway */
        }
        done(probe.protocol === SUBPROTOCOL);
      };
      probe.onerror = () => {};
      probe.onclose = () => done(false);
    }, delay);
  }

  #stopProbe() {
    if (this.#probeTimer) clearTimeout(this.#probeTimer);
    this.#probeTimer = null;
    const probe = this.#probe;
    this.#probe = null;
    if (probe) {
      probe.onopen = probe.onclose = null;
      probe.onerror = () => {};
      try {
        probe.close();
      } catch {
        /* closing anyway */
      }
    }
  }

  /** WebSocket gets through again: leave the fallback for it at once (recovering, as always). */
  #upgrade() {
    const ws = this.#ws;
    if (!ws || this.#stopped || this.#state !== 'open') return;
    const from = this.#transport;
    this.#detach(ws);
    try {
      ws.close(1000, 'moving to WebSocket');
    } catch {
      /* closing anyway */
    }
    this.#transport = 'websocket';
    this.#failedHere = 0;
    this.#emit('transport', { transport: 'websocket', from, reason: 'WebSocket gets through again' });
    this.#ended({ code: 1000, reason: `moving from ${from} to WebSocket`, wasClean: true, initiator: 'client', upgrade: true, transport: from });
  }

  #onOpen(ws) {
    if (this.#opts.protocol === 'json' && ws.protocol !== SUBPROTOCOL) {
      this.#detach(ws);
      ws.close(1000, 'subprotocol refused');
      this.#ended({
        code: 1006,
        reason: `the server did not accept subprotocol ${SUBPROTOCOL}; use protocol: 'raw' for plain WebSocket servers`,
        wasClean: false,
        initiator: 'client',
        fatal: 'subprotocol refused',
      });
      return;
    }
    const now = Date.now();
    this.#clearOpenTimer();
    this.#opened = true;
    this.#failedHere = 0;
    workedFor.set(this.url, this.#transport);
    this.#scheduleProbe();
    this.#reconnector.onOpen(now);
    this.stats.opens += 1;
    const reconnected = this.#openedBefore;
    this.#openedBefore = true;
    this.#attempts = 0;
    // pingInterval 0: no heartbeat, so nothing is sent unasked and silence is never fatal.
    const { pingInterval, pongTimeout } = this.#opts;
    this.#heartbeat = pingInterval > 0 ? new Heartbeat(pingInterval, pongTimeout, now) : null;
    this.#rawPingAt = null;
    this.#setState('open');
    // Re-establish subscriptions (asking to recover from the last position seen) and flush the
    // offline queue before telling listeners, so that a subscribe() in an `open` listener is not
    // sent twice.
    if (this.#opts.protocol === 'json' && this.#token) {
      // Authenticate first: the server handles commands in order.
      const id = this.#nextId++;
      this.#pending.set(id, { kind: 'connect', resubscribe: reconnected, resolve() {}, reject() {} });
      const subs = {};
      for (const [channel, position] of this.#serverChannels) if (position) subs[channel] = position;
      const command = { id, cmd: 'connect', token: this.#token };
      if (Object.keys(subs).length > 0) command.subs = subs;
      ws.send(JSON.stringify(command));
    }
    for (const [channel, entry] of this.#channels) {
      entry.confirmed = false;
      this.#sendSubscribe(channel, reconnected);
    }
    // Some command, so that the first reply tells this connection's client id.
    if (this.#opts.protocol === 'json' && !this.#token && this.#channels.size === 0) this.#sendPing();
    this.#drain();
    this.#armHeartbeat();
    this.#emit('open', { reconnected });
  }

  #onMessage(data) {
    const now = Date.now();
    if (this.#heartbeat) this.#heartbeat.onInbound(now);
    if (typeof data !== 'string') {
      this.#emit('message', { data });
      return;
    }
    if (this.#opts.protocol === 'raw') {
      if (data === this.#opts.rawPong && this.#heartbeat && this.#rawPingAt !== null) {
        this.#reportRtt(this.#heartbeat.onPong(now, this.#rawPingAt));
        this.#rawPingAt = null;
        return;
      }
      this.#emit('message', { data });
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this.#emit('message', { data });
      return;
    }
    switch (msg.type) {
      case 'publication': {
        const entry = this.#channels.get(msg.channel);
        const publication = { channel: msg.channel, offset: msg.offset, epoch: msg.epoch, data: msg.data };
        // A channel can be both the application's and the server's (a subscribe() to the user's
        // own channel): both positions move, so whichever is sent after a reconnect is current.
        if (entry) entry.position = { epoch: msg.epoch, offset: msg.offset };
        if (this.#serverChannels.has(msg.channel)) this.#serverChannels.set(msg.channel, { epoch: msg.epoch, offset: msg.offset });
        if (entry) for (const h of entry.handlers) this.#safely(() => h(msg.data, publication));
        this.#emit('publication', publication);
        break;
      }
      case 'reply':
        this.#onReply(msg, now);
        break;
      case 'error':
        this.#emit('error', { id: null, ...msg.error });
        break;
      case 'disconnect':
        this.#advice = msg;
        break;
      case 'subscribed':
        // The server API subscribed this client: its publications follow.
        this.#serverChannels.set(msg.channel, { epoch: msg.epoch, offset: msg.offset });
        this.#emit('subscribed', { channel: msg.channel, resubscribe: false, recovered: null, reason: null, server: true });
        break;
      case 'unsubscribed':
        // Ended by the server: not re-sent after a reconnect, whoever made it.
        this.#serverChannels.delete(msg.channel);
        this.#channels.delete(msg.channel);
        this.#emit('unsubscribed', { channel: msg.channel });
        break;
      case 'join':
      case 'leave':
      case 'user_join':
      case 'user_leave':
        this.#emit(msg.type, { channel: msg.channel, info: msg.info });
        break;
      case 'presence_batch':
        // A busy channel's changes, gathered by the server: one event each, in order.
        for (const e of msg.events || []) this.#emit(e.type, { channel: msg.channel, info: e.info });
        break;
      default:
        this.#emit('message', { data });
    }
  }

  #onReply(msg, now) {
    if (msg.result && typeof msg.result.client === 'string') {
      this.clientId = msg.result.client;
      this.#emit('identified', { clientId: this.clientId });
    }
    const pending = this.#pending.get(msg.id);
    if (!pending) return;
    this.#pending.delete(msg.id);
    if (pending.kind === 'ping') {
      if (this.#heartbeat) this.#reportRtt(this.#heartbeat.onPong(now, pending.sentAt));
      return;
    }
    // A subscribe the server already holds (e.g. sent twice) is as good as a confirmation.
    if (msg.error && !(pending.kind === 'subscribe' && msg.error.code === 'already_subscribed')) {
      const err = Object.assign(new Error(`${msg.error.code}: ${msg.error.message}`), msg.error);
      if (pending.kind === 'subscribe') {
        // A refused subscription is forgotten, not re-sent after every reconnect.
        const entry = this.#channels.get(pending.channel);
        this.#channels.delete(pending.channel);
        if (entry) for (const w of entry.waiters) w.reject(err);
      }
      this.#emit('error', { id: msg.id, ...msg.error });
      pending.reject(err);
      return;
    }
    if (pending.kind === 'connect') this.#serverMade((msg.result || {}).subscriptions || {}, pending.resubscribe);
    if (pending.kind === 'subscribe') {
      const entry = this.#channels.get(pending.channel);
      const result = msg.result || {};
      if (entry) {
        entry.confirmed = true;
        // Recovered: the replay that follows moves the position along. Otherwise start from
        // the server's current top (the application refetches its state).
        if (result.recovered !== true && result.epoch != null) entry.position = { epoch: result.epoch, offset: result.offset };
        for (const w of entry.waiters.splice(0)) w.resolve();
      }
      this.#emit('subscribed', { channel: pending.channel, resubscribe: pending.resubscribe, recovered: result.recovered ?? null, reason: result.reason ?? null });
    }
    pending.resolve(msg.result || {});
  }

  /**
   * The server-side subscriptions `connect` made replace those held before. A recovered one keeps
   * its position (the replay after the reply moves it on); any other starts from the server's top.
   */
  #serverMade(made, resubscribe) {
    const before = this.#serverChannels;
    this.#serverChannels = new Map();
    for (const [channel, sub] of Object.entries(made)) {
      const kept = sub.recovered === true ? before.get(channel) : null;
      this.#serverChannels.set(channel, kept || { epoch: sub.epoch, offset: sub.offset });
      this.#emit('subscribed', { channel, resubscribe, recovered: sub.recovered ?? null, reason: sub.reason ?? null, server: true });
    }
  }

  /** The socket ended (or never opened): report once, then stop or schedule one reconnect. */
  #ended(info) {
    const ws = this.#ws;
    if (ws) this.#detach(ws);
    this.#ws = null;
    this.#clearOpenTimer();
    const transport = info.transport || this.#transport; // the one it happened on
    if (!info.upgrade) this.#stopProbe();
    if (!this.#opened && !info.fatal) this.#fellShort(info);
    this.#stopHeartbeat();
    this.#stopDrain(); // what waits to be sent stays queued for the next connection
    this.#rejectPending('the connection closed');
    this.clientId = null; // a new connection gets a new id
    for (const [, entry] of this.#channels) entry.confirmed = false;
    const advice = this.#advice;
    this.#advice = null;
    const ended = {
      code: info.code,
      fatal: info.fatal,
      adviceReconnect: advice ? advice.reconnect : undefined,
      adviceRetryAfter: advice && advice.retry_after_ms != null ? advice.retry_after_ms : undefined,
    };
    // Moving back to WebSocket is no failure: at once, without counting an attempt.
    let decision = info.upgrade ? { retry: true, attempt: 0, delay: 0 } : this.#reconnector.onClose(Date.now(), ended, Math.random());
    if (decision.retry && info.code === 4002) {
      // The token expired: reconnecting with it cannot work. Fetch a fresh one meanwhile.
      if (typeof this.#opts.getToken !== 'function') {
        decision = { retry: false, reason: 'the token expired (4002) and no getToken option is set' };
      } else {
        this.#refreshToken();
      }
    }
    const offline = decision.retry && isOffline();
    const detail = {
      code: info.code,
      reason: info.reason || '',
      wasClean: Boolean(info.wasClean),
      initiator: info.initiator,
      willReconnect: decision.retry,
      retryIn: decision.retry && !offline ? Math.round(decision.delay) : null,
      attempt: decision.retry ? decision.attempt : 0,
      transport,
    };
    this.lastClose = detail;
    if (!detail.willReconnect) {
      this.#stopped = true;
      this.#setState('closed');
      this.#emit('close', detail);
      this.#emit('stopped', { reason: decision.reason });
      this.#rejectQueue(`the client stopped (${decision.reason})`);
      return;
    }
    this.#setState('reconnecting');
    this.#emit('close', detail);
    if (this.#stopped) return; // a `close` listener called close()
    if (offline) {
      // No retries while the browser says it is offline; `online` brings us back at once.
      this.#waitingForOnline = true;
      this.nextRetryAt = null;
      return;
    }
    this.nextRetryAt = Date.now() + detail.retryIn;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.nextRetryAt = null;
      if (isOffline()) {
        this.#waitingForOnline = true;
        return;
      }
      this.#openWithToken();
    }, detail.retryIn);
  }

  /** An attempt ended before `open`: after `fallbackAfter` of them, the next transport. */
  #fellShort(info) {
    this.#failedHere += 1;
    const transports = this.#transports();
    // After the last, the first again: a network that blocked WebSocket may let it through now.
    const next = transports[(transports.indexOf(this.#transport) + 1) % transports.length];
    if (next !== this.#transport && this.#failedHere >= this.#opts.fallbackAfter) {
      const from = this.#transport;
      this.#transport = next;
      this.#failedHere = 0;
      this.#emit('transport', { transport: next, from, reason: `${from} failed ${this.#opts.fallbackAfter} times before opening (last: ${info.code} ${info.reason || ''})`.trim() });
    }
  }

  /**
   * Ask getToken for a fresh token (after a 4002). Marked in flight until it settles: an open
   * asked for meanwhile (the retry, `online`, or connect() after close()) waits for it instead
   * of opening with the expired token.
   */
  #refreshToken() {
    // Bounded: a getToken that never settles must not leave the client waiting forever.
    let timer;
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`getToken took longer than ${TOKEN_TIMEOUT_MS} ms`)), TOKEN_TIMEOUT_MS);
    });
    const refresh = Promise.race([Promise.resolve().then(() => this.#opts.getToken()), deadline]).finally(() => clearTimeout(timer));
    this.#tokenRefresh = refresh;
    refresh
      .then((token) => {
        if (!token) throw new Error('getToken returned no token');
        this.#token = String(token);
      })
      .catch((e) => (this.#tokenFailure = e))
      .then(() => {
        this.#tokenRefresh = null;
        if (!this.#openAfterRefresh) return;
        this.#openAfterRefresh = false;
        this.#openWithToken();
      });
  }

  /** Open now, or once the token refresh in flight has settled; stop if it failed. */
  #openWithToken() {
    if (this.#tokenRefresh) {
      this.#openAfterRefresh = true; // one open, however many ask
      return;
    }
    const failure = this.#tokenFailure;
    this.#tokenFailure = null;
    if (!failure) return this.#open();
    const reason = `token refresh failed: ${failure && failure.message ? failure.message : failure}`;
    this.#stopped = true;
    this.#setState('closed');
    this.#emit('stopped', { reason });
    this.#rejectQueue(`the client stopped (${reason})`);
  }

  /**
   * Stop now, at the application's or the page's request: settle every promise, report the
   * close and `stopped` once, and leave the socket to finish closing on its own, detached, so
   * that nothing it does later (its close event may come after a new connection opened)
   * reaches the client.
   */
  #halt({ code, reason, closeSocket, why, stopped }) {
    const wasStopped = this.#stopped;
    this.#stopped = true;
    this.#openAfterRefresh = false; // a refresh in flight still stores its token for connect()
    this.#clearRetry();
    this.#clearOpenTimer();
    this.#stopProbe();
    this.#stopHeartbeat();
    this.#stopDrain();
    const ws = this.#ws;
    this.#ws = null;
    let wasOpen = false;
    if (ws) {
      this.#detach(ws);
      wasOpen = ws.readyState === 1;
      if (closeSocket) {
        try {
          ws.close(code, reason);
        } catch {
          ws.close(); // a code the browser refuses: close without one
          code = 1005;
        }
      }
    }
    this.#rejectPending(why);
    this.#rejectQueue(why);
    for (const [, entry] of this.#channels) entry.confirmed = false;
    this.#setState('closed');
    if (ws) {
      // wasClean: the socket was open, so its closing handshake has begun (and ends unobserved).
      const detail = { code, reason, wasClean: wasOpen, initiator: 'client', willReconnect: false, retryIn: null, attempt: 0, transport: this.#transport };
      this.lastClose = detail;
      this.#emit('close', detail);
    }
    if (!wasStopped) this.#emit('stopped', { reason: stopped });
  }

  #detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    // Kept: a socket closed while connecting still reports an error (`ws` throws one nobody hears).
    ws.onerror = () => {};
  }

  #onOnline() {
    if (this.#stopped || this.#ws) return;
    if (this.#waitingForOnline || this.#retryTimer) {
      this.#waitingForOnline = false;
      this.#clearRetry();
      this.#openWithToken();
    }
  }

  #onPageHide(event) {
    // Leaving for good: the browser closes the socket with 1001 "going away" (a page cannot send
    // 1001 itself). Going into the back/forward cache (persisted): close it ourselves, cleanly;
    // the browser would cut it, and a frozen page hears of that only once it is back. Either
    // way, stop now; a client that was running comes back with the page.
    const persisted = Boolean(event && event.persisted);
    this.#resumeOnShow = persisted && !this.#stopped && this.#state !== 'closed';
    const code = persisted ? 1000 : 1001;
    this.#halt({ code, reason: 'the page was hidden', closeSocket: persisted, why: 'the page was hidden', stopped: 'the page was hidden' });
  }

  #onPageShow(event) {
    // Back from the back/forward cache: reconnect, once, as if freshly loaded.
    if (!event.persisted || !this.#resumeOnShow) return;
    this.#resumeOnShow = false;
    this.connect();
  }

  #clearRetry() {
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#waitingForOnline = false;
    this.nextRetryAt = null;
  }

  // --- heartbeat ----------------------------------------------------------------------------

  #armHeartbeat() {
    if (this.#hbTimer) clearTimeout(this.#hbTimer);
    this.#hbTimer = null;
    const hb = this.#heartbeat;
    if (!hb || !this.#isOpen()) return;
    for (;;) {
      const now = Date.now();
      const step = hb.poll(now);
      if (step.action === 'ping') {
        this.#sendPing();
        continue;
      }
      if (step.action === 'dead') {
        this.#heartbeatTimeout();
        return;
      }
      // A timer cut short by MAX_TIMER_MS just polls again and re-arms.
      this.#hbTimer = setTimeout(() => this.#armHeartbeat(), Math.min(Math.max(0, step.at - now), MAX_TIMER_MS));
      return;
    }
  }

  #sendPing() {
    if (this.#opts.protocol === 'raw') {
      this.#rawPingAt = Date.now();
      this.#ws.send(this.#opts.rawPing);
      return;
    }
    const id = this.#nextId++;
    this.#pending.set(id, { kind: 'ping', sentAt: Date.now(), resolve() {}, reject() {} });
    this.#ws.send(JSON.stringify({ id, cmd: 'ping' }));
  }

  #heartbeatTimeout() {
    this.stats.heartbeatTimeouts += 1;
    const ws = this.#ws;
    const silence = this.#opts.pongTimeout;
    // Do not wait for a closing handshake a dead server will never answer: report now.
    this.#detach(ws);
    try {
      ws.close(4000, 'heartbeat timeout');
    } catch {
      /* already closing */
    }
    this.#ended({ code: 4000, reason: `heartbeat timeout: no answer to a ping within ${silence} ms`, wasClean: false, initiator: 'client' });
  }

  #stopHeartbeat() {
    if (this.#hbTimer) clearTimeout(this.#hbTimer);
    this.#hbTimer = null;
    this.#heartbeat = null;
  }

  #reportRtt(ms) {
    if (ms === null) return;
    this.rtt = ms;
    this.#emit('rtt', { ms });
  }

  // --- sending ------------------------------------------------------------------------------

  #isOpen() {
    return this.#ws !== null && this.#ws.readyState === 1 && this.#state === 'open';
  }

  #sendSubscribe(channel, resubscribe) {
    const id = this.#nextId++;
    const entry = this.#channels.get(channel);
    this.#pending.set(id, { kind: 'subscribe', channel, resubscribe, resolve() {}, reject() {} });
    const command = { id, cmd: 'subscribe', channel };
    if (resubscribe && entry && entry.position) command.recover = entry.position;
    this.#ws.send(JSON.stringify(command));
  }

  /** A command whose reply resolves the returned promise. Queued while disconnected. */
  #command(body) {
    return new Promise((resolve, reject) => {
      const id = this.#nextId++;
      const data = JSON.stringify({ id, ...body });
      this.#enqueueItem({ data, id, resolve, reject });
    });
  }

  #enqueue(data) {
    return new Promise((resolve, reject) => this.#enqueueItem({ data, id: null, resolve, reject }));
  }

  /**
   * Send now if the socket is open and has room (bufferedAmount at most maxBufferedAmount) and
   * nothing waits before it; otherwise wait in the queue, in order, or reject when it is full.
   */
  #enqueueItem(item) {
    if (this.#stopped) {
      item.reject(new Error('the client has stopped; call connect() first'));
      return;
    }
    const open = this.#isOpen();
    if (open) {
      if (this.#queue.length > 0) this.#drain(); // what waits goes first
      if (this.#queue.length === 0 && this.#hasRoom()) {
        this.#transmit(item);
        return;
      }
    }
    // Sized only when it has to wait: an open connection with room sends without measuring.
    const size = messageSize(item.data);
    if (this.#queue.length >= this.#opts.offlineQueue || this.#queuedBytes + size > this.#opts.offlineQueueBytes) {
      const waiting = `${this.#queue.length} messages, ${this.#queuedBytes} bytes waiting for`;
      const full = open
        ? `send queue full (${waiting} the socket to drain: bufferedAmount ${this.#ws.bufferedAmount} > maxBufferedAmount ${this.#opts.maxBufferedAmount}; this one has ${size} bytes): await each send() to keep pace with the network`
        : `offline queue full (${waiting} a connection; this one has ${size} bytes)`;
      item.reject(new Error(full));
      return;
    }
    // The caller may reuse its buffer once send() returns, as with WebSocket.send (Blobs are immutable).
    if (isBytes(item.data)) item.data = copyBytes(item.data);
    item.size = size;
    this.#queuedBytes += size;
    this.#queue.push(item);
    if (open && !this.#drainTimer) this.#drainTimer = setTimeout(() => this.#drain(), DRAIN_POLL_MS);
  }

  #hasRoom() {
    return this.#ws.bufferedAmount <= this.#opts.maxBufferedAmount;
  }

  /** Send what waits, in order, while the socket has room; look again soon if some is left. */
  #drain() {
    this.#stopDrain();
    while (this.#queue.length > 0 && this.#isOpen() && this.#hasRoom()) {
      const item = this.#queue.shift();
      this.#queuedBytes -= item.size;
      this.#transmit(item);
    }
    if (this.#queue.length > 0 && this.#isOpen()) this.#drainTimer = setTimeout(() => this.#drain(), DRAIN_POLL_MS);
  }

  #stopDrain() {
    if (this.#drainTimer) clearTimeout(this.#drainTimer);
    this.#drainTimer = null;
  }

  #transmit(item) {
    if (item.id !== null) this.#pending.set(item.id, { kind: 'command', resolve: item.resolve, reject: item.reject });
    try {
      this.#ws.send(item.data);
    } catch (e) {
      if (item.id !== null) this.#pending.delete(item.id);
      item.reject(e);
      return;
    }
    if (item.id === null) item.resolve();
  }

  /** Reject every command waiting for its reply, saying why (e.g. 'close() was called'). */
  #rejectPending(why) {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.reject(new Error(`${why} before the reply`));
  }

  /** Reject every queued send and unconfirmed subscribe, saying why. */
  #rejectQueue(why) {
    const queued = this.#queue;
    this.#queue = [];
    this.#queuedBytes = 0;
    for (const item of queued) item.reject(new Error(`${why} before it was sent`));
    const err = new Error(`${why} before the subscription was confirmed`);
    for (const [, entry] of this.#channels) for (const w of entry.waiters.splice(0)) w.reject(err);
  }

  #requireJson(what) {
    if (this.#opts.protocol !== 'json') {
      throw new Error(`${what} needs protocol 'json'; in raw mode use ?channel= in the URL and send()`);
    }
  }

  // --- plumbing -----------------------------------------------------------------------------

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit('state', { state });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #listen(type, fn) {
    globalThis.addEventListener(type, fn);
    this.#listeners.push([type, fn]);
  }

  #safely(fn) {
    try {
      fn();
    } catch (e) {
      // A throwing handler must not break the connection; surface it asynchronously.
      setTimeout(() => {
        throw e;
      });
    }
  }
}

/** A copy of the bytes of an ArrayBuffer (an ArrayBuffer) or of a view (a Uint8Array). */
function copyBytes(data) {
  if (!ArrayBuffer.isView(data)) return data.slice(0);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
}

/** Shorthand: `connect(url, options)` is `new TetherClient(url, options)`. */
export function connect(url, options) {
  return new TetherClient(url, options);
}
