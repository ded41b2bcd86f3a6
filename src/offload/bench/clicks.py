"""The burst's clicks, sent from a process of their own (`python -m offload.bench.clicks`).

A browser's work is not the server's: the clicks come from this separate process, written as
bytes built in advance, so that neither their cost nor their wait shares the measuring
process's event loop (where the home-page requests are timed). An HTTP client library costs
milliseconds of CPU per request on the machine that also runs the server and its worker.

Reads one JSON object on stdin, {"port": P, "path": "/reports", "timeout": s, "clicks":
[{"cookie": "...", "csrf": "..."}, ...]}, prints "ready", waits for a line "go", then opens
a connection per click (as many browsers would) and sends every click at once. Prints
{"acks_ms": [...], "errors": n}: each answered click's time from its connect to the end of
its answer, and the clicks that failed (an error status, a broken connection, a timeout).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import quote


def click_request(port: int, path: str, cookie: str, csrf: str) -> bytes:
    """One "Export my report" form post, as a browser's script sends it."""
    body = f"csrf={quote(csrf, safe='')}".encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Cookie: {cookie}",
        f"X-CSRF-Token: {csrf}",
        "Accept: application/json",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _one(port: int, request: bytes) -> tuple[int, float]:
    begin = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        answer = await reader.read()  # the server closes after it (Connection: close)
    finally:
        writer.close()
    status = int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, (time.perf_counter() - begin) * 1000


async def fire(port: int, requests: list[bytes], timeout: float) -> dict[str, Any]:
    """Send every request at once, each on its own connection."""
    acks: list[float] = []
    errors = 0

    async def click(request: bytes) -> None:
        nonlocal errors
        try:
            status, ms = await asyncio.wait_for(_one(port, request), timeout)
        except (OSError, TimeoutError, ValueError):
            errors += 1
            return
        if 200 <= status < 400:
            acks.append(ms)
        else:
            errors += 1

    await asyncio.gather(*(click(r) for r in requests))
    return {"acks_ms": acks, "errors": errors}


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    port, path = int(spec["port"]), str(spec["path"])
    requests = [click_request(port, path, c["cookie"], c["csrf"]) for c in spec["clicks"]]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    print(json.dumps(asyncio.run(fire(port, requests, float(spec["timeout"])))), flush=True)


if __name__ == "__main__":
    main()
