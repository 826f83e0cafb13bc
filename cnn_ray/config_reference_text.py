"""Markdown text helpers of the generated ``docs/config.md`` (:mod:`cnn_ray.config_reference`
and :mod:`cnn_ray.config_reference_space` both use them). No Ray, no torch."""

from __future__ import annotations

import re

_CODE = re.compile(r"(`[^`]*`)")
_LONE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_escape(text: str, *, cell: bool = False) -> str:
    """Markdown-escape prose outside code spans (``<``, ``>``, ``*``, ``~``, word-edge
    ``_``); in a
    table cell also ``|`` (inside code spans too, as GFM tables need)."""
    out = []
    for i, part in enumerate(_CODE.split(text)):
        if i % 2 == 0:
            part = part.replace("\\", "\\\\")
            for ch in "<>*~":
                part = part.replace(ch, "\\" + ch)
            part = _LONE_UNDERSCORE.sub(r"\\_", part)
        if cell:
            part = part.replace("|", "\\|")
        out.append(part)
    return "".join(out)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-``/``_`` dropped."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
