# myproj/submit.py: enqueue from your own code (a web view, a script, a command)
import asyncio

from myproj.contracts import ExportReport, app


async def main() -> None:
    async with app:  # opens the backend; closes it at the end
        job = await app.enqueue(ExportReport(user_id="u1", period="2026-10"))
        print(await job.wait(timeout=60))  # the final status record (or poll job.status())


if __name__ == "__main__":
    asyncio.run(main())
