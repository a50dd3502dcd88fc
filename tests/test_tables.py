"""The one table printer (cycleqd.tables): columns as wide as their widest cell, aligned per column."""

from __future__ import annotations

import pytest

from cycleqd.tables import format_table


def test_columns_fit_their_widest_cell_and_align_as_asked():
    lines = format_table(
        ["name", "score", "  note"], [["a", "1.5", ""], ["longer", "10.25", "  FAILED x"]], align="<>~", rule=True
    )
    assert lines == ["name  score  note", "-" * 17, "a       1.5", "longer10.25  FAILED x"]
    assert format_table(["x"], [["1"]], align=">", widths=[4]) == ["   x", "   1"]
    assert format_table(["a", "b"], [["1", "2"]], align=">>", sep="  ") == ["a  b", "1  2"]


def test_a_row_of_another_length_is_refused():
    with pytest.raises(ValueError, match="a table of 2 columns"):
        format_table(["a", "b"], [["1"]], align="<>")
