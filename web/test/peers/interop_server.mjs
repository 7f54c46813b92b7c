// Interop matrix row: Node's `ws` as a server for Tether's Rust client (raw mode); the same peer
// as tests/python/interop_server.py, driven by crates/tether-cli/tests/interop_matrix.rs.
// Usage: node interop_server.mjs on|off   (on: accept permessage-deflate when offered)
import { WebSocketServer } from 'ws';

const BIG = 'a'.repeat(200 * 1024);
const PAYLOADS = { small: 'x', big: BIG, utf8: 'héllo ✓ 日本語 🎉' };
const say = (event) => console.log(JSON.stringify(event));

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: process.argv[2] === 'on',
  maxPayload: 4 << 20,
});
wss.on('listening', () => say({ port: wss.address().port }));
wss.on('connection', (ws) => {
  ws.on('close', (code, reason) => say({ event: 'client_closed', code, reason: reason.toString('utf8') }));
  ws.send('hello');
  ws.on('message', (data) => {
    const text = data.toString('utf8');
    if (text === 'ping') ws.send('pong');
    else if (text === 'server-ping') {
      ws.once('pong', () => ws.send('server-ping ok'));
      ws.ping();
    } else if (text === 'send big-fragmented') {
      const quarter = BIG.length / 4;
      for (let i = 0; i < 4; i++) ws.send(BIG.slice(i * quarter, (i + 1) * quarter), { fin: i === 3 });
    } else if (text.startsWith('send ')) ws.send(PAYLOADS[text.slice(5)]);
    else if (text === 'close-me') ws.close(4200, 'bye from server ✓');
  });
});
