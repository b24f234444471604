"""The DSL's types, as a user's ``mypy --strict`` sees them: tests/typing/*.py mark the
errors they expect (``# E: code[, code]``); any other error, an ``assert_type`` that does
not hold included, or an expected error that does not appear fails the test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

CASES = sorted((ROOT / "tests" / "typing").glob("*.py"))
MARKER = re.compile(r"#\s*E:\s*([\w-]+(?:\s*,\s*[\w-]+)*)\s*$")
ERROR = re.compile(
    r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*?)\s+\[(?P<code>[\w-]+)\]$"
)

Errors = dict[tuple[str, int], set[str]]  # (file name, line) -> error codes
Messages = dict[tuple[str, int, str], str]  # (file name, line, code) -> what mypy said


def expected_errors(path: Path) -> Errors:
    """{(file name, line): codes} from the ``# E:`` markers of ``path``."""
    expected: Errors = {}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        match = MARKER.search(text)
        if match:
            expected[(path.name, number)] = {c.strip() for c in match.group(1).split(",")}
    return expected


def reported_errors(output: str) -> tuple[Errors, Messages]:
    """The errors in mypy's output: their codes by line, and what each said."""
    codes: Errors = {}
    messages: Messages = {}
    for line in output.splitlines():
        match = ERROR.match(line)
        if match:
            name, number, code = Path(match["path"]).name, int(match["line"]), match["code"]
            codes.setdefault((name, number), set()).add(code)
            messages[(name, number, code)] = f"{match['message']} [{code}]"
    return codes, messages


def differences(expected: Errors, reported: Errors, messages: Messages) -> list[str]:
    problems = []
    for name, number in sorted(expected.keys() | reported.keys()):
        want, got = expected.get((name, number), set()), reported.get((name, number), set())
        if want - got:
            problems.append(f"{name}:{number}: expected {sorted(want - got)}, mypy did not say")
        if got - want:
            said = "; ".join(messages[(name, number, code)] for code in sorted(got - want))
            problems.append(f"{name}:{number}: unexpected: {said}")
    return problems


def run_mypy(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    """mypy --strict as a user runs it, on the checkout (cwd: the repository, where
    mypy finds celery_graph and its py.typed), without the project's own settings."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            "",
            "--strict",
            "--python-version",
            "3.10",
            "--follow-imports",
            "silent",  # the user's file is checked; celery_graph's internals are not
            "--show-error-codes",
            "--no-error-summary",
            "--no-pretty",
            "--no-color-output",
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "strict-typing"),
            *map(str, paths),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "MYPY_FORCE_COLOR": "0"},
    )


def test_mypy_strict_reports_exactly_the_expected_errors():
    assert CASES, "no typing cases in tests/typing"
    proc = run_mypy(CASES)
    assert proc.returncode in (0, 1), f"mypy did not run: {proc.stdout}{proc.stderr}"
    expected: Errors = {}
    for path in CASES:
        expected.update(expected_errors(path))
    assert expected, "the typing cases expect no error: they would prove nothing"
    reported, messages = reported_errors(proc.stdout)
    problems = differences(expected, reported, messages)
    assert not problems, "\n".join(problems) + "\n\nmypy said:\n" + proc.stdout


def test_the_comparison_fails_on_a_missing_and_on_an_unexpected_error(tmp_path):
    case = tmp_path / "case.py"
    case.write_text("x: int = 1  # E: assignment\ny: int = 'y'\nz = 1  # E: name-defined, misc\n")
    output = (
        f"{case}:2: error: Incompatible types in assignment  [assignment]\n"
        f"{case}:3: error: Name 'q' is not defined  [name-defined]\n"
        f"{case}:3: note: a note is not an error\n"
    )
    reported, messages = reported_errors(output)
    problems = differences(expected_errors(case), reported, messages)
    assert problems == [
        "case.py:1: expected ['assignment'], mypy did not say",
        "case.py:2: unexpected: Incompatible types in assignment [assignment]",
        "case.py:3: expected ['misc'], mypy did not say",
    ]
