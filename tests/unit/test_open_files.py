"""The commands that own their process raise its limit of open files as far as it may go,
and a web tier keeps streams within what the limit leaves (`stream_limit`)."""

from __future__ import annotations

import subprocess
import sys

from offload.web.feeds import STREAM_FILES_KEPT, stream_limit

RAISED = """
import resource
from offload._loop import raise_open_files

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
print(raise_open_files(), *resource.getrlimit(resource.RLIMIT_NOFILE), hard)
"""


def test_the_soft_limit_of_open_files_is_raised_to_the_hard_one() -> None:
    # In a process of its own: the limit is the whole process's.
    out = subprocess.run(
        [sys.executable, "-c", RAISED], capture_output=True, text=True, check=True
    ).stdout.split()
    told, soft, hard, was_hard = map(int, out)
    assert soft == hard == was_hard == told


def test_streams_leave_a_quarter_of_the_files_and_64_at_least_to_everything_else() -> None:
    assert stream_limit(256) == 256 - STREAM_FILES_KEPT
    assert stream_limit(1024) == 768
    assert stream_limit(40) == 0
    assert stream_limit(1_048_576) == 786_432
