"""The framework examples' READMEs as the tests read them: the commands of each one's first
shell block (examples/django, examples/flask, examples/fastapi)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def run_commands(example: str) -> list[list[str]]:
    """The command lines of the first `sh` block of examples/<example>/README.md."""
    text = (EXAMPLES / example / "README.md").read_text()
    body = next(body for lang, body in _BLOCK.findall(text) if lang == "sh")
    return [shlex.split(line, comments=True) for line in body.splitlines() if line.strip()]


def exported(commands: list[list[str]]) -> dict[str, str]:
    """The variables the `export` lines set."""
    found: dict[str, str] = {}
    for argv in commands:
        if argv[0] == "export":
            found |= dict(arg.split("=", 1) for arg in argv[1:])
    return found
