"""The one map from raw model output to reported scores, and the calibrated range built around it."""

import numpy as np
import pytest
import torch

from qfm_iqm.evaluation.conformal import calibrate_bounded, interval_report
from qfm_iqm.inference.score_map import LABEL_EDGE, MARGIN, bounded, interval_bounds, unbounded

RAW = np.concatenate([-np.logspace(4, -6, 400), [0.0], np.linspace(1e-6, 1.0, 400), 1.0 + np.logspace(-6, 4, 400)])


def test_identity_inside_the_margins_and_strictly_increasing_and_bounded_everywhere():
    inside = np.linspace(MARGIN, 1 - MARGIN, 101)
    np.testing.assert_array_equal(bounded(inside), inside)
    mapped = bounded(np.sort(RAW))
    assert (np.diff(mapped) > 0).all()  # distinct raw scores stay distinct, even 10^4 below the scale
    assert (mapped > 0).all() and (mapped < 1).all()
    assert bounded(-3.0) == pytest.approx(MARGIN**2 / (2 * MARGIN + 3.0)) and isinstance(bounded(-3.0), float)


def test_tensors_map_as_arrays_do_with_a_finite_positive_gradient_everywhere():
    raw = torch.tensor(RAW, dtype=torch.float64, requires_grad=True)
    mapped = bounded(raw)
    np.testing.assert_allclose(mapped.detach().numpy(), bounded(RAW), rtol=1e-12)
    mapped.sum().backward()
    assert torch.isfinite(raw.grad).all() and (raw.grad > 0).all()
    assert raw.grad[RAW.searchsorted(0.5)] == 1.0  # the identity inside the margins


def test_unbounded_inverts_bounded_and_sends_the_ends_of_the_scale_to_infinity():
    np.testing.assert_allclose(unbounded(bounded(RAW[np.abs(RAW) < 1e3])), RAW[np.abs(RAW) < 1e3], rtol=1e-9, atol=1e-12)
    assert unbounded(np.array([0.0, 1.0])).tolist() == [-np.inf, np.inf]


def test_the_mapped_range_covers_labels_exactly_as_the_raw_range_covers_their_preimages():
    """Labels crowd the ends of the scale, where the map is not the identity; raw predictions overshoot."""
    rng = np.random.default_rng(0)

    def draw(n):
        labels = np.clip(rng.beta(0.5, 0.5, n), LABEL_EDGE, 1 - LABEL_EDGE)
        return unbounded(labels) + rng.normal(0, 0.1, n), labels

    interval = calibrate_bounded(*draw(2000), coverage=0.9)
    raw, labels = draw(20_000)
    low, high = interval_bounds(interval, raw)
    covered = (labels >= low) & (labels <= high)
    assert covered.mean() == interval_report(interval, raw, unbounded(labels))["coverage"]
    assert abs(covered.mean() - 0.9) < 0.015
    assert (low > 0).all() and (high < 1).all() and (low < high).all()
    assert interval_report(interval, raw, labels, score_map=bounded)["coverage"] == covered.mean()


def test_labels_at_the_ends_of_the_scale_are_calibrated_as_just_inside_it():
    raw = np.linspace(0.1, 0.9, 100)
    labels = raw.copy()
    labels[:20] = 0.0  # e.g. a scale taken from the data's own minimum
    interval = calibrate_bounded(raw, labels, 0.9)
    assert interval == calibrate_bounded(raw, np.where(labels == 0.0, LABEL_EDGE, labels), 0.9)
    low, _ = interval_bounds(interval, raw[:20])
    assert np.isfinite(interval.quantile) and (low > 0).all()  # no range reaches the end itself
