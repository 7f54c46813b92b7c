// tether.js in Node, with the `ws` package injected (`options.WebSocket`), against the real
// `tether` binary: the browser tests' semantics (heartbeats, close diagnostics, reconnect with
// recovery, graceful restart, a frozen server) hold outside the browser too. Message-level
// features (binary, the offline queue's bytes, heartbeat and reconnect off) run against a
// plain `ws` server and need no binary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket, { WebSocketServer } from 'ws';
import { TetherClient } from '../tether.js';
import { JWT_SECRET, Server, Relay, token, track, waitFor } from './harness.mjs';

const FAST = { WebSocket, pingInterval: 100, pongTimeout: 200, backoffInitial: 100, backoffMax: 400 };

/** A client that records its events. */
function client(url, options = {}) {
  const c = new TetherClient(url, { ...FAST, ...options });
  c.seen = [];
  for (const type of ['open', 'close', 'subscribed', 'unsubscribed', 'publication', 'rtt', 'stopped']) {
    c.on(type, (detail) => c.seen.push({ type, detail, at: Date.now() }));
  }
  c.events = (type) => c.seen.filter((e) => e.type === type).map((e) => e.detail);
  c.waitFor = (type, count = 1, ms = 10000) =>
    waitFor(`${count} ${type} event(s)`, () => c.events(type).length >= count, ms).then(() => c.events(type));
  return c;
}

/** The `ws` WebSocket, recording every instance (in `list`) and what each one sent (`sent`). */
function recordingWebSocket() {
  const list = [];
  class Recorded extends WebSocket {
    constructor(...args) {
      super(...args);
      this.sent = [];
      list.push(this);
    }

    send(data, ...rest) {
      this.sent.push(data);
      return super.send(data, ...rest);
    }
  }
  return { WebSocket: Recorded, list };
}

/** A plain `ws` server on a free port that records what each connection receives. */
async function plainServer(onConnection = () => {}) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => wss.on('listening', resolve));
  const peers = [];
  wss.on('connection', (ws) => {
    const peer = { ws, received: [] };
    peers.push(peer);
    ws.on('message', (data, isBinary) => peer.received.push(isBinary ? { binary: [...data] } : data.toString()));
    onConnection(ws);
  });
  // Cut what is still connected: wss.close() alone waits for every client to leave.
  const close = () => new Promise((resolve) => {
    for (const ws of wss.clients) ws.terminate();
    wss.close(resolve);
  });
  return { url: `ws://127.0.0.1:${wss.address().port}`, peers, close };
}

test('binary messages both ways; text stays text', { timeout: 20000 }, async () => {
  const server = await plainServer((ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
  const c = client(server.url, { protocol: 'raw' });
  const got = [];
  c.on('message', ({ data }) => got.push(data));
  try {
    await c.waitFor('open');
    const bytes = new Uint8Array([9, 0, 1, 2, 3, 255, 9]);
    await c.send(bytes.subarray(1, 6)); // a view: its own bytes, not its whole buffer
    await c.send(new Uint16Array([0x0201]).buffer);
    await c.send('text');
    await waitFor('three echoes', () => got.length === 3);
    assert.ok(got[0] instanceof ArrayBuffer, `binary arrives as an ArrayBuffer, not ${got[0]?.constructor?.name}`);
    assert.deepEqual([...new Uint8Array(got[0])], [0, 1, 2, 3, 255]);
    assert.deepEqual([...new Uint8Array(got[1])], [1, 2]);
    assert.equal(got[2], 'text');
    assert.deepEqual(server.peers[0].received, [{ binary: [0, 1, 2, 3, 255] }, { binary: [1, 2] }, 'text']);
  } finally {
    c.close();
    await server.close();
  }
});

test('the offline queue counts bytes, copies buffers, and sends them once open', { timeout: 20000 }, async () => {
  const server = await plainServer();
  const c = client(server.url, { protocol: 'raw', autoConnect: false, offlineQueueBytes: 8 });
  try {
    const buffer = new Uint8Array([1, 2, 3, 4, 5]);
    const first = c.send(buffer);
    buffer.fill(0); // reusing the buffer must not change the queued message
    await assert.rejects(c.send('héllo'), /offline queue full \(1 messages, 5 bytes waiting for a connection; this one has 6 bytes\)/);
    const second = c.send('abc'); // 5 + 3 = 8 bytes: fits
    c.connect();
    await Promise.all([first, second]);
    await waitFor('both messages at the server', () => server.peers[0]?.received.length === 2);
    assert.deepEqual(server.peers[0].received, [{ binary: [1, 2, 3, 4, 5] }, 'abc']);
  } finally {
    c.close();
    await server.close();
  }
});

test('pingInterval 0 and maxAttempts 0: a plain WebSocket that sends nothing unasked and stops at the first close', { timeout: 20000 }, async () => {
  // Answering "ping" as Tether's raw mode does keeps the paced client below alive.
  const server = await plainServer((ws) => ws.on('message', (data) => String(data) === 'ping' && ws.send('pong')));
  // A client with a 20 ms heartbeat paces the test: once it has pinged three times, the silent
  // one has had as long to send something unasked.
  const paced = client(server.url, { protocol: 'raw', pingInterval: 20 });
  const quiet = client(server.url, { protocol: 'raw', pingInterval: 0, maxAttempts: 0 });
  try {
    await quiet.waitFor('open');
    await paced.waitFor('open');
    const pacedPeer = () => server.peers.find((p) => p.received.includes('ping'));
    await waitFor('three heartbeat pings from the paced client', () => pacedPeer()?.received.length >= 3);
    await quiet.send('asked');
    const quietPeer = server.peers.find((p) => p !== pacedPeer());
    await waitFor('the asked-for message', () => quietPeer.received.length >= 1);
    assert.deepEqual(quietPeer.received, ['asked']);
    assert.equal(quiet.rtt, null, 'no heartbeat, no round trip');

    quietPeer.ws.close(1000, 'bye');
    const [closed] = await quiet.waitFor('close');
    assert.deepEqual([closed.code, closed.reason, closed.initiator, closed.willReconnect], [1000, 'bye', 'server', false]);
    const [stopped] = await quiet.waitFor('stopped');
    assert.equal(stopped.reason, 'reconnecting is off (maxAttempts: 0)');
    assert.equal(quiet.state, 'closed');
    assert.equal(quiet.stats.connectAttempts, 1);
  } finally {
    paced.close();
    quiet.close();
    await server.close();
  }
});

test('without a WebSocket implementation it says what to pass', { skip: typeof globalThis.WebSocket === 'function' }, () => {
  assert.throws(() => new TetherClient('ws://127.0.0.1:1/ws'), /pass options\.WebSocket/);
});

test('in Node: heartbeats, publications, recovery after a network cut', async () => {
  const server = await Server.start(['--ping-interval', '100ms', '--history', 'news=100/5m']);
  const relay = await Relay.start(server.addr);
  const c = client(`ws://${relay.addr}/ws`);
  try {
    await c.subscribe('news');
    await server.publish('news', { n: 1 });
    await c.waitFor('publication');
    await c.waitFor('rtt', 2); // the JSON ping command, answered
    assert.ok(c.extensions.startsWith('permessage-deflate'), `agreed: ${c.extensions}`);

    relay.cut();
    const [closed] = await c.waitFor('close');
    assert.equal(closed.code, 1006);
    assert.equal(closed.initiator, 'network');
    assert.equal(closed.wasClean, false);
    assert.equal(closed.willReconnect, true);
    for (let n = 2; n <= 4; n++) await server.publish('news', { n });
    relay.unblock();
    const resubscribed = () => c.events('subscribed').find((s) => s.resubscribe);
    await waitFor('the resubscribe', resubscribed, 10000);
    assert.equal(resubscribed().recovered, true);
    await c.waitFor('publication', 4);
    assert.deepEqual(c.events('publication').map((p) => p.data.n), [1, 2, 3, 4]);
    assert.equal(c.stats.opens, 2, 'one reconnect');
  } finally {
    c.close();
    await relay.close();
    await server.stop();
  }
});

test('in Node: the server subscribes the token\'s user channel, recovers it after a cut, and the API subscribes and unsubscribes', async () => {
  const server = await Server.start([
    '--ping-interval', '100ms', '--jwt-secret', JWT_SECRET, '--user-channel', 'user:{sub}',
    '--history', 'user:*=100/5m', '--api-key', 'node-test-api-key-0123456789',
  ]);
  const relay = await Relay.start(server.addr);
  const c = client(`ws://${relay.addr}/ws`, { token: token('1h', 'news:*', ['--sub', 'ada']) });
  const api = async (method, params) => {
    const res = await fetch(`${server.http}/api/${method}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer node-test-api-key-0123456789' },
      body: JSON.stringify(params),
    });
    assert.equal(res.status, 200, await res.text());
  };
  try {
    await c.waitFor('subscribed');
    assert.deepEqual(c.events('subscribed')[0], { channel: 'user:ada', resubscribe: false, recovered: null, reason: null, server: true });
    await api('publish', { channel: 'user:ada', data: { n: 1 } });
    await c.waitFor('publication');

    relay.cut();
    await c.waitFor('close');
    for (let n = 2; n <= 3; n++) await api('publish', { channel: 'user:ada', data: { n } });
    relay.unblock();
    const resubscribed = () => c.events('subscribed').find((s) => s.resubscribe);
    await waitFor('the server-side resubscribe', resubscribed, 10000);
    assert.equal(resubscribed().recovered, true);
    await c.waitFor('publication', 3);
    assert.deepEqual(c.events('publication').map((p) => p.data.n), [1, 2, 3]);

    await api('subscribe', { user: 'ada', channel: 'extra' });
    await waitFor('the API subscription', () => c.events('subscribed').find((s) => s.channel === 'extra'), 10000);
    await api('publish', { channel: 'extra', data: { n: 4 } });
    await c.waitFor('publication', 4);
    await api('unsubscribe', { user: 'ada', channel: 'extra' });
    await c.waitFor('unsubscribed');
    assert.deepEqual(c.events('unsubscribed'), [{ channel: 'extra' }]);
  } finally {
    c.close();
    await relay.close();
    await server.stop();
  }
});

test('in Node: a graceful restart is a clean 1012 with a hint; a frozen server times out', async () => {
  const server = await Server.start(['--ping-interval', '100ms']);
  const c = client(server.ws);
  try {
    await c.waitFor('open');
    await server.terminate();
    const [closed] = await c.waitFor('close');
    assert.equal(closed.code, 1012);
    assert.equal(closed.wasClean, true);
    assert.equal(closed.initiator, 'server');
    assert.ok(closed.retryIn >= 500 && closed.retryIn < 1000, `retry in ${closed.retryIn} ms`);
    c.close();

    // SIGSTOP: the kernel still holds the connection, nothing answers.
    const frozen = await server.restart();
    const d = client(frozen.ws);
    try {
      await d.waitFor('open');
      frozen.signal('SIGSTOP');
      const stoppedAt = Date.now();
      const [timeout] = await d.waitFor('close');
      const took = Date.now() - stoppedAt;
      assert.equal(timeout.code, 4000);
      assert.equal(timeout.initiator, 'client');
      assert.ok(took <= 100 + 200 + 250, `detected after ${took} ms, bound ping + timeout = 300 ms`);
      assert.equal(d.stats.heartbeatTimeouts, 1);
    } finally {
      frozen.signal('SIGCONT');
      d.close();
      await frozen.stop();
    }
  } finally {
    c.close();
    await server.stop();
  }
});

test('the offline queue is bounded in bytes by default (4 MiB)', { timeout: 20000 }, async () => {
  const c = client('ws://127.0.0.1:1/ws', { protocol: 'raw', autoConnect: false });
  const mib = 'x'.repeat(1024 * 1024);
  const fits = [1, 2, 3, 4].map(() => track(c.send(mib)));
  const over = track(c.send('y'));
  await waitFor('the send beyond 4 MiB to be refused', () => over.settled, 2000);
  assert.equal(over.status, 'rejected');
  assert.match(over.reason.message, /offline queue full \(4 messages, 4194304 bytes waiting for a connection; this one has 1 bytes\)/);
  c.close();
  await waitFor('the queued sends to be settled by close()', () => fits.every((f) => f.settled), 2000);
  assert.ok(fits.every((f) => f.status === 'rejected'));
});

test('send() respects bufferedAmount: over maxBufferedAmount it queues (bounded), then drains in order', { timeout: 30000 }, async () => {
  const server = await plainServer((ws) => ws.pause()); // reads nothing until resumed
  const limit = 256 * 1024;
  const ws = recordingWebSocket();
  const c = client(server.url, { protocol: 'raw', pingInterval: 0, WebSocket: ws.WebSocket, maxBufferedAmount: limit, offlineQueue: 8 });
  try {
    await c.waitFor('open');
    const chunk = 'x'.repeat(64 * 1024);
    const sends = [];
    let highest = 0;
    // The server reads nothing: once the kernel's buffers are full, bufferedAmount grows with
    // every send unless send() watches it. 500 sends would be 32 MiB.
    for (let i = 0; i < 500 && !sends.some((s) => s.status === 'rejected'); i++) {
      sends.push(track(c.send(`${String(i).padStart(4, '0')}${chunk}`)));
      highest = Math.max(highest, ws.list[0].bufferedAmount);
      await new Promise((resolve) => setImmediate(resolve));
    }
    const refused = sends.find((s) => s.status === 'rejected');
    assert.ok(refused, `no send was refused; bufferedAmount reached ${highest} bytes (maxBufferedAmount ${limit})`);
    assert.match(refused.reason.message, /^send queue full \(8 messages, 524320 bytes waiting for the socket to drain: bufferedAmount \d+ > maxBufferedAmount 262144; this one has 65540 bytes\): await each send\(\) to keep pace with the network$/);
    assert.ok(highest <= limit + 65540, `bufferedAmount reached ${highest}, above the limit by more than one message`);
    assert.equal(sends.filter((s) => s.status === 'pending').length, 8, 'eight sends wait in the queue');
    assert.equal(sends.indexOf(refused), sends.length - 1, 'only the last send was refused');

    server.peers[0].ws.resume();
    const accepted = sends.length - 1;
    await waitFor('every accepted send to resolve', () => sends.slice(0, accepted).every((s) => s.status === 'fulfilled'));
    await waitFor('every accepted send at the server', () => server.peers[0].received.length === accepted);
    assert.deepEqual(server.peers[0].received.map((m) => Number(m.slice(0, 4))), [...Array(accepted).keys()], 'in order, none lost');
  } finally {
    c.close();
    await server.close();
  }
});

test('close() then connect() before the socket closes: pending commands reject, one stopped, the new connection undisturbed', async () => {
  const server = await Server.start(['--ping-interval', '100ms', '--client-publish', 'chat:*']);
  const ws = recordingWebSocket();
  const c = client(server.ws, { WebSocket: ws.WebSocket });
  try {
    await c.subscribe('chat:room');
    const pending = track(c.publish('chat:room', { n: 1 })); // sent; its reply cannot arrive before close()
    c.close();
    c.connect();
    await waitFor('the pending publish to settle', () => pending.settled, 5000);
    assert.equal(pending.status, 'rejected');
    assert.equal(pending.reason.message, 'close() was called before the reply');
    assert.deepEqual(c.events('stopped'), [{ reason: 'closed by the application' }]);
    await c.waitFor('open', 2);
    const order = c.seen.filter((e) => e.type === 'stopped' || e.type === 'open').map((e) => e.type);
    assert.deepEqual(order, ['open', 'stopped', 'open']);
    // The old socket's own close comes late; it must change nothing.
    await waitFor('the old socket to finish its closing handshake', () => ws.list[0].readyState === WebSocket.CLOSED);
    const receipt = await c.publish('chat:room', { n: 2 });
    assert.equal(typeof receipt.offset, 'number');
    await waitFor('the publication on the new connection', () => c.events('publication').some((p) => p.data.n === 2));
    assert.equal(c.state, 'open');
    assert.equal(ws.list.length, 2, 'exactly one new socket');
    assert.equal(c.stats.connectAttempts, 2);
    assert.deepEqual(c.events('close').map((e) => [e.code, e.initiator, e.willReconnect]), [[1000, 'client', false]]);
    assert.equal(c.events('stopped').length, 1);
    await waitFor('the server to record the client close', async () =>
      (await server.metric('tether_connections_closed_total{code="1000",initiator="client"}')) === 1,
    );
    assert.equal(await server.metric('tether_connections_accepted_total'), 2);
  } finally {
    c.close();
    await server.stop();
  }
});

test('connect() while getToken is in flight waits for it: one socket, with the fresh token', async () => {
  const server = await Server.start(['--jwt-secret', JWT_SECRET, '--ping-interval', '100ms']);
  const ws = recordingWebSocket();
  const calls = [];
  const getToken = () => new Promise((resolve) => calls.push(resolve));
  const c = client(server.ws, { WebSocket: ws.WebSocket, token: token('0s'), getToken });
  try {
    c.subscribe('news:eu').catch(() => {});
    const [expired] = await c.waitFor('close', 1, 15000);
    assert.deepEqual([expired.code, expired.willReconnect], [4002, true]);
    await waitFor('getToken to be called', () => calls.length === 1);
    c.close();
    c.connect();
    assert.equal(ws.list.length, 1, 'no socket opens while getToken is in flight');
    assert.equal(c.state, 'connecting');
    const fresh = token('1h');
    // The expired token may still have been accepted within the server's jwt_leeway (a first
    // `subscribed`): wait for the one on the new socket.
    const before = c.events('subscribed').length;
    calls[0](fresh);
    await c.waitFor('subscribed', before + 1);
    assert.equal(ws.list.length, 2, 'exactly one socket after the refresh');
    assert.deepEqual(JSON.parse(ws.list[1].sent[0]), { id: JSON.parse(ws.list[1].sent[0]).id, cmd: 'connect', token: fresh });
    assert.equal(calls.length, 1, 'getToken was called once');
    assert.deepEqual(c.events('close').map((e) => e.code), [4002]);
    assert.deepEqual(c.events('stopped'), [{ reason: 'closed by the application' }]);
    assert.equal(await server.metric('tether_connections_closed_total{code="4002"}'), 1);
  } finally {
    c.close();
    await server.stop();
  }
});
