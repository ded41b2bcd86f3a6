"""The reference for `make bench-api`: a bare FastAPI route answering 202 with a fixed body,
served exactly as `offload web` serves (the same uvicorn settings).

    python bench/api_reference.py PORT
"""

from __future__ import annotations

import sys

from fastapi import FastAPI
from starlette.responses import Response

from offload._loop import run
from offload.cli import _server

#: What the reference answers: about the size of a new job's status record.
BODY = b'{"id":"0193a1c2-0000-7000-8000-000000000000","state":"queued"}'

api = FastAPI()


@api.post("/v1/jobs/{kind}", status_code=202)
async def submit(kind: str) -> Response:
    return Response(BODY, status_code=202, media_type="application/json")


if __name__ == "__main__":
    server = _server(api, "127.0.0.1", int(sys.argv[1]))
    run(server.serve)
