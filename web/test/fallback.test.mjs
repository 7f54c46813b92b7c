// tether.js when WebSocket cannot get through (issue 21, point 3), in Node with the `ws`
// package, against the real `tether` binary behind a real nginx that answers every upgrade with
// 403: it falls back to HTTP-streaming by itself, works there (subscribe, publish, heartbeat,
// recovery across a kill -9 of its node), and moves back to WebSocket once nginx lets upgrades
// through again. And against a server that is down: every transport backs off, with jitter.
// (Chromium does the same in browser.test.mjs, with SSE too: Node has no EventSource.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { TetherClient, streamEndpoints } from '../tether.js';
import { Nginx, Redis, Server, waitFor } from './harness.mjs';

const FAST = { WebSocket, pingInterval: 200, pongTimeout: 400, backoffInitial: 100, backoffMax: 400 };

function client(url, options = {}) {
  const c = new TetherClient(url, { ...FAST, ...options });
  c.seen = [];
  for (const type of ['open', 'close', 'subscribed', 'publication', 'rtt', 'transport', 'stopped']) {
    c.on(type, (detail) => c.seen.push({ type, detail, at: Date.now() }));
  }
  c.events = (type) => c.seen.filter((e) => e.type === type).map((e) => e.detail);
  c.waitFor = (type, count = 1, ms = 15000) =>
    waitFor(`${count} ${type} event(s)`, () => c.events(type).length >= count, ms).then(() => c.events(type));
  return c;
}

test('streaming endpoints sit beside the WebSocket path, query kept', () => {
  assert.deepEqual(streamEndpoints('wss://h.example/rt/ws?token=t'), {
    open: 'https://h.example/rt/stream?token=t',
    sse: 'https://h.example/rt/stream/sse?token=t',
    send: 'https://h.example/rt/stream/send',
  });
  assert.equal(streamEndpoints('ws://127.0.0.1:9/ws').open, 'http://127.0.0.1:9/stream');
});

test('behind a proxy that refuses upgrades: HTTP-streaming works, recovers after kill -9, and moves back to WebSocket', { timeout: 90000 }, async () => {
  const redis = await Redis.start();
  if (!redis) return;
  const args = ['--broker', redis.url, '--history', 'news=100/5m', '--client-publish', 'news', '--ping-interval', '200ms', '--pong-timeout', '400ms'];
  let a = await Server.start(args);
  const b = await Server.start(args);
  const nginx = await Nginx.start(a.addr, '60s', { refuseUpgrades: true });
  if (!nginx) return;
  const c = client(nginx.ws, { fallbackAfter: 2, openTimeout: 3000, upgradeProbe: 300 });
  try {
    const started = Date.now();
    await c.waitFor('open');
    assert.equal(c.transport, 'http_stream');
    const refused = c.events('close');
    assert.equal(refused.length, 2, 'two WebSocket attempts, then the fallback');
    assert.ok(refused.every((e) => e.transport === 'websocket' && e.willReconnect), JSON.stringify(refused));
    assert.ok(Date.now() - started < 5000, `open on the fallback after ${Date.now() - started} ms`);
    assert.deepEqual(c.events('transport').map((t) => t.transport), ['http_stream']);

    await c.subscribe('news');
    await b.publish('news', { n: 1 }); // the other node: through Redis
    await c.publish('news', { n: 2 }); // the client's own, POSTed to /stream/send
    await c.waitFor('publication', 2);
    await c.waitFor('rtt', 2); // the heartbeat's ping command, answered over the stream

    // The node holding the session dies; publications go on meanwhile on the other node.
    await a.kill9();
    const lost = (await c.waitFor('close', 3))[2];
    assert.equal(lost.transport, 'http_stream');
    assert.equal(lost.willReconnect, true);
    for (let n = 3; n <= 5; n++) await b.publish('news', { n });
    a = await a.restart();
    await waitFor('the resubscribe', () => c.events('subscribed').some((s) => s.resubscribe && s.recovered === true), 15000);
    await b.publish('news', { n: 6 });
    await c.waitFor('publication', 6);
    assert.equal(c.transport, 'http_stream', 'upgrades are still refused');

    // nginx lets upgrades through: the client moves back to WebSocket, recovering on the way.
    await nginx.setUpgrades(true);
    await waitFor('the move back to WebSocket', () => c.transport === 'websocket' && c.state === 'open', 15000);
    const moved = c.events('close').at(-1);
    assert.equal(moved.code, 1000);
    assert.equal(moved.transport, 'http_stream');
    await waitFor('the resubscribe', () => c.events('subscribed').filter((s) => s.resubscribe && s.recovered === true).length >= 2, 15000);
    await b.publish('news', { n: 7 });
    await c.waitFor('publication', 7);
    const seen = c.events('publication').map((p) => p.data.n);
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7], 'none lost, none twice, in order');
  } finally {
    c.close();
    await nginx.stop();
    await a.stop();
    await b.stop();
    await redis.stop();
  }
});

test('against a server that is down, every transport backs off with jitter: no tight loop', { timeout: 30000 }, async () => {
  // A port nothing listens on.
  const s = await Server.start([]);
  const addr = s.addr;
  await s.stop();
  const c = client(`ws://${addr}/ws`, { fallbackAfter: 2, backoffInitial: 100, backoffMax: 400 });
  try {
    const window = 3000;
    await new Promise((resolve) => setTimeout(resolve, window));
    const closes = c.events('close');
    const transports = new Set(closes.map((e) => e.transport));
    assert.deepEqual([...transports].sort(), ['http_stream', 'sse', 'websocket'], 'each transport tried, in turn');
    // Full jitter under a 100-400 ms ceiling: about 12 attempts in 3 s; a tight loop makes thousands.
    assert.ok(c.stats.connectAttempts >= 5 && c.stats.connectAttempts <= 40, `${c.stats.connectAttempts} attempts in ${window} ms`);
    assert.ok(closes.every((e) => e.willReconnect && e.retryIn !== null && e.retryIn <= 400), JSON.stringify(closes.slice(0, 3)));
    const delays = closes.map((e) => e.retryIn);
    assert.ok(new Set(delays).size > delays.length / 2, `jittered: ${delays}`);
  } finally {
    c.close();
  }
});
