"""A real third-party peer: Python `websockets` as a raw-mode Tether client.

Usage: raw_client.py WS_URL
Prints one JSON object per line for the Rust test to check: open, pong, protocol_pong (x5),
ready (then the test publishes), message, closed.
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect


def say(**event):
    print(json.dumps(event), flush=True)


async def main(url):
    # Keepalive pings every 100 ms: the server must answer them or websockets closes with 1011.
    async with connect(url, ping_interval=0.1, ping_timeout=1, proxy=None, open_timeout=10) as ws:
        say(event="open", subprotocol=ws.subprotocol)
        await ws.send("ping")
        say(event="pong", text=await asyncio.wait_for(ws.recv(), 5))
        for _ in range(5):
            waiter = await ws.ping()
            latency = await asyncio.wait_for(waiter, 5)
            say(event="protocol_pong", latency=latency)
        say(event="ready")
        say(event="message", text=await asyncio.wait_for(ws.recv(), 10))
        await ws.close(1000, "python done")
        say(event="closed", code=ws.close_code)


asyncio.run(main(sys.argv[1]))
