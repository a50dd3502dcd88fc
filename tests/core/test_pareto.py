"""Non-dominated sets and hypervolumes (moocore) against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cycleqd.core.pareto import hypervolume, non_dominated


def test_the_non_dominated_rows_keep_their_order_and_the_first_of_equal_rows():
    s = np.array([[0.2, 0.6], [0.5, 0.2], [0.1, 0.1], [0.2, 0.6], [0.4, 0.4], [0.4, 0.3]])
    assert non_dominated(s).tolist() == [0, 1, 4]
    assert non_dominated(np.zeros((0, 3))).tolist() == []


def test_a_two_task_hypervolume_is_the_union_of_its_rectangles():
    # sorted by the first task: 0.5·0.2 + 0.4·(0.4 − 0.2) + 0.2·(0.6 − 0.4) = 0.22; (0.1, 0.1) lies inside
    s = np.array([[0.5, 0.2], [0.2, 0.6], [0.4, 0.4], [0.1, 0.1]])
    assert math.isclose(hypervolume(s), 0.22, rel_tol=1e-12)
    # from (0.1, 0.1): 0.4·0.1 + 0.3·0.2 + 0.1·0.2
    assert math.isclose(hypervolume(s, [0.1, 0.1]), 0.12, rel_tol=1e-12)


def test_a_three_task_hypervolume_counts_the_overlap_once():
    # boxes of volume 0.5 and 0.25 that share a cube of side 0.5; a point with a zero score adds nothing
    s = np.array([[1.0, 1.0, 0.5], [0.5, 0.5, 1.0], [0.2, 0.2, 0.2], [0.9, 0.0, 0.9]])
    assert math.isclose(hypervolume(s), 0.5 + 0.25 - 0.125, rel_tol=1e-12)
    assert hypervolume(np.zeros((0, 3))) == 0.0


def test_a_reference_point_of_the_wrong_length_is_named():
    with pytest.raises(ValueError, match="a reference point of 2 values for scores on 3 tasks"):
        hypervolume(np.ones((2, 3)), [0.0, 0.0])
