"""Interop matrix row: Python `websockets` as a server for Tether's Rust client (raw mode).

Usage: interop_server.py on|off   (on: accept permessage-deflate when offered)
Prints {"port": N} once listening, then {"event": "client_closed", "code": C, "reason": R} when
a connection ends. Per connection: sends "hello"; answers "ping" with "pong"; "server-ping"
pings the client and answers "server-ping ok" once it has ponged; "send small|big|utf8" sends
"x", 200 KiB, or non-ASCII text, and "send big-fragmented" 200 KiB in 4 fragments; "close-me" closes with 4200 and a reason.
Web/test/peers/interop_server.mjs is the same peer in Node's `ws`.
"""
import asyncio
import json
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

BIG = "a" * (200 * 1024)
PAYLOADS = {"small": "x", "big": BIG, "utf8": "héllo ✓ 日本語 🎉"}


async def handler(ws):
    try:
        await ws.send("hello")
        async for message in ws:
            if message == "ping":
                await ws.send("pong")
            elif message == "server-ping":
                await asyncio.wait_for(await ws.ping(), 5)
                await ws.send("server-ping ok")
            elif message == "send big-fragmented":
                quarter = len(BIG) // 4
                await ws.send([BIG[i * quarter:(i + 1) * quarter] for i in range(4)])
            elif message.startswith("send "):
                await ws.send(PAYLOADS[message[5:]])
            elif message == "close-me":
                await ws.close(4200, "bye from server ✓")
    except ConnectionClosed:
        pass
    code, reason = ws.close_code, ws.close_reason
    if ws.protocol.close_rcvd is not None:
        code, reason = ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason
    print(json.dumps({"event": "client_closed", "code": code, "reason": reason}), flush=True)


async def main(compression):
    options = dict(compression="deflate" if compression == "on" else None, max_size=4 * 1024 * 1024)
    async with serve(handler, "127.0.0.1", 0, **options) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Future()


asyncio.run(main(sys.argv[1]))
