"""The front end ships in the package and works offline: no address outside the
dashboard, every file a page loads is there, every module import resolves."""

from __future__ import annotations

import re
from importlib import resources

STATIC = resources.files("celery_graph.ui") / "static"
SVG_NS = "http://www.w3.org/2000/svg"


def files() -> dict[str, str]:
    return {f.name: f.read_text() for f in STATIC.iterdir() if f.is_file()}


def test_no_file_reaches_outside_the_dashboard():
    for name, text in files().items():
        outside = [
            u
            for u in re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", text)
            if u != SVG_NS and not u.startswith("//")
        ]
        assert not outside, (name, outside)


def test_every_file_the_page_loads_and_every_import_is_shipped():
    shipped = files()
    assert {"index.html", "app.js", "style.css", "favicon.svg"} <= set(shipped)
    for ref in re.findall(r'(?:href|src)="static/([^"]+)"', shipped["index.html"]):
        assert ref in shipped, ref
    for name, text in shipped.items():
        if name.endswith(".js"):
            for ref in re.findall(r'from "\./([^"]+)"', text):
                assert ref in shipped, (name, ref)
    # package data is "static/*": the front end must stay one flat folder
    assert not [f for f in STATIC.iterdir() if f.is_dir()]
