// tether.js, the dashboard and the plain-WebSocket example in real headless Chromium, against
// the real `tether` binary. Run by scripts/test (which installs Chromium and playwright-core).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  JWT_SECRET, Redis, Relay, Server, browser, ensureOutputDir, events, pageWithClient, requirements, token, waitEvents, waitFor,
} from './harness.mjs';

const req = await requirements();
let ctx = null;
const servers = [];

async function start(args) {
  const s = await Server.start(args);
  servers.push(s);
  return s;
}

async function restart(server) {
  const s = await server.restart();
  servers.push(s);
  return s;
}

before(async () => {
  if (!req.skip) ctx = await browser(req.chromium);
});

after(async () => {
  for (const s of servers) await s.stop();
  if (ctx) await ctx.close();
});

const FAST = { pingInterval: 100, pongTimeout: 200, backoffInitial: 100, backoffMax: 400 };

test('heartbeat keeps an idle connection open for many intervals; the page shows RTT', { skip: req.skip }, async () => {
  const server = await start(['--ping-interval', '100ms', '--pong-timeout', '300ms']);
  const page = await pageWithClient(ctx, server, FAST);
  // Twenty heartbeat round trips (≈ 2 s of application silence) without a single close.
  const rtts = await waitEvents(page, 'rtt', 20);
  assert.ok(rtts.every((e) => e.detail.ms >= 0 && e.detail.ms < 1000), JSON.stringify(rtts.slice(0, 3)));
  assert.deepEqual(await events(page, 'close'), []);
  assert.equal(await page.evaluate(() => window.client.state), 'open');
  assert.equal(await server.metric('tether_connections_accepted_total'), 1);
  assert.equal(await server.metric('tether_connections_closed_total'), 0);
  // The dashboard shows its own link's round trip.
  const dash = await ctx.newPage();
  await dash.goto(`${server.http}/?ping=100&timeout=300`);
  await dash.waitForFunction(() => /\d+(\.\d+)? ms/.test(document.getElementById('feed-rtt').textContent), null, { timeout: 10000 });
  await page.close();
  await dash.close();
});

test('server killed and restarted: the page reconnects by itself, resubscribes and receives', { skip: req.skip }, async () => {
  let server = await start([]);
  const page = await pageWithClient(ctx, server, FAST, ['news']);
  await server.kill9();
  const [close] = await waitEvents(page, 'close');
  assert.equal(close.detail.code, 1006, JSON.stringify(close.detail));
  assert.equal(close.detail.wasClean, false);
  assert.equal(close.detail.initiator, 'network');
  assert.equal(close.detail.willReconnect, true);
  server = await restart(server);
  await waitFor('resubscribed', async () => (await events(page, 'subscribed')).some((e) => e.detail.resubscribe));
  const receipt = await server.publish('news', { n: 1 });
  assert.equal(receipt.delivered, 1);
  const [publication] = await waitEvents(page, 'publication');
  assert.deepEqual({ ...publication.detail, epoch: undefined }, { channel: 'news', offset: 1, epoch: undefined, data: { n: 1 } });
  assert.equal(typeof publication.detail.epoch, 'string');
  // One attempt at a time: the new server saw exactly one handshake, and every attempt but the
  // last ended in exactly one close event.
  assert.equal(await server.metric('tether_connections_accepted_total'), 1);
  const stats = await page.evaluate(() => window.client.stats);
  const closes = await events(page, 'close');
  assert.equal(closes.length, stats.connectAttempts - 1, JSON.stringify({ stats, closes: closes.length }));
  assert.equal(stats.opens, 2);
  await page.close();
});

test('graceful shutdown is reported as 1012 with wasClean=true', { skip: req.skip }, async () => {
  const server = await start([]);
  const page = await pageWithClient(ctx, server, FAST);
  await waitEvents(page, 'open');
  const exit = await server.terminate();
  assert.equal(exit.code, 0);
  const [close] = await waitEvents(page, 'close');
  assert.equal(close.detail.code, 1012, JSON.stringify(close.detail));
  assert.equal(close.detail.wasClean, true);
  assert.equal(close.detail.initiator, 'server');
  assert.equal(close.detail.reason, 'server shutting down');
  assert.ok(close.detail.retryIn >= 500 && close.detail.retryIn <= 1000, `the server's hint: ${close.detail.retryIn}`);
  await page.close();
});

test('a frozen server (SIGSTOP) is detected within the heartbeat timeout', { skip: req.skip }, async () => {
  const server = await start([]);
  const page = await pageWithClient(ctx, server, FAST);
  await waitEvents(page, 'rtt');
  const frozenAt = Date.now();
  server.signal('SIGSTOP');
  try {
    const [close] = await waitEvents(page, 'close');
    const detectedAfter = close.at - frozenAt;
    assert.equal(close.detail.code, 4000, JSON.stringify(close.detail));
    assert.equal(close.detail.initiator, 'client');
    assert.equal(close.detail.wasClean, false);
    assert.match(close.detail.reason, /heartbeat timeout/);
    assert.ok(detectedAfter <= 300 + 600, `detected after ${detectedAfter} ms (bound 300 ms + slack)`);
    assert.equal(await page.evaluate(() => window.client.stats.heartbeatTimeouts), 1);
  } finally {
    server.signal('SIGCONT');
  }
  // Once resumed, the client is back.
  await waitFor('reopen', async () => (await events(page, 'open')).length >= 2, 15000);
  await page.close();
});

test('offline: no retries while offline, a prompt reconnect when back online', { skip: req.skip }, async () => {
  // going-away (no retry hint) and a long backoff: only the `online` event can explain a fast return.
  let server = await start(['--shutdown-close', 'going-away']);
  const page = await pageWithClient(ctx, server, { ...FAST, backoffInitial: 5000, backoffMax: 5000 });
  await waitEvents(page, 'open');
  await ctx.setOffline(true);
  try {
    await server.terminate();
    const [close] = await waitEvents(page, 'close');
    assert.equal(close.detail.willReconnect, true);
    assert.equal(close.detail.retryIn, null, 'no retry is scheduled while offline');
    assert.equal(await page.evaluate(() => window.client.waitingForOnline), true);
    server = await restart(server);
    const attemptsBefore = await page.evaluate(() => window.client.stats.connectAttempts);
    // A deliberate observation window: nothing may happen in it.
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(await page.evaluate(() => window.client.stats.connectAttempts), attemptsBefore);
    assert.equal(await server.metric('tether_connections_accepted_total'), 0);
  } finally {
    await ctx.setOffline(false);
  }
  const onlineAt = Date.now();
  const opens = await waitEvents(page, 'open', 2);
  const after = opens[1].at - onlineAt;
  assert.ok(after < 1000, `reconnected ${after} ms after going online (the backoff alone would wait up to 5 s)`);
  assert.equal(await server.metric('tether_connections_accepted_total'), 1);
  await page.close();
});

test('navigating away closes with 1001, seen by the server', { skip: req.skip }, async () => {
  const server = await start([]);
  const page = await pageWithClient(ctx, server, FAST);
  await waitEvents(page, 'open');
  await page.goto('about:blank');
  await waitFor('the server to record 1001 from the client', async () =>
    (await server.metric('tether_connections_closed_total{code="1001",initiator="client"}')) === 1,
  );
  assert.equal(await server.metric('tether_connections_closed_total{code="1006"}'), 0, 'not a dropped TCP connection');
  await page.close();
});

test('the dashboard loads and shows live values; screenshot', { skip: req.skip }, async () => {
  const server = await start(['--ping-interval', '100ms']);
  const page = await ctx.newPage();
  await page.goto(`${server.http}/?ping=200&timeout=400`);
  // Traffic: the playground connects, subscribes, publishes, and we close one connection.
  await page.click('#play-connect');
  await page.waitForFunction(() => window.tetherDashboard.play && window.tetherDashboard.play.state === 'open');
  await page.click('#play-subscribe');
  for (let i = 0; i < 5; i++) await server.publish('demo', { i });
  await page.click('#play-publish');
  await page.waitForFunction(() => document.getElementById('play-log').textContent.includes('published to demo'));
  const other = await pageWithClient(ctx, server, FAST);
  await other.close({ runBeforeUnload: false });
  await page.waitForFunction(
    () => {
      const s = window.tetherDashboard.snapshot;
      const lines = ['connections', 'messages', 'rtt', 'memory'].every((c) => document.querySelector(`#chart-${c} svg polyline`));
      return lines && s && s.connections >= 2 && s.messages_per_sec > 0 && s.rtt_p50_ms > 0 && s.rss_bytes > 0 && s.heap_bytes > 0 && s.closes.length > 0;
    },
    null,
    { timeout: 15000 },
  );
  const shown = await page.evaluate(() => ({
    connections: Number(document.getElementById('kpi-connections').textContent),
    rate: Number(document.getElementById('kpi-rate').textContent),
    rtt: document.getElementById('kpi-rtt').textContent,
    rss: document.getElementById('kpi-rss').textContent,
    heap: document.getElementById('kpi-heap').textContent,
    lines: ['connections', 'messages', 'rtt', 'memory'].map((c) => document.querySelectorAll(`#chart-${c} svg polyline`).length),
    closes: [...document.querySelectorAll('#closes tr td:first-child')].filter((td) => /^\d{4}$/.test(td.textContent)).length,
  }));
  assert.ok(shown.connections >= 2, JSON.stringify(shown));
  assert.ok(shown.rate > 0, JSON.stringify(shown));
  assert.match(shown.rtt, /ms$/);
  assert.match(shown.rss, /MiB|GiB/);
  assert.ok(shown.lines.every((n) => n >= 1), `every chart draws a line: ${JSON.stringify(shown)}`);
  assert.equal(shown.lines[3], 2, `the memory chart shows heap beside resident: ${JSON.stringify(shown)}`);
  assert.match(shown.heap, /^heap .*(KiB|MiB)/);
  assert.ok(shown.closes >= 1);
  // The playground's subscription is listed with its channel.
  await page.waitForFunction(() => [...document.querySelectorAll('#channels tr td:first-child')].some((td) => td.textContent === 'demo'));
  const file = join(ensureOutputDir(), 'dashboard.png');
  await page.screenshot({ path: file, fullPage: true });
  console.log(`dashboard screenshot: ${file}`);
  await page.close();
});

test('the plain-WebSocket example page gets "pong" for "ping" and receives a publication', { skip: req.skip }, async () => {
  const server = await start([]);
  const page = await ctx.newPage();
  await page.goto(`${server.http}/examples/plain.html?channel=news`);
  await page.waitForFunction(() => document.getElementById('log').textContent.includes('message: pong'));
  await server.publish('news', 'hello, plain page');
  await page.waitForFunction(() => document.getElementById('log').textContent.includes('message: hello, plain page'));
  assert.equal(await server.metric('tether_connections_accepted_total{mode="raw"}'), 1);
  await page.close();
});

test('raw mode: tether.js pings with the text "ping" and receives ?channel= publications', { skip: req.skip }, async () => {
  const server = await start([]);
  const page = await pageWithClient(ctx, server, { ...FAST, protocol: 'raw' }, [], `${server.ws}?channel=news`);
  await waitEvents(page, 'rtt', 3);
  await server.publish('news', { raw: true });
  const [message] = await waitEvents(page, 'message');
  assert.equal(message.detail.data, '{"raw":true}');
  assert.equal(await server.metric('tether_connections_accepted_total{mode="raw"}'), 1);
  assert.equal(await server.metric('tether_raw_messages_ignored_total'), 0, 'its pings are all answered, none ignored');
  await page.close();
});

test('the offline queue is bounded: overflow rejects, queued sends go out after the reconnect', { skip: req.skip }, async () => {
  let server = await start(['--client-publish', 'chat:*']);
  const page = await pageWithClient(ctx, server, { ...FAST, offlineQueue: 2 }, ['chat:room']);
  await server.kill9();
  await waitEvents(page, 'close');
  const refusal = await page.evaluate(async () => {
    window.queued = Promise.all([1, 2].map((n) => window.client.publish('chat:room', { n })));
    try {
      await window.client.publish('chat:room', { n: 3 });
      return 'accepted';
    } catch (e) {
      return e.message;
    }
  });
  assert.match(refusal, /offline queue full/);
  server = await restart(server);
  const receipts = await page.evaluate(() => window.queued);
  assert.equal(receipts[1].offset, receipts[0].offset + 1, JSON.stringify(receipts));
  const publications = await waitEvents(page, 'publication', 2);
  assert.deepEqual(publications.map((p) => p.detail.data), [{ n: 1 }, { n: 2 }]);
  await page.close();
});

test('recovery: a page that lost its connection gets exactly the publications it missed', { skip: req.skip }, async () => {
  const server = await start(['--history', 'chat:*=100/1m']);
  const relay = await Relay.start(server.addr);
  try {
    const page = await pageWithClient(ctx, server, FAST, ['chat:room'], `ws://${relay.addr}/ws`);
    for (let n = 1; n <= 3; n++) await server.publish('chat:room', { n });
    await waitEvents(page, 'publication', 3);
    relay.cut();
    await waitEvents(page, 'close');
    // Published while the page is away: offsets 4..8.
    for (let n = 4; n <= 8; n++) await server.publish('chat:room', { n });
    relay.unblock();
    await waitFor('recovered resubscribe', async () =>
      (await events(page, 'subscribed')).some((e) => e.detail.resubscribe && e.detail.recovered === true),
    );
    await server.publish('chat:room', { n: 9 });
    const publications = await waitEvents(page, 'publication', 9);
    assert.deepEqual(publications.map((p) => p.detail.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9], 'no gap, no duplicate');
    assert.deepEqual(publications.map((p) => p.detail.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.equal(await server.metric('tether_recoveries_total{outcome="recovered"}'), 1);
    await page.close();
  } finally {
    await relay.close();
  }
});

// --- tokens (JWT) ----------------------------------------------------------------------------

/** A page whose client authenticates with `first`, and whose getToken returns `window.fresh`. */
async function pageWithToken(server, first, withRefresh) {
  const page = await ctx.newPage();
  await page.goto(`${server.http}/healthz`);
  await page.evaluate(
    async ({ url, first, withRefresh, fast }) => {
      const { TetherClient } = await import('/tether.js');
      window.events = [];
      window.refreshes = 0;
      const options = { ...fast, token: first };
      if (withRefresh) {
        options.getToken = async () => {
          window.refreshes += 1;
          return window.fresh;
        };
      }
      const client = new TetherClient(url, options);
      for (const type of ['open', 'close', 'subscribed', 'publication', 'stopped', 'error']) {
        client.on(type, (detail) => window.events.push({ type, detail, at: Date.now() }));
      }
      window.client = client;
      client.subscribe('news:eu').catch(() => {});
    },
    { url: server.ws, first, withRefresh, fast: FAST },
  );
  return page;
}

test('tether.js refreshes an expired token with getToken and carries on', { skip: req.skip }, async () => {
  const server = await start(['--jwt-secret', JWT_SECRET, '--ping-interval', '100ms']);
  const page = await pageWithToken(server, token('2s'), true);
  const fresh = token('1h');
  await page.evaluate((t) => (window.fresh = t), fresh);
  await waitEvents(page, 'subscribed');
  let expiredClose = null;
  await waitFor('the 4002 close', async () => (expiredClose = (await events(page, 'close')).find((e) => e.detail.code === 4002)));
  assert.equal(expiredClose.detail.willReconnect, true);
  await waitFor('a resubscribe', async () => (await events(page, 'subscribed')).some((e) => e.detail.resubscribe));
  assert.equal(await page.evaluate(() => window.refreshes), 1);
  await server.publish('news:eu', 'fresh');
  const [publication] = await waitEvents(page, 'publication');
  assert.equal(publication.detail.data, 'fresh');
  await page.close();
});

test('tether.js stops on an expired token without getToken, and on an invalid one', { skip: req.skip }, async () => {
  const server = await start(['--jwt-secret', JWT_SECRET]);
  const expired = await pageWithToken(server, token('0s'), false);
  const [stopped] = await waitEvents(expired, 'stopped');
  assert.match(stopped.detail.reason, /getToken/);
  const invalid = await pageWithToken(server, 'not.a.jwt', false);
  const [close] = await waitEvents(invalid, 'close');
  assert.equal(close.detail.code, 4502);
  assert.equal(close.detail.willReconnect, false);
  await waitEvents(invalid, 'stopped');
  await expired.close();
  await invalid.close();
});

// --- behind a proxy ----------------------------------------------------------------------------

test('behind nginx (proxy_read_timeout 3s) without heartbeats: tether.js reports the cut and reconnects', { skip: req.skip }, async () => {
  const { Nginx } = await import('./harness.mjs');
  const server = await start(['--ping-interval', '1h']);
  const nginx = await Nginx.start(server.addr, '3s');
  if (!nginx) return;
  try {
    const silent = { ...FAST, pingInterval: 3_600_000, pongTimeout: 10_000 };
    const page = await pageWithClient(ctx, server, silent, [], nginx.ws);
    const [opened] = await waitEvents(page, 'open');
    const [close] = await waitEvents(page, 'close', 1, 10000);
    const after = close.at - opened.at;
    assert.equal(close.detail.code, 1006, JSON.stringify(close.detail));
    assert.equal(close.detail.willReconnect, true);
    assert.ok(after >= 2500 && after < 6000, `cut after ${after} ms, expected about nginx's 3 s`);
    const opens = await waitEvents(page, 'open', 2);
    assert.equal(opens[1].detail.reconnected, true);
    await page.close();
  } finally {
    await nginx.stop();
  }
});

test('behind nginx that refuses upgrades: tether.js falls back to HTTP-streaming, recovers after kill -9, and moves back to WebSocket', { skip: req.skip }, async () => {
  const { Nginx } = await import('./harness.mjs');
  const redis = await Redis.start();
  if (!redis) return;
  const args = ['--broker', redis.url, '--history', 'news=100/5m', '--client-publish', 'news', '--ping-interval', '200ms', '--pong-timeout', '400ms'];
  let a = await start(args);
  const b = await start(args);
  const nginx = await Nginx.start(a.addr, '60s', { refuseUpgrades: true });
  if (!nginx) return;
  try {
    const options = { ...FAST, pingInterval: 200, pongTimeout: 400, fallbackAfter: 2, openTimeout: 3000, upgradeProbe: 300 };
    const origin = { http: `http://${nginx.addr}` };
    const started = Date.now();
    const page = await pageWithClient(ctx, origin, options, ['news'], nginx.ws);
    const transport = () => page.evaluate(() => window.client.transport);
    assert.equal(await transport(), 'http_stream');
    assert.ok(Date.now() - started < 8000, `subscribed on the fallback after ${Date.now() - started} ms`);
    const refused = (await events(page, 'close')).map((e) => e.detail);
    assert.deepEqual(refused.map((e) => e.transport), ['websocket', 'websocket'], JSON.stringify(refused));
    await b.publish('news', { n: 1 });
    await page.evaluate(() => window.client.publish('news', { n: 2 }));
    await waitEvents(page, 'publication', 2);
    await waitEvents(page, 'rtt', 2); // heartbeats, answered over the stream

    await a.kill9();
    for (let n = 3; n <= 5; n++) await b.publish('news', { n });
    a = await restart(a);
    const recovered = async () => (await events(page, 'subscribed')).some((e) => e.detail.resubscribe && e.detail.recovered === true);
    await waitFor('the recovering resubscribe', recovered, 15000);
    assert.equal(await transport(), 'http_stream');

    await nginx.setUpgrades(true);
    await waitFor('the move back to WebSocket', async () => (await transport()) === 'websocket' && (await page.evaluate(() => window.client.state)) === 'open', 15000);
    const moved = (await events(page, 'close')).at(-1).detail;
    assert.equal(moved.transport, 'http_stream');
    assert.equal(moved.code, 1000);
    await waitFor('the second recovering resubscribe', async () => (await events(page, 'subscribed')).filter((e) => e.detail.resubscribe && e.detail.recovered === true).length >= 2, 15000);
    await b.publish('news', { n: 6 });
    const seen = (await waitEvents(page, 'publication', 6)).map((e) => e.detail.data.n);
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6], 'none lost, none twice, in order');
    await page.close();
  } finally {
    await nginx.stop();
    await redis.stop();
  }
});

test('behind nginx that refuses upgrades: an SSE session carries commands, publications and heartbeats', { skip: req.skip }, async () => {
  const { Nginx } = await import('./harness.mjs');
  const server = await start(['--history', 'news=100/5m', '--client-publish', 'news', '--ping-interval', '200ms', '--pong-timeout', '400ms']);
  const nginx = await Nginx.start(server.addr, '60s', { refuseUpgrades: true });
  if (!nginx) return;
  try {
    const options = { ...FAST, pingInterval: 200, pongTimeout: 400, fallbackAfter: 1, transports: ['websocket', 'sse'], upgradeProbe: 0 };
    const page = await pageWithClient(ctx, { http: `http://${nginx.addr}` }, options, ['news'], nginx.ws);
    assert.equal(await page.evaluate(() => window.client.transport), 'sse');
    await server.publish('news', { n: 1 });
    await page.evaluate(() => window.client.publish('news', { n: 2 }));
    const seen = (await waitEvents(page, 'publication', 2)).map((e) => e.detail.data.n);
    assert.deepEqual(seen, [1, 2]);
    // Alive well past the server's ping + pong bound: its pings are answered.
    await waitEvents(page, 'rtt', 6);
    assert.equal((await events(page, 'close')).length, 1, 'only the refused WebSocket closed');
    await page.close();
  } finally {
    await nginx.stop();
  }
});

test('tether.js knows its client id and asks who is in a presence channel', { skip: req.skip }, async () => {
  const { writeFileSync } = await import('node:fs');
  const config = join(ensureOutputDir(), `presence-${process.pid}.toml`);
  writeFileSync(config, '[[channel]]\npattern = "room:*"\npresence = true\nhistory = "10/1m"\n');
  const server = await start(['--config', config, '--ping-interval', '100ms']);
  const [a, b] = [await pageWithClient(ctx, server, FAST, ['room:1']), await pageWithClient(ctx, server, FAST, ['room:1'])];
  const idOf = (page) => page.evaluate(() => window.client.clientId);
  await waitFor('both client ids', async () => (await idOf(a)) && (await idOf(b)));
  const [idA, idB] = [await idOf(a), await idOf(b)];
  assert.notEqual(idA, idB);
  const present = await a.evaluate(() => window.client.presence('room:1'));
  assert.deepEqual(Object.keys(present).sort(), [idA, idB].sort());
  assert.deepEqual(present[idB], { client: idB });
  assert.deepEqual(await a.evaluate(() => window.client.presenceStats('room:1')), { numClients: 2, numUsers: 2 });
  const refused = await a.evaluate(() => window.client.presence('room:2').then(() => null, (e) => e.code));
  assert.equal(refused, 'not_subscribed');
  // History over the WebSocket, for a subscriber.
  await server.publish('room:1', 'one');
  await server.publish('room:1', 'two');
  const page = await a.evaluate(() => window.client.history('room:1', { limit: 5, reverse: true }));
  assert.equal(page.offset, 2);
  assert.deepEqual(page.publications.map((p) => p.data), ['two', 'one']);
  // The other page goes away: its entry with it.
  await b.close();
  await waitFor('the closed page gone from presence', async () => {
    const now = await a.evaluate(() => window.client.presence('room:1'));
    return Object.keys(now).length === 1 && now[idA];
  });
  await a.close();
});

test('tether.js reports joins and leaves, batches unpacked into one event per change', { skip: req.skip }, async () => {
  const { writeFileSync } = await import('node:fs');
  const config = join(ensureOutputDir(), `join-leave-${process.pid}.toml`);
  writeFileSync(config, '[[channel]]\npattern = "room:*"\njoin_leave = true\n');
  // Batches from the third local subscriber on: the last joins and the leaves come batched.
  const server = await start(['--config', config, '--ping-interval', '100ms', '--join-leave-batch-above', '2', '--join-leave-interval', '100ms']);
  const a = await pageWithClient(ctx, server, FAST, ['room:1']);
  await a.evaluate(() => {
    window.changes = [];
    for (const type of ['join', 'leave', 'user_join', 'user_leave']) {
      window.client.on(type, (d) => window.changes.push(`${type} ${d.info.client}`));
    }
  });
  const others = [];
  for (let i = 0; i < 3; i++) others.push(await pageWithClient(ctx, server, FAST, ['room:1']));
  const ids = [];
  for (const p of others) {
    await waitFor('a client id', async () => await p.evaluate(() => window.client.clientId));
    ids.push(await p.evaluate(() => window.client.clientId));
  }
  const changes = () => a.evaluate(() => window.changes);
  await waitFor('three joins', async () => (await changes()).filter((c) => c.startsWith('join ')).length === 3);
  for (const p of others) await p.close();
  await waitFor('three leaves', async () => (await changes()).filter((c) => c.startsWith('leave ')).length === 3);
  const seen = await changes();
  assert.deepEqual(seen.filter((c) => c.startsWith('join ')).map((c) => c.slice(5)), ids, 'joins in order');
  assert.deepEqual(seen.filter((c) => c.startsWith('leave ')).map((c) => c.slice(6)).sort(), [...ids].sort());
  await a.close();
});

test('a plain EventSource on /sse recovers with Last-Event-ID across a kill -9 and restart of its node (Redis history)', { skip: req.skip }, async () => {
  const redis = await Redis.start();
  if (!redis) return;
  try {
    const args = ['--broker', redis.url, '--history', 'feed=100/5m'];
    let a = await start(args);
    const b = await start(args);
    const page = await ctx.newPage();
    await page.goto(`${a.http}/healthz`); // any page of the node's origin
    await page.evaluate(() => {
      window.seen = [];
      window.hello = [];
      const es = new EventSource('/sse?channel=feed');
      es.onmessage = (e) => window.seen.push({ n: JSON.parse(e.data).data.n, id: e.lastEventId });
      es.addEventListener('subscribed', (e) => window.hello.push(JSON.parse(e.data).feed));
    });
    await page.waitForFunction(() => window.hello.length === 1);
    // Published on the other node: the stream gets them through Redis.
    for (let n = 1; n <= 2; n++) await b.publish('feed', { n });
    await page.waitForFunction(() => window.seen.length === 2);
    await a.kill9();
    for (let n = 3; n <= 5; n++) await b.publish('feed', { n });
    a = await restart(a);
    // The browser reconnects by itself, with the last id it saw.
    await page.waitForFunction(() => window.hello.length === 2, null, { timeout: 15000 });
    const hello = await page.evaluate(() => window.hello);
    assert.equal(hello[1].recovered, true, JSON.stringify(hello));
    await b.publish('feed', { n: 6 });
    await page.waitForFunction(() => window.seen.length >= 6);
    const seen = await page.evaluate(() => window.seen);
    assert.deepEqual(seen.map((e) => e.n), [1, 2, 3, 4, 5, 6], 'exactly the missed ones, in order, then live');
    assert.match(seen[5].id, /^[0-9a-f]+:6$/);
    await page.close();
  } finally {
    await redis.stop();
  }
});
