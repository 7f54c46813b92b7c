// tether-fallback.js — Tether sessions over plain HTTP, for networks that let no WebSocket
// through (a proxy that strips `Upgrade`, an antivirus "web shield", a balancer that answers
// 403). Imported by tether.js; no dependencies.
//
// Each class here looks like a WebSocket to tether.js (readyState, send, close, onopen,
// onmessage, onclose), so everything the client does — heartbeat, reconnect with backoff and
// jitter, recovery, the send queue, close diagnostics — is the same on every transport:
// - HttpStreamSocket: `POST /stream`, whose response streams the server's messages, one JSON
//   message per line (fetch and a ReadableStream);
// - SseSocket: `GET /stream/sse` through an EventSource, one message per event. The browser's
//   own reconnect is turned off (the EventSource is closed on its first error): tether.js
//   reconnects with backoff, which an EventSource has not.
// Both send the client's commands as `POST /stream/send?session=ID`, one request in flight at a
// time (so they arrive in order), everything waiting gathered into the next; any node may take
// it, so no sticky sessions are needed. The server's heartbeat pings are answered here (with a
// `ping` command whose reply is swallowed): the session lives while its page does.

/** Ids of this module's own pings, counted down from here (tether.js counts up from 1). */
const OWN_IDS = Number.MAX_SAFE_INTEGER;

/** How many times a `/stream/send` that failed on the network is tried before giving up. */
const SEND_TRIES = 5;

/**
 * After a node says the session is unknown, how long its stream may take to end and say why
 * (a restarting node's `disconnect` carries 1012 and a hint) before the session is given up.
 */
const ORPHAN_WAIT_MS = 2000;

/**
 * Where a WebSocket URL's streaming endpoints are: `ws://host/prefix/ws?q` gives
 * `http://host/prefix/stream?q` (and `/stream/sse`, `/stream/send`). `wss` maps to `https`.
 */
export function streamEndpoints(url) {
  const u = new URL(url);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  else if (u.protocol === 'wss:') u.protocol = 'https:';
  const base = u.pathname.replace(/\/[^/]*$/, '');
  const root = `${u.protocol}//${u.host}${base}`;
  return { open: `${root}/stream${u.search}`, sse: `${root}/stream/sse${u.search}`, send: `${root}/stream/send` };
}

class StreamingSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  readyState = 0;
  protocol = '';
  extensions = '';
  /** Bytes of commands not yet accepted by a node (WebSocket's meaning: sent, not yet out). */
  bufferedAmount = 0;
  binaryType = 'arraybuffer';
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  /** Which transport this is ('http_stream' | 'sse'). */
  transport;
  /** The session's id, once the server said it. */
  session = null;

  #endpoints;
  #fetch;
  #outbox = [];
  #posting = false;
  #advice = null;
  #ownPing = OWN_IDS;
  #ended = false;
  #orphaned = null;
  #maxBatch = 64 * 1024; // the server's max_batch_bytes, from its session message

  constructor(url, transport, options = {}) {
    this.#endpoints = streamEndpoints(url);
    this.transport = transport;
    this.#fetch = options.fetch || globalThis.fetch.bind(globalThis);
  }

  get endpoints() {
    return this.#endpoints;
  }

  get fetch() {
    return this.#fetch;
  }

  /** Queue `data` (a command) for the next `/stream/send`. */
  send(data) {
    // As a WebSocket: an error before open, silence once closing.
    if (this.readyState === 0) throw new Error(`cannot send: the ${this.transport} session is not open yet`);
    if (this.readyState !== 1) return;
    const text = String(data);
    this.#outbox.push(text);
    this.bufferedAmount += text.length;
    this.#post();
  }

  /** End the session from this side: the response is abandoned, and the server sees it go. */
  close(code = 1000, reason = '') {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    this.abort();
    // Like a WebSocket, report it after close() returns.
    setTimeout(() => this.finish({ code, reason, wasClean: true }), 0);
  }

  /** A line (or event) from the server. */
  receive(text) {
    if (this.#ended) return;
    let msg = null;
    if (text.startsWith('{"type":"session"') || text.startsWith('{"type":"ping"') || text.startsWith('{"type":"disconnect"') || text.startsWith('{"type":"reply"')) {
      try {
        msg = JSON.parse(text);
      } catch {
        msg = null;
      }
    }
    if (msg && msg.type === 'session') {
      this.session = msg.session;
      if (msg.max_batch_bytes > 0) this.#maxBatch = msg.max_batch_bytes;
      this.readyState = 1;
      this.protocol = 'tether.v1.json';
      if (this.onopen) this.onopen({ type: 'open' });
      return;
    }
    if (msg && msg.type === 'ping') {
      // The server's heartbeat: any command answers it.
      if (this.readyState === 1) this.send(JSON.stringify({ id: this.#ownPing--, cmd: 'ping' }));
      return;
    }
    if (msg && msg.type === 'reply' && msg.id > this.#ownPing) return; // our own ping's reply
    if (msg && msg.type === 'disconnect') this.#advice = msg;
    if (this.onmessage) this.onmessage({ type: 'message', data: text });
  }

  /** The stream ended (or never began): report once, with the server's reason when it gave one. */
  finish(fallback) {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#orphaned) clearTimeout(this.#orphaned);
    this.readyState = 3;
    this.abort();
    const advice = this.#advice;
    const info = advice ? { code: advice.code, reason: advice.reason, wasClean: true } : fallback;
    if (this.onclose) this.onclose({ type: 'close', ...info });
  }

  /** Stop the transport itself (subclasses). */
  abort() {}

  /** Send what waits, one request at a time. */
  async #post() {
    if (this.#posting) return;
    this.#posting = true;
    try {
      let tries = 0;
      while (this.#outbox.length > 0 && this.readyState === 1) {
        // What waits, within the server's limit on one request (at least one command: one over
        // the limit alone is refused, as a WebSocket message over it would be).
        const batch = [this.#outbox[0]];
        let size = batch[0].length;
        for (const more of this.#outbox.slice(1)) {
          if (size + 1 + more.length > this.#maxBatch) break;
          batch.push(more);
          size += 1 + more.length;
        }
        const body = batch.join('\n');
        let res;
        try {
          res = await this.#fetch(`${this.#endpoints.send}?session=${encodeURIComponent(this.session)}`, {
            method: 'POST',
            // text/plain: a "simple" cross-origin request, no preflight.
            headers: { 'content-type': 'text/plain;charset=UTF-8' },
            body,
            cache: 'no-store',
          });
        } catch (e) {
          if (++tries >= SEND_TRIES) {
            this.finish({ code: 1006, reason: `commands could not be sent: ${e && e.message ? e.message : e}`, wasClean: false });
            return;
          }
          await sleep(100 * 2 ** tries);
          continue;
        }
        if (res.status === 404) {
          // The session ended, or its node is gone: a new session recovers. Its stream, if
          // its node is shutting down, says why (1012 and a hint): wait for that, bounded.
          this.#outbox = [];
          this.bufferedAmount = 0;
          this.readyState = 2;
          const why = 'the server no longer knows this session (its node restarted or it ended)';
          this.#orphaned = setTimeout(() => this.finish({ code: 1006, reason: why, wasClean: false }), ORPHAN_WAIT_MS);
          return;
        }
        if (res.status === 429 || res.status === 503) {
          if (++tries >= SEND_TRIES) {
            this.finish({ code: 1013, reason: `commands refused: HTTP ${res.status}`, wasClean: false });
            return;
          }
          await sleep(100 * 2 ** tries);
          continue;
        }
        if (res.status !== 202) {
          const why = await res.text().catch(() => '');
          // 400/403: retrying cannot help (1008 stops the client); 413: a command over the
          // server's max_message_size (1009, as on a WebSocket); anything else (a proxy's 502,
          // a 500): end this session, and the client reconnects (1011).
          const code = res.status === 400 || res.status === 403 ? 1008 : res.status === 413 ? 1009 : 1011;
          this.finish({ code, reason: `commands refused: HTTP ${res.status} ${why}`.slice(0, 200), wasClean: false });
          return;
        }
        tries = 0;
        this.#outbox.splice(0, batch.length);
        this.bufferedAmount -= batch.reduce((n, t) => n + t.length, 0);
      }
    } finally {
      this.#posting = false;
    }
  }
}

/** A session over `POST /stream`, whose response streams newline-delimited JSON. */
export class HttpStreamSocket extends StreamingSocket {
  #abort = new AbortController();

  constructor(url, options = {}) {
    super(url, 'http_stream', options);
    this.#run();
  }

  abort() {
    this.#abort.abort();
  }

  async #run() {
    let res;
    try {
      res = await this.fetch(this.endpoints.open, { method: 'POST', body: '', cache: 'no-store', signal: this.#abort.signal });
    } catch (e) {
      this.finish({ code: 1006, reason: `no HTTP stream: ${e && e.message ? e.message : e}`, wasClean: false });
      return;
    }
    if (res.status !== 200 || !res.body) {
      const body = await res.text().catch(() => '');
      const code = res.status === 429 || res.status === 503 ? 1013 : 1006;
      this.finish({ code, reason: `the server refused the stream: HTTP ${res.status} ${body}`.slice(0, 200), wasClean: false });
      return;
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffered = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, cut);
          buffered = buffered.slice(cut + 1);
          if (line) this.receive(line);
        }
      }
      this.finish({ code: 1006, reason: 'the stream ended', wasClean: false });
    } catch (e) {
      this.finish({ code: 1006, reason: `the stream broke: ${e && e.message ? e.message : e}`, wasClean: false });
    }
  }
}

/** A session over `GET /stream/sse`, through an EventSource. */
export class SseSocket extends StreamingSocket {
  #source;

  constructor(url, options = {}) {
    super(url, 'sse', options);
    const EventSourceImpl = options.EventSource || globalThis.EventSource;
    if (typeof EventSourceImpl !== 'function') {
      setTimeout(() => this.finish({ code: 1006, reason: 'no EventSource here: pass options.EventSource', wasClean: false }), 0);
      return;
    }
    this.#source = new EventSourceImpl(this.endpoints.sse);
    this.#source.onmessage = (e) => this.receive(e.data);
    // A refusal that retrying cures (busy, shutting down) comes as a named event.
    this.#source.addEventListener('disconnect', (e) => {
      try {
        this.receive(JSON.stringify({ type: 'disconnect', ...JSON.parse(e.data) }));
      } catch {
        /* not JSON: the error that follows reports the end */
      }
    });
    // The browser would reconnect by itself, at a fixed pace: tether.js does, with backoff.
    this.#source.onerror = () => this.finish({ code: 1006, reason: 'the event stream broke or was refused', wasClean: false });
  }

  abort() {
    if (this.#source) this.#source.close();
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
