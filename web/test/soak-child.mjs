// The tether.js side of the Node soak (run by soak.test.mjs as `node --expose-gc`): one
// TetherClient (raw mode, Node's `ws` injected) against the churn server for RECONNECTS opens.
// At the 100th open and at the last it forces a GC and records the heap, the live timers and
// how many WebSocket objects are still alive (a FinalizationRegistry counts the collected).
// Prints one JSON line with the figures.
import v8 from 'node:v8';
import WebSocket from 'ws';
import { TetherClient } from '../tether.js';

const [port, target] = [Number(process.argv[2]), Number(process.argv[3] ?? 2000)];
let created = 0;
let collected = 0;
const registry = new FinalizationRegistry(() => (collected += 1));
class CountedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    created += 1;
    registry.register(this, null);
  }
}

const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
async function measure() {
  // Twice, with a turn of the event loop between: finalizers run after the first collection.
  global.gc();
  await new Promise((r) => setImmediate(r));
  global.gc();
  await new Promise((r) => setImmediate(r));
  // The heap without V8's code space: compiled and recompiled code comes and goes with the
  // JIT's decisions (measured here: it grew by ~1,000 code objects per 1,000 reconnects while
  // no JS object did); objects are what a leak would be made of.
  const objects = v8
    .getHeapSpaceStatistics()
    .filter((s) => s.space_name !== 'code_space' && s.space_name !== 'code_large_object_space')
    .reduce((sum, s) => sum + s.space_used_size, 0);
  return { heapUsed: process.memoryUsage().heapUsed, objects, timers: timers(), liveSockets: created - collected };
}

const client = new TetherClient(`ws://127.0.0.1:${port}/`, {
  protocol: 'raw',
  WebSocket: CountedWebSocket,
  pingInterval: 10,
  pongTimeout: 15,
  backoffInitial: 1,
  backoffMax: 4,
});
const closes = {};
client.on('close', ({ code }) => (closes[code] = (closes[code] ?? 0) + 1));
let opens = 0;
let at100 = null;
let half = null;
const series = [];
const deadline = setTimeout(() => {
  console.log(JSON.stringify({ error: `only ${opens} opens within the deadline`, closes }));
  process.exit(1);
}, 240000);
client.on('open', async () => {
  opens += 1;
  if (opens === 100) at100 = await measure();
  if (opens === Math.floor(target / 2)) half = await measure();
  if (opens % 1000 === 0) series.push([opens, (await measure()).objects]);
  if (opens === target) {
    const end = await measure();
    clearTimeout(deadline);
    client.close();
    console.log(JSON.stringify({ opens, attempts: client.stats.connectAttempts, closes, at100, half, end, series }));
    process.exit(0);
  }
});
