"""A small HTTP/1.1 load generator, run as its own process so its work never shares the
server's event loop (nor the measuring process's).

    python bench/_load.py closed --port P --path /x --body '{}' --connections 16 --seconds 5
    python bench/_load.py open --port P --path /x --body '{}' --rate 200 --seconds 10

Closed loop: `connections` keep-alive connections each send the next request as soon as
the answer arrives; prints {"requests": n, "errors": e, "seconds": s}. Open loop: one request
every 1/rate s, each on a free keep-alive connection (a new one when none is free), timed
from its scheduled start; prints {"latencies_ms": [...], "errors": e}. Requests are bytes
built once; answers are read by Content-Length (the servers measured always send one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time


def request_bytes(method: str, path: str, body: bytes, headers: list[str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    """Send one request, read its whole answer; the status code."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
            break
    if length:
        await reader.readexactly(length)
    return status


async def closed(port: int, req: bytes, connections: int, seconds: float) -> dict[str, float]:
    counts = {"requests": 0, "errors": 0}
    stop_at = 0.0

    async def conn() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                status = await exchange(reader, writer, req)
                counts["requests"] += 1
                if status >= 400:
                    counts["errors"] += 1
        finally:
            writer.close()

    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(conn() for _ in range(connections)))
    return {**counts, "seconds": time.perf_counter() - start}


#: Seconds a keep-alive connection may idle before the open loop stops reusing it: under
#: uvicorn's default keep-alive timeout (5 s), after which the server closes it and a
#: request sent on it would fail (as a browser, the client does not send on a connection
#: the server may have closed).
KEEP_ALIVE_S = 4.0


async def open_loop(port: int, req: bytes, rate: float, seconds: float) -> dict[str, object]:
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    latencies: list[float] = []
    errors = 0

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while idle:
            reader, writer, since = idle.pop()
            if time.perf_counter() - since < KEEP_ALIVE_S:
                return reader, writer
            writer.close()
        return await asyncio.open_connection("127.0.0.1", port)

    async def one(at: float) -> None:
        nonlocal errors
        reader, writer = await connection()
        try:
            status = await exchange(reader, writer, req)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            return
        latencies.append((time.perf_counter() - at) * 1000)
        errors += status >= 400
        idle.append((reader, writer, time.perf_counter()))

    for _ in range(8):  # a few warm connections, as a browser or proxy keeps them
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        idle.append((reader, writer, time.perf_counter()))
    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at)))
    await asyncio.gather(*tasks)
    for _, writer, _ in idle:
        writer.close()
    return {"latencies_ms": latencies, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["closed", "open"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--method", default="POST")
    ap.add_argument("--path", required=True)
    ap.add_argument("--body", default="")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    req = request_bytes(args.method, args.path, args.body.encode(), args.header)
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    if args.mode == "closed":
        out = run(closed(args.port, req, args.connections, args.seconds))
    else:
        out = run(open_loop(args.port, req, args.rate, args.seconds))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
