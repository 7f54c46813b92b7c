"""Interop matrix row: Python `websockets` as a client of `tether serve`.

Usage: interop_client.py WS_URL raw|json on|off
  raw|json  no subprotocol (the URL carries ?channel=interop) or tether.v1.json
  on|off    offer permessage-deflate or not

Prints one JSON object per line for the Rust test (crates/tether-cli/tests/interop_matrix.rs):
open, ping, protocol_ping, ready (the test then publishes the three payloads below),
received (one per payload), fragmented (JSON mode: a 200 KiB publish sent in 4 fragments comes
back), closed (this client closed with 4100), ready2 (a second connection waits for the
server's close), server_closed.
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SMALL = "x"
BIG = "a" * (200 * 1024)
UTF8 = "héllo ✓ 日本語 🎉"
CLOSE_REASON = "bye from peer ✓"


def say(**event):
    print(json.dumps(event), flush=True)


async def recv_payload(ws, mode):
    """The next publication's data (raw: the text itself; JSON: the envelope's data)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), 10)
        if mode == "raw":
            return message
        envelope = json.loads(message)
        if envelope.get("type") == "publication":
            return envelope["data"]


async def command(ws, body):
    await ws.send(json.dumps(body))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply.get("id") == body["id"]:
            return reply


async def main(url, mode, compression):
    options = dict(
        subprotocols=["tether.v1.json"] if mode == "json" else None,
        compression="deflate" if compression == "on" else None,
        ping_interval=None,
        max_size=4 * 1024 * 1024,
        proxy=None,
        open_timeout=10,
    )
    async with connect(url, **options) as ws:
        say(
            event="open",
            subprotocol=ws.subprotocol,
            extensions=ws.response.headers.get("Sec-WebSocket-Extensions", ""),
        )
        if mode == "raw":
            await ws.send("ping")
            say(event="ping", ok=await asyncio.wait_for(ws.recv(), 5) == "pong")
        else:
            reply = await command(ws, {"id": 1, "cmd": "ping"})
            # A success: `result` (the first reply also tells the connection's client id).
            say(event="ping", ok=isinstance(reply.get("result"), dict) and "error" not in reply)
            reply = await command(ws, {"id": 2, "cmd": "subscribe", "channel": "interop"})
            assert "result" in reply, reply
        latency = await asyncio.wait_for(await ws.ping(), 5)
        say(event="protocol_ping", ok=latency >= 0)
        say(event="ready")
        for kind, want in (("small", SMALL), ("big", BIG), ("utf8", UTF8)):
            got = await recv_payload(ws, mode)
            say(event="received", kind=kind, ok=got == want, length=len(got))
        if mode == "json":
            # A 200 KiB publish command in four fragments: the server reassembles it, publishes
            # it, and it comes back.
            text = json.dumps({"id": 3, "cmd": "publish", "channel": "interop", "data": "b" * len(BIG)})
            quarter = len(text) // 4
            await ws.send([text[i * quarter:(i + 1) * quarter if i < 3 else None] for i in range(4)])
            got = await recv_payload(ws, mode)
            say(event="fragmented", ok=got == "b" * len(BIG))
        await ws.close(4100, CLOSE_REASON)
        say(event="closed", code=ws.close_code, reason=ws.close_reason)

    async with connect(url, **options) as ws:
        if mode == "json":
            await command(ws, {"id": 1, "cmd": "subscribe", "channel": "interop"})
        say(event="ready2")
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 20)
        except ConnectionClosed:
            pass
        say(event="server_closed", code=ws.close_code, reason=ws.close_reason)


asyncio.run(main(*sys.argv[1:4]))
