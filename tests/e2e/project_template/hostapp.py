"""A user's own web application with offload's API mounted under /jobs: opened on the first
request, or by the host's lifespan when HOST_LIFESPAN=1."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from e2eapp.contracts import app as jobs
from fastapi import FastAPI

import offload.web

if os.environ.get("HOST_LIFESPAN") == "1":

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with offload.web.lifespan(jobs):  # the host's own start-up would go here too
            yield

    api = FastAPI(lifespan=lifespan)
else:
    api = FastAPI()

api.mount("/jobs", offload.web.create_app(jobs))


@api.get("/")
async def home() -> dict[str, str]:
    return {"app": "host"}
