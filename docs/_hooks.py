"""mkdocs hooks (mkdocs.yml): the same Markdown renders alike on GitHub and on the site.

The pages are written for GitHub, whose Markdown nests a list under a two-space indent and
needs a pipe inside a table cell's code escaped (``\\|``). Python-Markdown, under mkdocs,
nests lists at four spaces and keeps that backslash (it already ignores pipes inside code
when it splits a row). Both are adjusted here, in the text mkdocs renders only.
"""

from __future__ import annotations

import re
from typing import Any

CODE = re.compile(r"`[^`]*`")
NESTED_ITEM = re.compile(r"^ {2,3}(?=(?:[-*+]|\d+\.) )")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    lines, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            if line.startswith("|"):
                line = CODE.sub(lambda m: m.group(0).replace("\\|", "|"), line)
            line = NESTED_ITEM.sub("    ", line)
        lines.append(line)
    return "\n".join(lines)
