"""The distributions: the sdist carries what its own tests and demo need, the wheel
carries the package data (Lua, the dashboard's front end, py.typed) and the metadata
states the licence, the Python range and every dependency with a range."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.helpers import starts_processes


@pytest.fixture(scope="module")
@starts_processes
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel, built from a copy of the tracked files: setuptools builds
    the sdist's tree in the directory it runs in, and two builds in one directory at once
    fail (one removes the tree the other fills; a CI run's did, once)."""
    tree = tmp_path_factory.mktemp("tree")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not built
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("dist")
    code = (
        "import sys, pathlib; from setuptools import build_meta as b; "
        "d = sys.argv[1]; names = [b.build_sdist(d), b.build_wheel(d)]; "
        "pathlib.Path(d, 'names').write_text(' '.join(names))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sdist, wheel = (out / "names").read_text().split()
    return {"sdist": out / sdist, "wheel": out / wheel}


# what `make test` and `make docs` read at the top of the tree
TOP_LEVEL = ("LICENSE", "README.md", "CHANGES.md", "Makefile", "Procfile", "pyproject.toml")
TOP_LEVEL += ("mkdocs.yml",)


def test_the_sdist_carries_its_tests_and_everything_they_read(dists) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    needed = [
        f
        for f in tracked
        if f.startswith(("celery_graph/", "tests/", "examples/", "deploy/", ".ci/", "docs/"))
        or f in TOP_LEVEL
    ]
    missing = sorted(set(needed) - names)
    assert not missing, f"not in the sdist: {missing}"


def test_the_wheel_has_the_package_data_and_the_metadata(dists) -> None:
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(whl.read(meta_name).decode())
    tracked = subprocess.run(
        ["git", "ls-files", "celery_graph"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not sorted(set(tracked) - names), "package files missing from the wheel"
    assert any(n.endswith("state/lua/complete.lua") for n in names)
    assert "celery_graph/py.typed" in names
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.10"
    classifiers = meta.get_all("Classifier")
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    for requirement in meta.get_all("Requires-Dist"):
        name = requirement.split(";")[0]
        if "extra ==" in requirement or name.startswith("tomli"):
            continue
        assert "<" in name and ">=" in name, f"no tested range: {requirement}"
