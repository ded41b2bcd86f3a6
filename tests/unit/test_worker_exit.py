"""A worker process that leaves handlers' threads behind ends at once with its code, after
its exit functions ran, and within a bound when one of them never returns."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import atexit, sys, threading, time, types
from offload import cli

cli.EXIT_FUNCTIONS_S = 0.5
threading.Thread(target=time.sleep, args=(3600,)).start()  # a thread that runs on
atexit.register(threading.Event().wait)  # as multiprocessing's join of a child that runs on
atexit.register(lambda: open(sys.argv[1], "w").write("ran"))  # (atexit runs it first)
cli._exit_leaving_threads(types.SimpleNamespace(threads_running_on=1, tasks_left=0), 3)
"""


def test_exit_functions_run_and_none_holds_the_exit(tmp_path: Path) -> None:
    mark = tmp_path / "exit-functions.txt"
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(mark)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert mark.read_text() == "ran"  # a tracer's last export would run so
    assert time.monotonic() - began < 30  # (the join never returns: it hung for good)


PROJECT = """
import os, threading, time
from offload import App, Context, Message

app = App("leaky")

@app.message("leaky.upload")
class Upload(Message):
    pass

def finish_upload() -> None:
    while not os.path.exists("go-on"):  # (the test says when)
        time.sleep(0.05)

@app.handles(Upload)
def upload(msg: Upload, ctx: Context) -> None:
    # a thread of the handler's own that outlives it (not a daemon: the exit waits for it)
    threading.Thread(target=finish_upload, name="uploader").start()
"""


#: Stop once no job came for half a second.
IDLE = ("--exit-when-idle", "0.5")


def test_a_worker_whose_exit_waits_for_a_handler_s_thread_says_so(tmp_path: Path) -> None:
    (tmp_path / "leaky.py").write_text(PROJECT)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")},
        "OFFLOAD_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "OFFLOAD_BLOBS_URL": str(tmp_path / "blobs"),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    enqueue = "import asyncio, leaky; asyncio.run(leaky.app.enqueue(leaky.Upload()))"
    subprocess.run([sys.executable, "-c", enqueue], env=env, cwd=tmp_path, check=True, timeout=60)
    # When a worker runs the job, then stops (idle), with the handler's thread still running
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "offload", "worker", "--app", "leaky:app", *IDLE],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            # Then, its exit waiting for that thread, it says so, naming it
            said = "exit waits for 1 thread a handler started, still running (uploader)"
            deadline = time.monotonic() + 60
            while said not in log.read_text() and time.monotonic() < deadline:
                assert worker.poll() is None, log.read_text()
                time.sleep(0.05)
            assert said in log.read_text()
            # and exits 0 once the thread has ended
            (tmp_path / "go-on").touch()
            assert worker.wait(timeout=60) == 0, log.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
