# myproj/web.py: your FastAPI app: a route of its own, offload's status API beside it
from typing import Annotated

from fastapi import Depends, FastAPI
from offload.web import Jobs, create_app, offload_jobs, problem_details, problem_responses
from pydantic import BaseModel, Field
from starlette.responses import Response

from myproj.contracts import CountWords, app

api = FastAPI(title="Word count")
api.mount("/jobs", create_app(app))  # GET /jobs/v1/jobs/{id}, …/events, …/result
problem_details(api)  # every error of this app is an RFC 9457 problem document


class CountRequest(BaseModel):
    text: str = Field(min_length=1, max_length=10_000, pattern=r"\S")


@api.post("/count", status_code=202, responses=problem_responses(401, 403, 422, 503))
async def count(body: CountRequest, jobs: Annotated[Jobs, Depends(offload_jobs)]) -> Response:
    """Validate (422 otherwise, nothing enqueued), enqueue as the caller, answer 202 with
    `Location: /jobs/v1/jobs/{id}` (the caller's own job in offload's status API)."""
    job = await jobs.enqueue(CountWords(user=jobs.principal, text=body.text))
    return await jobs.accepted(job)
