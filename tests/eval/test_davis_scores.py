"""DAVIS-2017 J and F on hand-made masks, against the official definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raycseg.eval.davis_scores import (
    boundary_f_measure,
    boundary_map,
    region_similarity,
    score_sequence,
    summarise,
)


def square(size: int = 40, top: int = 10, left: int = 10, side: int = 10) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_region_similarity_of_identical_disjoint_shifted_and_empty_masks():
    a = square()
    assert region_similarity(a, a) == 1.0
    assert region_similarity(a, square(left=25)) == 0.0
    assert region_similarity(a, square(left=11)) == pytest.approx(90 / 110)  # one pixel right
    assert region_similarity(a, np.zeros_like(a)) == 0.0
    assert region_similarity(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_boundary_map_marks_pixels_that_differ_from_the_right_lower_or_diagonal_neighbour():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    expected = np.array(
        [[1, 1, 1, 0],   # row 0 differs from row 1 below (and the diagonal)
         [1, 0, 1, 0],   # (1, 1) equals its right, lower and diagonal neighbours
         [1, 1, 1, 0],
         [0, 0, 0, 0]],  # last row and column compare along themselves; all zero here
        dtype=bool,
    )  # fmt: skip
    np.testing.assert_array_equal(boundary_map(mask), expected)


def test_boundary_f_is_one_within_the_tolerance_and_zero_far_outside_it():
    a = square(size=100, top=40, left=40, side=20)
    tolerance = math.ceil(0.008 * math.hypot(100, 100))  # 2 px
    assert boundary_f_measure(a, a) == 1.0
    assert boundary_f_measure(a, square(size=100, top=40, left=41, side=20)) == 1.0  # shifted 1 px
    assert boundary_f_measure(a, square(size=100, top=40, left=40 + tolerance, side=20)) == 1.0
    assert boundary_f_measure(a, square(size=100, top=40, left=40 + tolerance + 1, side=20)) < 1.0
    assert boundary_f_measure(a, square(size=100, top=5, left=5, side=10)) == 0.0  # disjoint


def test_boundary_f_of_empty_masks_follows_the_official_conventions():
    a, empty = square(), np.zeros((40, 40), dtype=bool)
    assert boundary_f_measure(a, empty) == 0.0  # P = 1, R = 0
    assert boundary_f_measure(empty, a) == 0.0  # P = 0, R = 1
    assert boundary_f_measure(empty, empty) == 1.0


def test_a_sequence_skips_its_first_and_last_frames_and_counts_void_as_background():
    truth = np.zeros((40, 40), dtype=np.uint8)
    truth[square()] = 1
    truth[square(left=25)] = 2
    void = truth.copy()
    void[0:5, 0:5] = 255
    wrong = np.zeros_like(truth)
    with_void_object = truth.copy()
    with_void_object[0:5, 0:5] = 1  # predicted object where the truth is void
    result = score_sequence([truth, void, truth, truth], [wrong, truth, with_void_object, wrong])
    assert result["objects"] == 2 and result["frames_scored"] == 2
    assert result["j"][1] == 1.0 and result["f"][1] == 1.0  # object 2 right in frames 1 and 2
    # object 1: frame 1 exact (void pixels predicted background), frame 2 has 25 extra pixels
    assert result["j"][0] == pytest.approx((1.0 + 100 / 125) / 2)
    assert result["f"][0] < 1.0


def test_summary_averages_every_object_not_every_sequence():
    sequences = {
        "one": {"objects": 1, "frames_scored": 3, "j": [1.0], "f": [1.0]},
        "three": {"objects": 3, "frames_scored": 5, "j": [0.0, 0.0, 0.0], "f": [0.5, 0.5, 0.5]},
    }
    summary = summarise(sequences)
    assert summary["j_mean"] == pytest.approx(0.25) and summary["f_mean"] == pytest.approx(0.625)
    assert summary["jf_mean"] == pytest.approx(0.4375)
    assert summary["sequences"]["three"]["jf_mean"] == pytest.approx(0.25)
    assert summary["objects"] == 4 and summary["frames_scored"] == 8
