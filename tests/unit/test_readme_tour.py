"""The README's five-minute tour and examples/quickstart cannot drift apart: the tour's code
blocks are the example's files, byte for byte, and every step is one the tour's end-to-end
test knows how to run (tests/e2e/test_tour.py)."""

from __future__ import annotations

from ..tour import EXAMPLE, USERS_TESTS, Command, Curl, blocks, python_files, steps, users_tests


def test_every_file_block_of_the_tour_is_the_example_file() -> None:
    shown = python_files()
    assert shown, "the tour shows no myproj/ file"
    for path, body in shown.items():
        assert (EXAMPLE / path).read_text() == body, f"README and examples/quickstart/{path}"


def test_every_file_of_the_example_is_in_the_tour() -> None:
    files = {
        str(p.relative_to(EXAMPLE))
        for p in (EXAMPLE / "myproj").glob("*.py")
        if p.name != "__init__.py"
    }
    assert files == set(python_files())


def test_the_tour_says_how_to_install_and_to_migrate_postgresql() -> None:
    commands = [" ".join(s.argv) for s in steps() if isinstance(s, Command)]
    assert "pip install offload" in commands
    assert "pip install offload[postgres]" in commands
    assert "offload migrate" in commands
    # Every command is one the end-to-end run knows: it runs these and ignores no others.
    assert {c.split()[0] for c in commands} <= {"pip", "cd", "export", "offload", "python"}


def test_every_http_step_of_the_tour_sends_json_and_can_be_run() -> None:
    calls = [s for s in steps() if isinstance(s, Curl)]
    assert [c.method for c in calls] == ["POST", "GET", "GET"]
    for call in calls:
        if call.body is not None:
            assert call.headers.get("Content-Type") == "application/json"
    assert all(block.strip() for block in blocks("sh"))


def test_the_test_file_testing_your_own_code_shows_is_the_example_file() -> None:
    # tests/e2e/test_tour.py runs it with pytest in a copy of examples/quickstart
    assert USERS_TESTS.read_text() == users_tests()
