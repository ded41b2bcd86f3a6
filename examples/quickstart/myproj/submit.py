# myproj/submit.py: enqueue from your own code (a web view, a script, a command)
import asyncio

from myproj.contracts import ExportReport, app


async def main() -> None:
    async with app:  # opens the backend; closes it at the end
        job = await app.enqueue(ExportReport(user_id="u1", period="2026-10"))
        status = await job.wait(timeout=60)  # an offload.JobStatus, once the job is final
        print(status.state, status.result)


if __name__ == "__main__":
    asyncio.run(main())
