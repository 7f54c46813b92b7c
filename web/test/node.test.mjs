// tether.js in Node, with the `ws` package injected (`options.WebSocket`), against the real
// `tether` binary: the browser tests' semantics (heartbeats, close diagnostics, reconnect with
// recovery, graceful restart, a frozen server) hold outside the browser too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { TetherClient } from '../tether.js';
import { Server, Relay, waitFor } from './harness.mjs';

const FAST = { WebSocket, pingInterval: 100, pongTimeout: 200, backoffInitial: 100, backoffMax: 400 };

/** A client that records its events. */
function client(url, options = {}) {
  const c = new TetherClient(url, { ...FAST, ...options });
  c.seen = [];
  for (const type of ['open', 'close', 'subscribed', 'publication', 'rtt', 'stopped']) {
    c.on(type, (detail) => c.seen.push({ type, detail, at: Date.now() }));
  }
  c.events = (type) => c.seen.filter((e) => e.type === type).map((e) => e.detail);
  c.waitFor = (type, count = 1, ms = 10000) =>
    waitFor(`${count} ${type} event(s)`, () => c.events(type).length >= count, ms).then(() => c.events(type));
  return c;
}

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
