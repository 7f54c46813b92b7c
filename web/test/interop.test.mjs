// The interoperability matrix, JavaScript side: Node's `ws` client and headless Chromium against
// the real `tether` binary. Each row runs the same checks as the Rust-driven rows
// (crates/tether-cli/tests/interop_matrix.rs) and is written to target/interop/rows, which
// scripts/interop-table renders into target/interop/interop.md (--write-docs: docs/interop.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { Server, repo, waitFor, requirements, browser } from './harness.mjs';

const SMALL = 'x';
const BIG = 'a'.repeat(200 * 1024);
const UTF8 = 'héllo ✓ 日本語 🎉';
const CLOSE_REASON = 'bye from peer ✓';
const SERVER_ARGS = [
  '--ping-interval', '200ms',
  '--client-publish', 'interop',
  '--max-inbound-rate', '0',
  '--max-message-size', '1MiB',
];
const wsVersion = JSON.parse(readFileSync(join(repo, 'web', 'node_modules', 'ws', 'package.json'))).version;

/** A matrix row: every check's outcome, written for the table, then asserted. */
class Row {
  constructor(peer, role, mode, compressionOffered) {
    Object.assign(this, { peer, role, mode, compression_offered: compressionOffered, negotiated: '', checks: [] });
  }
  check(name, ok) {
    this.checks.push([name, ok ? 'pass' : 'fail']);
  }
  notApplicable(name, why) {
    this.checks.push([name, `n/a: ${why}`]);
  }
  finish() {
    const dir = join(repo, 'target', 'interop', 'rows');
    mkdirSync(dir, { recursive: true });
    const slug = `${this.peer}-${this.role}-${this.mode}-${this.compression_offered}`
      .toLowerCase()
      .replace(/[^a-z0-9]/g, '-');
    writeFileSync(join(dir, `${slug}.json`), JSON.stringify(this, null, 2));
    const failed = this.checks.filter(([, r]) => r === 'fail');
    assert.deepEqual(failed, [], `${this.peer} ${this.mode}: failed checks`);
  }
}

/** Messages of a `ws` socket as a queue with deadlines. */
function inbox(ws) {
  const queue = [];
  const waiting = [];
  ws.on('message', (data) => {
    const text = data.toString('utf8');
    const w = waiting.shift();
    if (w) w(text);
    else queue.push(text);
  });
  return (ms = 10000) =>
    queue.length
      ? Promise.resolve(queue.shift())
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no message within the deadline')), ms);
          waiting.push((t) => {
            clearTimeout(timer);
            resolve(t);
          });
        });
}

function opened(ws) {
  return new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
}

function closed(ws) {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString('utf8') })));
}

async function nodeWsRow(mode, compression) {
  const server = await Server.start(SERVER_ARGS);
  const row = new Row(`Node ws ${wsVersion}`, 'client of tether serve', mode, compression);
  const url = mode === 'raw' ? `${server.ws}?channel=interop` : server.ws;
  const protocols = mode === 'json' ? ['tether.v1.json'] : [];
  const options = { perMessageDeflate: compression, maxPayload: 4 << 20 };
  try {
    const ws = new WebSocket(url, protocols, options);
    // The server's answer to the handshake, for the extensions it agreed to.
    const answer = new Promise((resolve) => ws.once('upgrade', (res) => resolve(res.headers)));
    const next = inbox(ws);
    await opened(ws);
    row.check('handshake', ws.protocol === (mode === 'json' ? 'tether.v1.json' : ''));
    row.negotiated = (await answer)['sec-websocket-extensions'] ?? '';
    // JSON mode: the next publication's data; raw mode: the next text.
    const payload = async () => {
      for (;;) {
        const text = await next();
        if (mode === 'raw') return text;
        const message = JSON.parse(text);
        if (message.type === 'publication') return message.data;
      }
    };
    const command = async (body) => {
      ws.send(JSON.stringify(body));
      for (;;) {
        const reply = JSON.parse(await next());
        if (reply.id === body.id) return reply;
      }
    };
    if (mode === 'raw') {
      ws.send('ping');
      row.check('text ping → pong', (await next()) === 'pong');
    } else {
      // A success: `result` (the first reply also tells the connection's client id).
      const pong = await command({ id: 1, cmd: 'ping' });
      row.check('text ping → pong', typeof pong.result === 'object' && !pong.error);
      assert.ok((await command({ id: 2, cmd: 'subscribe', channel: 'interop' })).result);
    }
    const pong = new Promise((resolve) => ws.once('pong', () => resolve(true)));
    ws.ping();
    row.check('protocol ping → pong', await pong);
    for (const [kind, data] of [['1 byte', SMALL], ['200 KiB', BIG], ['UTF-8', UTF8]]) {
      await server.publish('interop', data);
      row.check(kind, (await payload()) === data);
    }
    if (mode === 'json') {
      const text = JSON.stringify({ id: 3, cmd: 'publish', channel: 'interop', data: 'b'.repeat(BIG.length) });
      const quarter = Math.floor(text.length / 4);
      for (let i = 0; i < 4; i++) {
        ws.send(text.slice(i * quarter, i < 3 ? (i + 1) * quarter : undefined), { fin: i === 3 });
      }
      row.check('200 KiB in 4 fragments, inbound', (await payload()) === 'b'.repeat(BIG.length));
    } else {
      row.notApplicable('200 KiB in 4 fragments, inbound', 'raw mode ignores what clients send');
    }
    const done = closed(ws);
    ws.close(4100, CLOSE_REASON);
    const echo = await done;
    await waitFor('the server to log the close', () => server.log.includes(`code=4100 reason=${CLOSE_REASON}`));
    row.check('close by peer (4100, reason)', echo.code === 4100);

    const second = new WebSocket(url, protocols, options);
    const secondNext = inbox(second);
    await opened(second);
    if (mode === 'json') {
      second.send(JSON.stringify({ id: 1, cmd: 'subscribe', channel: 'interop' }));
      await secondNext();
    }
    const byServer = closed(second);
    await server.terminate();
    const end = await byServer;
    row.check('close by Tether (1012, reason)', end.code === 1012 && end.reason === 'server shutting down');
  } finally {
    await server.stop();
  }
  row.finish();
}

for (const mode of ['raw', 'json']) {
  for (const compression of [false, true]) {
    test(`interop: Node ws client, ${mode}, compression ${compression ? 'offered' : 'off'}`, () =>
      nodeWsRow(mode, compression),
    );
  }
}

/** Chromium rows: its native WebSocket in raw mode, and tether.js (JSON mode). */
test('interop: headless Chromium, native WebSocket (raw) and tether.js (json)', async (t) => {
  const { chromium, skip } = await requirements();
  if (skip) return t.skip(skip);
  const ctx = await browser(chromium);
  const version = ctx.browser()?.version() ?? (await (await ctx.newPage()).evaluate(() => navigator.userAgent.match(/Chrome\/([\d.]+)/)[1]));
  try {
    await t.test('native WebSocket, raw', async () => {
      const server = await Server.start(SERVER_ARGS);
      const row = new Row(`Chromium ${version}`, 'client of tether serve', 'raw', true);
      try {
        const page = await ctx.newPage();
        await page.goto(`${server.http}/healthz`);
        const hello = await page.evaluate(async (url) => {
          window.inbox = [];
          window.waiters = [];
          const open = (u) =>
            new Promise((resolve, reject) => {
              const ws = new WebSocket(u);
              ws.onmessage = (e) => (window.waiters.length ? window.waiters.shift()(e.data) : window.inbox.push(e.data));
              ws.onopen = () => resolve(ws);
              ws.onerror = () => reject(new Error('error event'));
              ws.closed = new Promise((r) => (ws.onclose = (e) => r({ code: e.code, reason: e.reason })));
            });
          window.next = () =>
            window.inbox.length
              ? Promise.resolve(window.inbox.shift())
              : new Promise((resolve) => window.waiters.push(resolve));
          window.ws = await open(url);
          window.open2 = open;
          return { protocol: window.ws.protocol, extensions: window.ws.extensions };
        }, `${server.ws}?channel=interop`);
        row.check('handshake', hello.protocol === '');
        row.negotiated = hello.extensions;
        row.check('text ping → pong', await page.evaluate(async () => (window.ws.send('ping'), (await window.next()) === 'pong')));
        // Browsers cannot send a protocol ping; they must answer the server's (every 200 ms).
        const rtts = () => server.metric('tether_heartbeat_rtt_seconds_count');
        await waitFor('the browser to answer two server pings', async () => (await rtts()) >= 2);
        row.check('protocol ping → pong', (await rtts()) >= 2);
        for (const [kind, data] of [['1 byte', SMALL], ['200 KiB', BIG], ['UTF-8', UTF8]]) {
          await server.publish('interop', data);
          row.check(kind, await page.evaluate(async (want) => (await window.next()) === want, data));
        }
        row.notApplicable('200 KiB in 4 fragments, inbound', 'raw mode ignores what clients send; browsers do not fragment');
        const echo = await page.evaluate(async (reason) => (window.ws.close(4100, reason), window.ws.closed), CLOSE_REASON);
        await waitFor('the server to log the close', () => server.log.includes(`code=4100 reason=${CLOSE_REASON}`));
        row.check('close by peer (4100, reason)', echo.code === 4100 && echo.reason === CLOSE_REASON);
        await page.evaluate(async (url) => (window.ws2 = await window.open2(url)), `${server.ws}?channel=interop`);
        await server.terminate();
        const end = await page.evaluate(() => window.ws2.closed);
        row.check('close by Tether (1012, reason)', end.code === 1012 && end.reason === 'server shutting down');
        await page.close();
      } finally {
        await server.stop();
      }
      row.finish();
    });

    await t.test('tether.js, json', async () => {
      const server = await Server.start(SERVER_ARGS);
      const row = new Row(`Chromium ${version} + tether.js`, 'client of tether serve', 'json', true);
      try {
        const page = await ctx.newPage();
        await page.goto(`${server.http}/healthz`);
        const run = (fn, arg) => page.evaluate(fn, arg);
        await run(async (url) => {
          const { TetherClient } = await import('/tether.js');
          window.makeClient = (u) => {
            const client = new TetherClient(u, { pingInterval: 200, pongTimeout: 1000 });
            client.events = [];
            for (const type of ['open', 'close', 'publication', 'rtt']) client.on(type, (d) => client.events.push({ type, d }));
            return client;
          };
          window.client = window.makeClient(url);
          await window.client.subscribe('interop');
        }, server.ws);
        const eventsOf = (type, which = 'client') => run(([type, which]) => window[which].events.filter((e) => e.type === type).map((e) => e.d), [type, which]);
        row.check('handshake', (await server.metric('tether_connections_accepted_total{mode="json"}')) === 1);
        row.negotiated = await run(() => window.client.extensions);
        await waitFor('two heartbeat round trips', async () => (await eventsOf('rtt')).length >= 2);
        row.check('text ping → pong', (await eventsOf('rtt')).length >= 2);
        const rtts = () => server.metric('tether_heartbeat_rtt_seconds_count');
        await waitFor('the browser to answer two server pings', async () => (await rtts()) >= 2);
        row.check('protocol ping → pong', (await rtts()) >= 2);
        const sent = [['1 byte', SMALL], ['200 KiB', BIG], ['UTF-8', UTF8]];
        for (const [, data] of sent) await server.publish('interop', data);
        await waitFor('three publications', async () => (await eventsOf('publication')).length >= 3);
        const got = await eventsOf('publication');
        sent.forEach(([kind, data], i) => row.check(kind, got[i].data === data));
        row.notApplicable('200 KiB in 4 fragments, inbound', 'browsers do not fragment');
        await run((reason) => window.client.close(4100, reason), CLOSE_REASON);
        await waitFor('the server to log the close', () => server.log.includes(`code=4100 reason=${CLOSE_REASON}`));
        row.check('close by peer (4100, reason)', true);
        await run(async (url) => {
          window.second = window.makeClient(url);
          await window.second.subscribe('interop');
        }, server.ws);
        await server.terminate();
        await waitFor('the close event', async () => (await eventsOf('close', 'second')).length >= 1);
        const [end] = await eventsOf('close', 'second');
        row.check('close by Tether (1012, reason)', end.code === 1012 && end.reason === 'server shutting down');
        await run(() => window.second.close());
        await page.close();
      } finally {
        await server.stop();
      }
      row.finish();
    });
  } finally {
    await ctx.close();
  }
});
