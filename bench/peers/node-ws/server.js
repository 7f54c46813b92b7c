// A peer for comparison: the plain contract Tether's raw mode offers, on Node's `ws`.
//   GET /ws?channel=NAME (repeatable)   WebSocket; the text "ping" is answered "pong"
//   POST /api/publish {"channel","data"} delivers data (a string as its text, else JSON)
// It prints "listening on http://HOST:PORT" like `tether serve`. Usage: node server.js [PORT]
import http from 'node:http';
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] || 0);
const channels = new Map(); // name -> Set<ws>
const wss = new WebSocketServer({ noServer: true });

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/api/publish') {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      let msg;
      try {
        msg = JSON.parse(body);
      } catch {
        res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"bad json"}');
        return;
      }
      const text = typeof msg.data === 'string' ? msg.data : JSON.stringify(msg.data);
      const subs = channels.get(msg.channel) || new Set();
      for (const ws of subs) ws.send(text);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ delivered: subs.size }));
    });
    return;
  }
  res.writeHead(404).end();
});

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname !== '/ws') return socket.destroy();
  wss.handleUpgrade(req, socket, head, (ws) => {
    const mine = url.searchParams.getAll('channel');
    for (const c of mine) {
      if (!channels.has(c)) channels.set(c, new Set());
      channels.get(c).add(ws);
    }
    ws.on('message', (data, isBinary) => {
      if (!isBinary && data.toString() === 'ping') ws.send('pong');
    });
    ws.on('close', () => {
      for (const c of mine) channels.get(c)?.delete(ws);
    });
  });
});

server.listen(port, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${server.address().port}`));
