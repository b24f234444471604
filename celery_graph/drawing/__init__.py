"""Drawings of a graph: ``layout`` (the layered layout, as plain data) and ``render``
(text, Mermaid, DOT, SVG and PNG)."""
