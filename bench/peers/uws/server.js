// A peer for comparison: the plain contract Tether's raw mode offers, on uWebSockets.js
// (uWebSockets and uSockets in C++, driven from one Node thread; its own pub/sub fans out).
//   GET /ws?channel=NAME (repeatable)   WebSocket; the text "ping" is answered "pong"
//   POST /api/publish {"channel","data"} delivers data (a string as its text, else JSON)
// No heartbeats (idleTimeout 0), no history, no limits beyond a generous send buffer: a floor to
// compare against, like bench/peers/tokio-minimal. It prints "listening on http://HOST:PORT"
// like `tether serve`. Usage: node server.js [PORT]   (0 or none: a free port)
//
// The package: @trufflesuite/uws-js-unofficial 20.30.0-unofficial.0, uWebSockets.js v20.30.0 with
// its prebuilt modules for Node 16, 18 and 20 (ABI 93, 108, 115) on glibc ≥ 2.27. The builds
// issue 19 suggested, @btc-vision/uwebsockets.js 20.56.0 and 20.57.0, need glibc 2.38
// (__isoc23_strtol and friends) and do not load on Debian 12's 2.36.
import { createRequire } from 'node:module';

// The package falls back silently to a pure-JS implementation on `ws` when its native module does
// not load; a benchmark of that would be a benchmark of `ws`. Load the native module itself, so
// that it either is uWebSockets or fails loudly.
const require = createRequire(import.meta.url);
const uWS = require(
  `@trufflesuite/uws-js-unofficial/binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`,
);

const port = Number(process.argv[2] || 0);
const decoder = new TextDecoder();

const app = uWS.App();

app.ws('/ws', {
  compression: uWS.DISABLED,
  idleTimeout: 0,
  maxPayloadLength: 16 * 1024,
  // The other peers buffer without bound; uWebSockets drops a message for a subscriber whose
  // unsent bytes pass this. 16 MiB is far above what the benchmarks queue per connection.
  maxBackpressure: 16 * 1024 * 1024,
  upgrade: (res, req, context) => {
    const channels = new URLSearchParams(req.getQuery() || '').getAll('channel');
    res.upgrade(
      { channels },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    for (const c of ws.getUserData().channels) ws.subscribe(c);
  },
  message: (ws, message, isBinary) => {
    if (!isBinary && message.byteLength === 4 && decoder.decode(message) === 'ping') ws.send('pong', false);
  },
  // Subscriptions end with the connection: uWebSockets unsubscribes a closed socket itself.
});

app.post('/api/publish', (res) => {
  const chunks = [];
  let aborted = false;
  res.onAborted(() => {
    aborted = true;
  });
  res.onData((chunk, isLast) => {
    // The chunk's memory is uWebSockets' and is reused after this call: copy it.
    chunks.push(Buffer.from(new Uint8Array(chunk)));
    if (!isLast || aborted) return;
    let msg;
    try {
      msg = JSON.parse(Buffer.concat(chunks).toString());
    } catch {
      res.writeStatus('400 Bad Request').writeHeader('content-type', 'application/json').end('{"error":"bad json"}');
      return;
    }
    const text = typeof msg.data === 'string' ? msg.data : JSON.stringify(msg.data);
    const channel = String(msg.channel);
    const delivered = app.numSubscribers(channel);
    app.publish(channel, text, false);
    res.writeHeader('content-type', 'application/json').end(JSON.stringify({ delivered }));
  });
});

app.any('/*', (res) => {
  res.writeStatus('404 Not Found').end();
});

app.listen('127.0.0.1', port, (listenSocket) => {
  if (!listenSocket) {
    console.error(`could not listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
  console.log(`listening on http://127.0.0.1:${uWS.us_socket_local_port(listenSocket)}`);
});
