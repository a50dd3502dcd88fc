"""Plain-text tables, the one way cycleqd prints results (``cycleqd run``, ``show``, ``baselines``,
``compare``, ``evidence``): a header, an optional rule, and rows of cells in columns."""

from __future__ import annotations

from typing import Sequence


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    align: str,
    widths: Sequence[int] = (),
    sep: str = "",
    rule: bool = False,
) -> list[str]:
    """The table's lines: each column as wide as its widest cell, and at least ``widths[i]``.

    ``align`` has one character per column: ``<`` left, ``>`` right, ``~`` free text (a last
    column of notes: not padded). ``sep`` goes between columns; ``rule`` draws a line of ``-``
    under the header, as long as the header."""
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(f"a table of {len(header)} columns ({align!r}) got rows of {sorted({len(r) for r in rows})}")
    sizes = [
        max([len(h), *(len(r[i]) for r in rows), widths[i] if i < len(widths) else 0]) for i, h in enumerate(header)
    ]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, a, w in zip(cells, align, sizes):
            out.append(cell.ljust(w) if a == "<" else cell.rjust(w) if a == ">" else cell)
        return sep.join(out).rstrip() if align[-1] == "~" else sep.join(out)

    head = line(header)
    return [head, *(["-" * len(head)] if rule else []), *(line(r) for r in rows)]
