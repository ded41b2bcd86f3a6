"""A worker process that leaves handlers' threads behind ends at once with its code, after
its exit functions ran, and within a bound when one of them never returns."""

from __future__ import annotations

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
cli._exit_leaving_threads(types.SimpleNamespace(threads_running_on=1), 3)
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
