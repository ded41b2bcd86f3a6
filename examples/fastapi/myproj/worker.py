# myproj/worker.py: the worker half (`offload worker --app myproj.worker:app`)
from collections import Counter

from offload import Context

from myproj.contracts import CountWords, app


@app.handles(CountWords, max_attempts=3, timeout=60)
async def count_words(msg: CountWords, ctx: Context) -> dict[str, object]:
    await ctx.progress(0.5, "counting")
    words = [w.strip(".,;:!?\"'()").lower() for w in msg.text.split()]
    lines = [f"{word} {n}" for word, n in Counter(w for w in words if w).most_common()]
    ref = await ctx.blobs.put(f"counts/{ctx.job_id}.txt", "\n".join(lines).encode())
    return {"words": len(words), "counts": ref}  # one file: GET …/result answers 303 to it
