"""How the verbs that write a table (compare, sweep, merge) end: the title, the table, where it went."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["print_table"]


def print_table(result: Mapping[str, Any], out: Any, timed: bool = True) -> None:
    """Prints ``result``'s title and Markdown table, then the folder and the names of its files
    (with the run's seconds when ``timed``)."""
    print(f"\n## {result['title']}\n")
    print(result["table"])
    took = f" in {result['seconds']:.0f} s" if timed else ""
    names = ", ".join(sorted({p.rsplit("/", 1)[-1] for p in result["files"].values()}))
    print(f"written to {out}{took}: {names}")
