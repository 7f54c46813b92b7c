// tether.js's lifecycle in headless Chromium against the real `tether` binary: close() then
// connect() before the old socket has closed, connect() while getToken is in flight, and a
// page frozen in the back/forward cache and restored. Each checks that pending promises settle,
// `stopped` comes exactly once, and exactly one new socket opens. Last, send() against a server
// that reads nothing: the socket's bufferedAmount stays bounded.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { JWT_SECRET, Server, browser, events, requirements, token, waitEvents, waitFor } from './harness.mjs';

const req = await requirements();
let ctx = null;
const servers = [];

async function start(args) {
  const s = await Server.start(args);
  servers.push(s);
  return s;
}

before(async () => {
  // The back/forward cache on, as in a user's browser.
  if (!req.skip) ctx = await browser(req.chromium, { bfcache: true });
});

after(async () => {
  for (const s of servers) await s.stop();
  if (ctx) await ctx.close();
});

const FAST = { pingInterval: 100, pongTimeout: 200, backoffInitial: 100, backoffMax: 400 };

/**
 * A page with a client whose sockets are recorded (`window.sockets`, each with the messages it
 * `sent`), whose events go to `window.events`, and `window.track(promise)` to follow a promise.
 * `refreshable`: getToken waits until the test resolves `window.tokenCalls[n]`.
 */
async function pageWithClient(server, options, refreshable = false) {
  const page = await ctx.newPage();
  await page.goto(`${server.http}/healthz`);
  await page.evaluate(
    async ({ url, options, refreshable }) => {
      const { TetherClient } = await import('/tether.js');
      window.sockets = [];
      class Recorded extends WebSocket {
        constructor(...args) {
          super(...args);
          this.sent = [];
          window.sockets.push(this);
        }

        send(data) {
          this.sent.push(data);
          return super.send(data);
        }
      }
      window.track = (promise) => {
        const t = { settled: false, status: 'pending', reason: null };
        promise.then(
          () => Object.assign(t, { settled: true, status: 'fulfilled' }),
          (e) => Object.assign(t, { settled: true, status: 'rejected', reason: String(e && e.message) }),
        );
        return t;
      };
      window.tokenCalls = [];
      if (refreshable) options.getToken = () => new Promise((resolve) => window.tokenCalls.push(resolve));
      window.events = [];
      const client = new TetherClient(url, { ...options, WebSocket: Recorded });
      for (const type of ['state', 'open', 'close', 'subscribed', 'publication', 'stopped', 'error']) {
        client.on(type, (detail) => window.events.push({ type, detail, at: Date.now() }));
      }
      window.client = client;
    },
    { url: server.ws, options, refreshable },
  );
  return page;
}

/** The order in which events of the given types were recorded. */
async function order(page, types) {
  return (await page.evaluate(() => window.events)).filter((e) => types.includes(e.type)).map((e) => e.type);
}

test('close() then connect() before the old socket closes: the pending publish rejects, one stopped, one new socket', { skip: req.skip }, async () => {
  const server = await start(['--ping-interval', '100ms', '--client-publish', 'chat:*']);
  const page = await pageWithClient(server, FAST);
  await page.evaluate(() => window.client.subscribe('chat:room'));
  await page.evaluate(() => {
    window.pending = window.track(window.client.publish('chat:room', { n: 1 }));
    window.client.close();
    window.client.connect();
  });
  await waitFor('the pending publish to settle', () => page.evaluate(() => window.pending.settled), 5000);
  assert.deepEqual(await page.evaluate(() => window.pending), { settled: true, status: 'rejected', reason: 'close() was called before the reply' });
  const [stopped] = await waitEvents(page, 'stopped');
  assert.equal(stopped.detail.reason, 'closed by the application');
  await waitEvents(page, 'open', 2);
  await waitFor('the old socket to finish closing', () => page.evaluate(() => window.sockets[0].readyState === WebSocket.CLOSED));
  await page.evaluate(() => window.client.publish('chat:room', { n: 2 }));
  await waitFor('the publication on the new connection', async () => (await events(page, 'publication')).some((p) => p.detail.data.n === 2));
  assert.deepEqual(await order(page, ['open', 'stopped']), ['open', 'stopped', 'open']);
  assert.equal((await events(page, 'stopped')).length, 1);
  assert.deepEqual((await events(page, 'close')).map((e) => [e.detail.code, e.detail.initiator, e.detail.willReconnect]), [[1000, 'client', false]]);
  assert.deepEqual(await page.evaluate(() => [window.client.state, window.sockets.length, window.client.stats.connectAttempts]), ['open', 2, 2]);
  assert.equal(await server.metric('tether_connections_accepted_total'), 2);
  await page.close();
});

test('connect() while getToken is in flight waits for it: one socket, with the fresh token', { skip: req.skip }, async () => {
  const server = await start(['--jwt-secret', JWT_SECRET, '--ping-interval', '100ms']);
  const page = await pageWithClient(server, { ...FAST, token: token('0s') }, true);
  await page.evaluate(() => {
    window.client.subscribe('news:eu').catch(() => {}); // settles later: not awaited here
  });
  const [expired] = await waitEvents(page, 'close', 1, 15000);
  assert.deepEqual([expired.detail.code, expired.detail.willReconnect], [4002, true]);
  await waitFor('getToken to be called', () => page.evaluate(() => window.tokenCalls.length === 1));
  const during = await page.evaluate(() => {
    window.client.close();
    window.client.connect();
    return { sockets: window.sockets.length, state: window.client.state };
  });
  assert.deepEqual(during, { sockets: 1, state: 'connecting' }, 'no socket opens while getToken is in flight');
  const fresh = token('1h');
  // The first connection may have subscribed already (its token is good for jwt_leeway, 5 s,
  // before the 4002): wait for the new connection's own confirmation.
  const before = (await events(page, 'subscribed')).length;
  await page.evaluate((t) => window.tokenCalls[0](t), fresh);
  await waitEvents(page, 'subscribed', before + 1);
  const sent = await page.evaluate(() => ({ sockets: window.sockets.length, first: JSON.parse(window.sockets[1].sent[0]), calls: window.tokenCalls.length }));
  assert.deepEqual(sent, { sockets: 2, first: { id: sent.first.id, cmd: 'connect', token: fresh }, calls: 1 });
  assert.deepEqual((await events(page, 'close')).map((e) => e.detail.code), [4002]);
  assert.deepEqual((await events(page, 'stopped')).map((e) => e.detail.reason), ['closed by the application']);
  assert.equal(await server.metric('tether_connections_closed_total{code="4002"}'), 1);
  await page.close();
});

test('back/forward cache: hidden with a reply pending, it settles and stops; restored, it reconnects once', { skip: req.skip }, async () => {
  const server = await start(['--client-publish', 'chat:*']);
  const elsewhere = await start([]);
  // No heartbeat: only the page's freezing may end the connection the frozen server holds.
  const page = await pageWithClient(server, { ...FAST, pingInterval: 0 });
  await page.evaluate(() => {
    window.transitions = [];
    for (const type of ['pagehide', 'pageshow']) addEventListener(type, (e) => window.transitions.push([type, e.persisted]));
    return window.client.subscribe('chat:room');
  });
  server.signal('SIGSTOP'); // the publish below gets no reply
  try {
    await page.evaluate(() => (window.pending = window.track(window.client.publish('chat:room', { n: 1 }))));
    await page.goto(`${elsewhere.http}/healthz`);
  } finally {
    server.signal('SIGCONT');
  }
  await page.goBack({ waitUntil: 'commit' });
  await waitFor('the page shown again', () => page.evaluate(() => window.transitions?.length === 2).catch(() => false));
  assert.deepEqual(await page.evaluate(() => window.transitions), [['pagehide', true], ['pageshow', true]], 'restored from the cache');
  assert.deepEqual(await page.evaluate(() => window.pending), { settled: true, status: 'rejected', reason: 'the page was hidden before the reply' });
  assert.deepEqual((await events(page, 'stopped')).map((e) => e.detail.reason), ['the page was hidden']);
  await waitEvents(page, 'open', 2);
  await waitFor('the old socket closed', () => page.evaluate(() => window.sockets[0].readyState === WebSocket.CLOSED));
  await page.evaluate(() => window.client.publish('chat:room', { n: 2 }));
  await waitFor('the publication on the new connection', async () => (await events(page, 'publication')).some((p) => p.detail.data.n === 2));
  assert.deepEqual(await order(page, ['open', 'stopped']), ['open', 'stopped', 'open']);
  assert.deepEqual(await page.evaluate(() => [window.client.state, window.sockets.length]), ['open', 2]);
  assert.equal(await server.metric('tether_connections_accepted_total'), 2);

  // Closed by the application before the page is hidden: restored, it stays closed.
  await page.evaluate(() => window.client.close());
  await page.goto(`${elsewhere.http}/healthz`);
  await page.goBack({ waitUntil: 'commit' });
  await waitFor('the page shown again', () => page.evaluate(() => window.transitions?.length === 4).catch(() => false));
  assert.deepEqual(await page.evaluate(() => [window.client.state, window.sockets.length]), ['closed', 2]);
  assert.equal((await events(page, 'stopped')).length, 2);
  await page.close();
});

test('send() in Chromium waits while bufferedAmount is over maxBufferedAmount; the queue stays bounded', { skip: req.skip }, async () => {
  // Raw mode: the server counts what it reads; no compression, so bytes sent are bytes buffered.
  const server = await start(['--no-compression', '--max-inbound-rate', '0']);
  const page = await pageWithClient(server, { ...FAST, protocol: 'raw', pingInterval: 0, maxBufferedAmount: 256 * 1024, offlineQueue: 8 });
  await waitEvents(page, 'open');
  server.signal('SIGSTOP'); // it reads nothing: the kernel's buffers fill, then the browser's
  let result;
  try {
    result = await page.evaluate(async () => {
      const chunk = 'x'.repeat(60 * 1024);
      window.sends = [];
      let highest = 0;
      // Unwatched, bufferedAmount would grow with every send: 1,000 sends are 60 MiB.
      for (let i = 0; i < 1000 && !window.sends.some((s) => s.status === 'rejected'); i++) {
        window.sends.push(window.track(window.client.send(chunk)));
        highest = Math.max(highest, window.sockets[0].bufferedAmount);
        await new Promise((resolve) => setTimeout(resolve, 0)); // let the browser move bytes
      }
      const refused = window.sends.find((s) => s.status === 'rejected');
      const pending = window.sends.filter((s) => s.status === 'pending').length;
      return { count: window.sends.length, highest, refused: refused?.reason ?? null, last: window.sends.at(-1) === refused, pending };
    });
  } finally {
    server.signal('SIGCONT');
  }
  assert.ok(result.refused, `no send was refused; bufferedAmount reached ${result.highest} bytes`);
  assert.match(result.refused, /^send queue full \(8 messages, 491520 bytes waiting for the socket to drain: bufferedAmount \d+ > maxBufferedAmount 262144; this one has 61440 bytes\): await each send\(\) to keep pace with the network$/);
  assert.ok(result.highest <= 256 * 1024 + 61440, `bufferedAmount reached ${result.highest}`);
  assert.equal(result.last, true, 'only the last send was refused');
  assert.equal(result.pending, 8);
  const accepted = result.count - 1;
  await waitFor('every accepted send to resolve', () => page.evaluate(() => window.sends.slice(0, -1).every((s) => s.status === 'fulfilled')));
  await waitFor('every accepted send read by the server', async () => (await server.metric('tether_raw_messages_ignored_total')) === accepted);
  assert.deepEqual(await page.evaluate(() => [window.client.state, window.sockets.length]), ['open', 1]);
  await page.close();
});
