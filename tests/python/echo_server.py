"""A real third-party server: Python `websockets`, for `tether connect` to talk to.

Usage: echo_server.py
Prints {"port": N} once listening. Each connection gets "hello from python"; text messages are
echoed as "echo: <text>"; the text "bye" makes the server close with 1001 "python going away".
The server pings every 100 ms, so the client must answer protocol pings.
"""
import asyncio
import json

from websockets.asyncio.server import serve


async def handler(ws):
    await ws.send("hello from python")
    async for message in ws:
        if message == "bye":
            await ws.close(1001, "python going away")
            return
        await ws.send(f"echo: {message}")


async def main():
    async with serve(handler, "127.0.0.1", 0, ping_interval=0.1, ping_timeout=1) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Future()


asyncio.run(main())
