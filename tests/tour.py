"""The README's five-minute tour as the tests read it: its code blocks, the commands of its
shell blocks, and its `curl` steps with the output the README shows for them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
#: The tour's project: the folder that holds `myproj/`.
EXAMPLE = README.parent / "examples" / "quickstart"
#: The README's section on users' own tests, and the test file it shows.
TESTING = "## Testing your own code"
USERS_TESTS = EXAMPLE / "tests" / "test_exports.py"
#: The job id the README's HTTP steps show; a run puts the real one in its place.
EXAMPLE_ID = "01a2229f-9ca6-7065-bb1a-9a899badf774"
#: Where the README's commands say the web tier listens.
README_ADDRESS = "localhost:8000"
#: Single-letter curl options the runner understands (others fail the test: say what they do).
CURL_FLAGS = frozenset("siNL")
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section(heading: str) -> str:
    """A section of the README: from its heading (`## Five-minute tour`) to the next."""
    text = README.read_text()
    start = text.index(f"{heading}\n")
    end = re.compile(r"^##+ ", re.MULTILINE).search(text, start + 3)
    return text[start : end.start() if end else len(text)]


def tour() -> str:
    """The README's tour section."""
    return section("## Five-minute tour")


def blocks(lang: str, heading: str = "## Five-minute tour") -> list[str]:
    """The bodies of a section's fenced code blocks in `lang`, in order (the tour's)."""
    return [body for kind, body in _BLOCK.findall(section(heading)) if kind == lang]


def users_tests() -> str:
    """The test file "Testing your own code" shows (examples/quickstart/tests/…)."""
    (body,) = [b for b in blocks("python", TESTING) if b.startswith("# tests/test_exports.py")]
    return body


def python_files() -> dict[str, str]:
    """The tour's Python blocks that are files, by path: their first line names the file
    (`# myproj/worker.py: …`)."""
    found = {}
    for body in blocks("python"):
        first = body.split("\n", 1)[0]
        match = re.match(r"# (myproj/\w+\.py):", first)
        if match:
            found[match[1]] = body
    return found


@dataclass
class Curl:
    """One `$ curl …` step and the output the README shows for it."""

    url: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    flags: set[str] = field(default_factory=set)
    output: list[str] = field(default_factory=list)


@dataclass
class Command:
    """One command line of a shell block (`offload …`, `python …`, `cd …`, `pip …`)."""

    argv: list[str]


def _logical_lines(body: str) -> list[str]:
    """Lines with their backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def parse_curl(argv: list[str]) -> Curl:
    """A curl command line as a request.

    Raises:
        ValueError: an option the runner does not understand.
    """
    step = Curl(url="")
    args = iter(argv[1:])
    for arg in args:
        if arg == "-H":
            name, _, value = next(args).partition(":")
            step.headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data"):
            step.body, step.method = next(args).encode(), "POST"
        elif arg == "-X":
            step.method = next(args)
        elif arg.startswith("-"):
            flags = set(arg[1:])
            if arg.startswith("--") or not flags <= CURL_FLAGS:
                raise ValueError(f"the tour runner does not know curl's {arg}")
            step.flags |= flags
        else:
            step.url = arg if "://" in arg else f"http://{arg}"
    if not step.url:
        raise ValueError(f"no URL in {shlex.join(argv)}")
    return step


def steps() -> list[Command | Curl]:
    """Every step of the tour's shell blocks, in order: commands, and curl calls (the lines
    after `$ curl …` up to the next prompt are its output)."""
    found: list[Command | Curl] = []
    for body in blocks("sh"):
        current: Curl | None = None
        for line in _logical_lines(body):
            if line.startswith("$ "):
                current = parse_curl(shlex.split(line[2:], comments=True))
                found.append(current)
            elif current is not None:
                if line.strip():
                    current.output.append(line)
            elif line.strip():
                found.append(Command(shlex.split(line, comments=True)))
    return found
