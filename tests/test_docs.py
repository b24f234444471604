"""The documentation: the README is a front page whose links work on the package index page
and whose example runs as shown; the site under docs/ builds with mkdocs in strict mode (a
broken link or anchor fails it); the settings tables in docs/ are the ones
``celery_graph/config.py`` generates.

``python -m tests.test_docs`` writes the generated tables into docs/ (``make docs-tables``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from celery_graph import config
from tests.support import ROOT
from tests.support.processes import base_env, celery_worker, redis_db_url, run_py

README = ROOT / "README.md"
DOCS = ROOT / "docs"
GITHUB = "https://github.com/celery-graph/celery-graph/blob/main/"
RAW = "https://raw.githubusercontent.com/celery-graph/celery-graph/main/"

# <!-- table: NAME -->, the table config.NAME() returns, <!-- end table -->
TABLE = re.compile(r"(<!-- table: (\w+) -->\n)(.*?)(<!-- end table -->)", re.S)


def with_tables(text: str) -> str:
    """``text`` with every generated table written again from celery_graph/config.py."""
    return TABLE.sub(lambda m: m.group(1) + getattr(config, m.group(2))() + m.group(4), text)


def write_tables() -> None:
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        if with_tables(text) != text:
            page.write_text(with_tables(text))
            print(f"wrote the tables of {page.relative_to(ROOT)}")


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.S | re.M)


def mkdocs(config_file: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(config_file),
            "-d",
            str(site),
        ],
        cwd=config_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- the settings tables --------------------------------------------------------------


def test_the_settings_tables_in_the_docs_are_generated_from_config() -> None:
    seen = set()
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        seen |= {m.group(2) for m in TABLE.finditer(text)}
        assert text == with_tables(text), (
            f"docs/{page.name}: a settings table differs from celery_graph/config.py; "
            "run `make docs-tables`"
        )
    assert seen == {"settings_table", "worker_settings_table"}
    configuration = (DOCS / "configuration.md").read_text()
    for row in (*config.SETTINGS, *config.WORKER_SETTINGS):
        assert f"`{row.env}`" in configuration


def test_a_changed_setting_shows_as_a_stale_table() -> None:
    text = (DOCS / "configuration.md").read_text()
    stale = text.replace(
        "`CELERY_GRAPH_RESULT_TTL` | `86400`", "`CELERY_GRAPH_RESULT_TTL` | `3600`"
    )
    assert stale != text
    assert with_tables(stale) == text


# -- the README -------------------------------------------------------------------------


def test_the_readme_is_a_front_page_whose_links_work_on_the_package_index() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 300
    assert "make demo" in text and "make test" in text
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'(?:src|href)="([^"]+)"', text)
    assert any(link.startswith(GITHUB + "docs/") for link in links)
    for link in links:
        # the package index shows the README alone: a relative link leads nowhere there
        assert link.startswith("https://"), f"README.md: {link} is not an absolute URL"
        for base in (GITHUB, RAW):
            if link.startswith(base):
                path = link.removeprefix(base).split("#")[0]
                assert (ROOT / path).exists(), f"README.md links to {path}, which is missing"


def test_the_docs_front_page_shows_the_readme_example() -> None:
    example = fenced(README.read_text(), "python")[0]
    assert example in fenced((DOCS / "index.md").read_text(), "python")


@pytest.mark.slow
def test_the_readme_example_runs_as_shown(redis_url: str, tmp_path: Path) -> None:
    """The README's example, saved as etl.py, on a real `celery worker`: the shell command
    prints the result the README shows, and so does the Python it shows."""
    text = README.read_text()
    example = fenced(text, "python")[0]
    module, run_lines = example.split("\nrun = ", 1)
    (tmp_path / "etl.py").write_text(module)
    shell = next(block for block in fenced(text, "console") if "workflow run etl:flow" in block)
    command = next(line for line in shell.splitlines() if "workflow run" in line)
    url = redis_db_url(redis_url, 15)
    env = base_env(url, CELERY_BROKER_URL=url)
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    with celery_worker("etl", env):
        args = command.removeprefix("$ celery ").split()
        out = run_py(["-m", "celery", *args], env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == shell.strip().splitlines()[-1]
        shown = re.search(r"run\.get\(timeout=30\)\s+# (.*)", run_lines)
        assert shown is not None
        script = f"from etl import flow\nrun = {run_lines.split(chr(10))[0]}\n"
        script += "print(run.get(timeout=30))\n"
        out = run_py(["-c", script], env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == shown.group(1).strip()


# -- the site ---------------------------------------------------------------------------


@pytest.mark.slow
def test_make_docs_builds_the_site_in_strict_mode_with_no_warning(tmp_path: Path) -> None:
    site = tmp_path / "site"
    out = mkdocs(ROOT / "mkdocs.yml", site)
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stderr, out.stderr
    assert (site / "index.html").exists()
    for image in (DOCS / "img").glob("*.png"):
        assert (site / "img" / image.name).exists()
    # docs/_hooks.py: GitHub's Markdown, rendered alike (a pipe in a table's code, nesting)
    operators = (site / "dsl" / "index.html").read_text()
    assert '<code>(a | b | c).named("batch")</code>' in operators
    metrics = (site / "worker" / "index.html").read_text()
    assert re.search(r"cover all of them:<ul>\s*<li><code>celery_graph_task_duration", metrics)
    # every page is in the navigation (mkdocs only reports a missing one)
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f" {page.name}" in nav, f"docs/{page.name} is not in mkdocs.yml's nav"


@pytest.mark.parametrize(
    "broken",
    ["[the missing page](missing.md)", "[a missing section](dsl.md#no-such-section)"],
)
@pytest.mark.slow
def test_a_broken_link_fails_the_docs_build(tmp_path: Path, broken: str) -> None:
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    page = tmp_path / "docs" / "guarantees.md"
    page.write_text(page.read_text() + f"\n{broken}\n")
    out = mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert out.returncode != 0
    assert "guarantees.md" in out.stderr


if __name__ == "__main__":
    write_tables()
