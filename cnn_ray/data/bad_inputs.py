"""No silent loss: per-split counts of bad inputs and the ``data.max_bad_fraction`` check.

A bad input is a row the data set lists but training cannot use. Its ``kind`` tells why:
``missing`` (the file does not exist where the driver lists it), ``undecodable`` (the file is
there but is not a usable image) or ``bad_record`` (empty path or label, unknown label).
:func:`split_summary` counts them per split; :func:`check_bad_fraction` stops the job (above
the limit) or prints one warning line (below it). No Ray here.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Iterable, Optional

from cnn_ray.data.errors import TooManyBadInputsError

__all__ = ["KINDS", "check_bad_fraction", "split_summary"]

KINDS = ("missing", "undecodable", "bad_record")
_FIRST = 5  # paths shown in the summary


def split_summary(problems: Iterable[dict[str, Any]], inputs: int) -> dict[str, Any]:
    """``{"inputs", "bad", "by_kind", "first"}`` of one split's bad rows.

    Args:
        problems: bad records ``{"path", "reason", "row", "kind"}``; entries with ``row=None``
            (whole-folder notes such as an empty class) are not rows and are not counted.
        inputs: the rows the split's input lists, bad ones included.
    """
    rows = [p for p in problems if p.get("row") is not None]
    return {"inputs": int(inputs), "bad": len(rows),
            "by_kind": dict(Counter(p.get("kind") or "undecodable" for p in rows)),
            "first": [f"{p['path']} ({p['reason']})" for p in rows[:_FIRST]]}


def check_bad_fraction(summaries: dict[str, dict[str, Any]], max_fraction: float, list_path: str,
                       *, source: Optional[dict[str, str]] = None) -> list[str]:
    """Stop above ``max_fraction`` bad inputs in any split; else return (and print to stderr)
    one warning line per split with bad inputs.

    Args:
        summaries: split name -> :func:`split_summary`.
        max_fraction: ``data.max_bad_fraction``.
        list_path: where the full list is (``bad_inputs.jsonl``).
        source: split name -> the configured path (``data.train``/``data.val``), for the hint.

    Raises:
        TooManyBadInputsError: a split's bad share exceeds ``max_fraction``; the message gives
            the counts by kind, the first few paths, the list's path and the two ways out.
    """
    warnings = []
    for split, s in summaries.items():
        bad, n = int(s.get("bad", 0)), int(s.get("inputs", 0))
        if not bad:
            continue
        share = bad / max(n, 1)
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(s.get("by_kind", {}).items(),
                                                        key=lambda kv: -kv[1])) or f"{bad} bad"
        if share > max_fraction:
            where = (source or {}).get(split)
            hint = (f"check data.{split} ({where}): a wrong root folder or an unmounted volume? "
                    if where else "")
            first = "\n  ".join(s.get("first", []))
            raise TooManyBadInputsError(
                f"{bad} of {n} {split} inputs ({100 * share:.1f}%) are bad, more than "
                f"data.max_bad_fraction={max_fraction:g} allows: {kinds}.\n  {first}\n"
                f"full list: {list_path}\n{hint}To train on the usable rest anyway, set "
                f"data.max_bad_fraction={min(1.0, share + 0.005):.3f} (or 1.0).")
        line = (f"warning: {bad} of {n} {split} inputs ({100 * share:.2f}%) left out as bad "
                f"({kinds}); list: {list_path}")
        print(line, file=sys.stderr, flush=True)
        warnings.append(line)
    return warnings
