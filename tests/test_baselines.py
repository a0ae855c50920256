import numpy as np

from qfm_iqm.data.splits import Split
from qfm_iqm.evaluation.baselines import fit_ridge, predict_ridge, ridge_on_split, select_alpha


def test_ridge_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 5))
    targets = features @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.7
    model = fit_ridge(features, targets, alpha=1e-6)
    assert np.allclose(predict_ridge(model, features), targets, atol=1e-4)


def test_alpha_is_chosen_by_cross_validation_on_noise():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 40))
    targets = rng.normal(size=60)  # pure noise: heavy shrinkage generalises best
    assert select_alpha(features, targets, (1e-3, 1e4)) == 1e4


def test_ridge_on_split_never_sees_test_labels():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(50, 3))
    labels = features @ np.array([1.0, 0.5, -1.0])
    split = Split(seed=0, train=tuple(range(40)), test=tuple(range(40, 50)))
    predictions, _ = ridge_on_split(features, labels, split)
    poisoned = labels.copy()
    poisoned[40:] = 1e6  # changing test labels must not change the predictions
    again, _ = ridge_on_split(features, poisoned, split)
    assert np.array_equal(predictions, again)
    assert np.corrcoef(predictions, labels[40:])[0, 1] > 0.99
