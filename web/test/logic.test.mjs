// Unit tests for tether.js's pure logic: backoff, heartbeat, reconnect policy, close codes.
// Run: cd web && npm test
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  DEFAULTS, CLOSE_CODES, closeCodeInfo, backoffCeiling, backoffDelay, Heartbeat, Reconnector,
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

test('heartbeat pings on a fixed cadence and dies at interval + timeout of silence', () => {
  const hb = new Heartbeat(100, 50, 0);
  assert.deepEqual(hb.poll(0), { action: 'wait', at: 100 });
  assert.deepEqual(hb.poll(100), { action: 'ping' });
  assert.deepEqual(hb.poll(101), { action: 'wait', at: 150 });
  assert.deepEqual(hb.poll(150), { action: 'dead' });
});

test('any inbound message postpones death; a pong measures the round trip', () => {
  const hb = new Heartbeat(100, 50, 0);
  assert.deepEqual(hb.poll(100), { action: 'ping' });
  assert.equal(hb.onPong(112), 12);
  assert.equal(hb.onPong(113), null, 'no ping outstanding');
  hb.onInbound(140);
  assert.equal(hb.deadline(), 290);
  assert.deepEqual(hb.poll(200), { action: 'ping' });
  assert.deepEqual(hb.poll(289), { action: 'wait', at: 290 });
  assert.deepEqual(hb.poll(290), { action: 'dead' });
});

test('a throttled tab that wakes late sends one ping, not a burst', () => {
  const hb = new Heartbeat(100, 10000, 0);
  assert.deepEqual(hb.poll(550), { action: 'ping' });
  assert.deepEqual(hb.poll(550), { action: 'wait', at: 600 });
});

test('a zero interval cannot spin', () => {
  const hb = new Heartbeat(0, 0, 0);
  assert.deepEqual(hb.poll(1), { action: 'dead' });
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
  assert.equal(closeCodeInfo(4321).advice, 'reconnect');
  assert.equal(closeCodeInfo(4600).advice, 'stop');
});
