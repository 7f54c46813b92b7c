// Unit tests for tether.js's pure logic: backoff, heartbeat, reconnect policy, close codes, message sizes.
// Run: cd web && npm test
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  DEFAULTS, CLOSE_CODES, closeCodeInfo, backoffCeiling, backoffDelay, Heartbeat, Reconnector, isBinary, messageSize,
} from '../tether.js';

test('backoff ceiling grows by the factor and caps at the max', () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 8].map((n) => backoffCeiling(n)), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(backoffCeiling(1e9), 30000);
});

test('full jitter spans [0, ceiling]', () => {
  assert.equal(backoffDelay(3, 0), 0);
  assert.equal(backoffDelay(3, 0.5), 2000);
  assert.equal(backoffDelay(3, 7), 4000, 'unit is clamped');
});

test('heartbeat: a ping after an interval of silence; dead when it stays unanswered for the timeout', () => {
  const hb = new Heartbeat(100, 50, 0);
  assert.deepEqual(hb.poll(0), { action: 'wait', at: 100 });
  assert.deepEqual(hb.poll(100), { action: 'ping' });
  assert.deepEqual(hb.poll(101), { action: 'wait', at: 150 });
  assert.equal(hb.deadline(), 150);
  assert.deepEqual(hb.poll(150), { action: 'dead' });
});

test('any inbound message answers the ping and resets the ping timer; a reply gives the round trip', () => {
  const hb = new Heartbeat(100, 50, 0);
  assert.deepEqual(hb.poll(100), { action: 'ping' });
  assert.equal(hb.onPong(112, 100), 12);
  assert.equal(hb.deadline(), null, 'answered');
  hb.onInbound(180);
  assert.deepEqual(hb.poll(200), { action: 'wait', at: 280 }, 'traffic postpones the next ping');
  assert.deepEqual(hb.poll(280), { action: 'ping' });
  hb.onInbound(300);
  assert.deepEqual(hb.poll(1000), { action: 'ping' }, 'answered, so a late wake-up pings again');
});

test('a throttled tab that wakes late asks before concluding: one ping, then the timeout', () => {
  const hb = new Heartbeat(25000, 10000, 0);
  // Hidden tabs run timers about once a minute: the first wake-up is at 60 s.
  assert.deepEqual(hb.poll(60000), { action: 'ping' }, 'not dead: nothing was asked yet');
  assert.deepEqual(hb.poll(60000), { action: 'wait', at: 70000 });
  hb.onInbound(60020);
  assert.deepEqual(hb.poll(120000), { action: 'ping' }, 'the answer came, the connection lives');
});

test('a zero interval cannot spin', () => {
  const hb = new Heartbeat(0, 0, 0);
  assert.deepEqual(hb.poll(1), { action: 'ping' });
  assert.deepEqual(hb.poll(1), { action: 'dead' });
});

test('backoff and reconnect fill unspecified options from the defaults', () => {
  assert.equal(backoffCeiling(1, { backoffMax: 5000 }), 1000);
  const r = new Reconnector({ maxAttempts: 2 });
  assert.deepEqual(r.onClose(0, { code: 1006 }, 0.5), { retry: true, attempt: 1, delay: 500 });
});

test('reconnect: backoff grows across failures and resets after min uptime', () => {
  const r = new Reconnector(DEFAULTS);
  assert.deepEqual(r.onClose(0, { code: 1006 }, 0.5), { retry: true, attempt: 1, delay: 500 });
  assert.deepEqual(r.onClose(0, { code: 1006 }, 0.5), { retry: true, attempt: 2, delay: 1000 });
  r.onOpen(0);
  assert.equal(r.onClose(1000, { code: 1006 }, 0.5).attempt, 3, 'short-lived connection still counts as failing');
  r.onOpen(0);
  assert.equal(r.onClose(6000, { code: 1006 }, 0.5).attempt, 1, 'healthy connection starts over');
});

test('reconnect: stop codes, advice, user close, fatal errors, max attempts', () => {
  const r = new Reconnector(DEFAULTS);
  assert.equal(r.onClose(0, { code: 1008 }, 0.5).retry, false);
  assert.equal(r.onClose(0, { code: 4501 }, 0.5).retry, false);
  assert.equal(r.onClose(0, { code: 1000 }, 0.5).retry, true, 'a plain 1000 from a server reconnects');
  assert.equal(r.onClose(0, { code: 1001, adviceReconnect: false }, 0.5).retry, false);
  assert.equal(r.onClose(0, { code: 1000, byUser: true }, 0.5).retry, false);
  assert.equal(r.onClose(0, { code: 1006, fatal: 'bad URL' }, 0.5).retry, false);
  const limited = new Reconnector({ ...DEFAULTS, maxAttempts: 1 });
  assert.equal(limited.onClose(0, { code: 1006 }, 0.1).retry, true);
  assert.equal(limited.onClose(0, { code: 1006 }, 0.1).retry, false);
});

test('reconnect: maxAttempts 0 turns reconnecting off, and says so', () => {
  const off = new Reconnector({ ...DEFAULTS, maxAttempts: 0 });
  assert.deepEqual(off.onClose(0, { code: 1000 }, 0.5), { retry: false, reason: 'reconnecting is off (maxAttempts: 0)' });
  assert.deepEqual(off.onClose(0, { code: 1006 }, 0.5), { retry: false, reason: 'reconnecting is off (maxAttempts: 0)' });
});

test('message size: UTF-8 bytes of text, byte length of binary', () => {
  const samples = ['', 'ping', 'é', '€', '😀', 'a€😀é', '\ud83d', 'x\udc00y', '\ud83d\ud83d\ude00'];
  for (const text of samples) {
    // TextEncoder writes a lone surrogate as U+FFFD (3 bytes), as WebSocket.send does.
    assert.equal(messageSize(text), new TextEncoder().encode(text).length, JSON.stringify(text));
  }
  const buffer = new ArrayBuffer(10);
  assert.equal(messageSize(buffer), 10);
  assert.equal(messageSize(new Uint16Array(buffer, 2, 3)), 6, 'a view counts its own bytes, not its buffer');
  assert.equal(messageSize(new DataView(buffer, 1, 4)), 4);
  assert.equal(messageSize(new Blob(['héllo'])), 6);
});

test('binary data is what send() transmits as a binary frame', () => {
  for (const data of [new ArrayBuffer(1), new Uint8Array(1), new DataView(new ArrayBuffer(1)), new Blob([])]) {
    assert.equal(isBinary(data), true, Object.prototype.toString.call(data));
  }
  for (const data of ['text', 42, null, undefined, { byteLength: 3 }, [1, 2]]) assert.equal(isBinary(data), false, String(data));
});

test('reconnect: the server hint spreads clients over [hint, 2 × hint)', () => {
  const r = new Reconnector(DEFAULTS);
  assert.deepEqual(r.onClose(0, { code: 1012, adviceRetryAfter: 500 }, 0), { retry: true, attempt: 1, delay: 500 });
  assert.equal(r.onClose(0, { code: 1012, adviceRetryAfter: 500 }, 0.5).delay, 750);
});

test('defaults match tether-core', () => {
  const rust = readFileSync(new URL('../../crates/tether-core/src/defaults.rs', import.meta.url), 'utf8');
  const secs = (name) => Number(rust.match(new RegExp(`${name}: Duration = Duration::from_secs\\((\\d+)\\)`))[1]) * 1000;
  assert.equal(DEFAULTS.pingInterval, secs('CLIENT_PING_INTERVAL'));
  assert.equal(DEFAULTS.pongTimeout, secs('CLIENT_PONG_TIMEOUT'));
  assert.equal(DEFAULTS.backoffInitial, secs('BACKOFF_INITIAL'));
  assert.equal(DEFAULTS.backoffMax, secs('BACKOFF_MAX'));
  assert.equal(DEFAULTS.minUptime, secs('MIN_UPTIME'));
  assert.equal(DEFAULTS.offlineQueue, Number(rust.match(/CLIENT_OFFLINE_QUEUE: usize = (\d+)/)[1]));
});

test('close codes match the catalogue printed in docs/protocol.md', () => {
  const doc = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
  const rows = [...doc.matchAll(/^\| (\d{4}) \| ([^|]+) \| [^|]+ \| [^|]+ \| ([^|]+) \|$/gm)];
  assert.ok(rows.length >= 15, `found ${rows.length} rows`);
  const action = { 'reconnect with backoff': 'reconnect', "reconnect after the server's hint": 'hint', stop: 'stop' };
  for (const [, code, name, act] of rows) {
    assert.deepEqual(CLOSE_CODES[code], [name.trim(), action[act.trim()]], `code ${code}`);
  }
  assert.equal(Object.keys(CLOSE_CODES).length, rows.length);
  assert.deepEqual(closeCodeInfo(4321), { name: 'transient', advice: 'reconnect' });
  assert.deepEqual(closeCodeInfo(4600), { name: 'terminal', advice: 'stop' });
});
