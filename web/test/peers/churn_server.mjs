// A server that never lets a client stay: each connection ends a different way, in turn, so
// that a client's reconnect loop runs thousands of times through every path. Used by the client
// soak tests (web/test/soak.test.mjs, crates/tether-cli/tests/client_soak.rs).
//   0: accepted, then closed by the server (1012 "churn")
//   1: accepted, then the TCP connection is dropped (no close frame: 1006)
//   2: accepted, then silence: no pong, no message (the client's heartbeat must time out)
//   3: the upgrade is refused with HTTP 503
// Every 250 connections the listener closes for 50 ms (connections refused), then reopens on
// the same port. Prints {"port": N}, then {"connections": N} every 500 connections.
import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';

const say = (o) => console.log(JSON.stringify(o));
const wss = new WebSocketServer({ noServer: true, autoPong: false });
let count = 0;
let port = 0;
let http;

function listen() {
  http = createServer();
  http.on('upgrade', (req, socket, head) => {
    const kind = count % 4;
    count += 1;
    if (count % 500 === 0) say({ connections: count });
    if (count % 250 === 0) setTimeout(pause, 0);
    if (kind === 3) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      if (kind === 0) setTimeout(() => ws.close(1012, 'churn'), 1);
      else if (kind === 1) setTimeout(() => ws.terminate(), 1);
      // kind 2: silence until the client gives up; then the socket closes.
    });
  });
  http.listen(port, '127.0.0.1', () => {
    if (port === 0) {
      port = http.address().port;
      say({ port });
    }
  });
}

function pause() {
  http.close();
  // Connections still open (silent ones) end when their clients give up.
  setTimeout(listen, 50);
}

listen();
