"""The default released model on the bundled examples: every damaged version scores below the sharp
photo, and every score lies inside its calibrated range and on the 0-100 scale."""

from pathlib import Path

import numpy as np
import pytest

from qfm_iqm import load_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def scorer():
    return load_model()


def test_the_default_model_rates_every_damaged_example_below_the_sharp_photo(scorer):
    scores = {path.stem: scorer.score(path) for path in sorted(EXAMPLES.glob("*.jpg"))}
    assert set(scores) == {"sharp", "noisy", "blurred", "jpeg_q5", "underexposed"}
    for damaged in ("noisy", "blurred", "jpeg_q5", "underexposed"):
        assert scores[damaged].score < scores["sharp"].score, damaged
    for result in scores.values():
        assert 0.0 < result.low <= result.score <= result.high < 100.0


def test_scores_of_extreme_inputs_stay_inside_the_scale_and_keep_their_order(scorer):
    """Black, white and random pixels land far from the training photos; the score map keeps them inside
    the scale without tying them at its end."""
    rng = np.random.default_rng(0)
    scores = []
    for image in (np.zeros((300, 300, 3), np.uint8), np.full((300, 300, 3), 255, np.uint8),
                  rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)):
        result = scorer.score(image)
        assert 0.0 < result.low <= result.score <= result.high < 100.0
        scores.append(result.score)
    assert len(set(scores)) == 3
