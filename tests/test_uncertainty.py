"""Intervals against cases whose answer is known (uncertainty.py)."""
import numpy as np
import pytest
from scipy import stats

import uncertainty


def test_all_ten_correct_is_not_a_certainty():
    """10 of 10 right: Clopper-Pearson's lower bound is 0.025 ** (1/10) = 0.69, for accuracy and
    for balanced accuracy (where a bootstrap alone gives [1, 1])."""
    truth = np.arange(10)
    low = 0.025 ** (1 / 10)
    assert uncertainty.exact_interval(10, 10) == pytest.approx([low, 1.0])
    found = uncertainty.test_intervals(truth, truth)
    assert found["test_accuracy_ci"] == pytest.approx([low, 1.0])
    assert found["test_balanced_accuracy_ci"] == pytest.approx([low, 1.0])
    assert set(found["ci_method"]) == {"test_accuracy_ci", "test_balanced_accuracy_ci"}


def test_balanced_accuracy_interval_on_a_large_balanced_set():
    """400 clips, 10 classes of 40, 70 % right: the interval holds 0.7 and is about as wide as the
    binomial's, 2 x 1.96 x sqrt(0.21 / 400) = 0.090; an unbalanced set is weighed per class."""
    truth = np.repeat(np.arange(10), 40)
    predicted = np.where(np.tile(np.arange(40) < 28, 10), truth, (truth + 1) % 10)
    low, high = uncertainty.balanced_accuracy_interval(truth, predicted)
    assert low < 0.7 < high and 0.07 < high - low < 0.11
    assert uncertainty.balanced_accuracy_interval(truth, predicted, seed=1) != [low, high]
    # 90 clips of class 0 all right, 10 of class 1 all wrong: accuracy 0.9, balanced 0.5
    truth, predicted = np.repeat([0, 1], [90, 10]), np.zeros(100, dtype=int)
    low, high = uncertainty.balanced_accuracy_interval(truth, predicted)
    assert low < 0.5 < high < 0.7


def test_t_interval_of_a_fold_mean():
    """0.6, 0.7, 0.8: mean 0.7, standard error 0.1 / sqrt(3), t(0.975, 2 df) = 4.303."""
    half = 4.302653 * 0.1 / np.sqrt(3)
    assert uncertainty.mean_interval([0.6, 0.7, 0.8]) == pytest.approx([0.7 - half, 0.7 + half])
    assert uncertainty.mean_interval([0.9, 1.0, 1.0])[1] == 1.0  # clipped to a proportion's range
    assert uncertainty.mean_interval([0.7]) is None
    # five folds of 10 clips that agree: not a point, but the exact interval of 10 of 50 clips
    exact = stats.binomtest(10, 50).proportion_ci(0.95, method="exact")
    assert uncertainty.mean_interval([0.2] * 5, clips=50) == pytest.approx([exact.low, exact.high])
    assert uncertainty.mean_interval([0.6, 0.7, 0.8], clips=30) == pytest.approx([0.7 - half, 0.7 + half])
    # repeated K-fold (Nadeau and Bengio): the variance of the mean times (1/J + test/train) * J
    values = [0.1, 0.0, 0.05, 0.08]
    wide = uncertainty.mean_interval(values, overlap=0.25, bounds=None)
    scale = np.std(values, ddof=1) * np.sqrt(1 / 4 + 0.25)
    assert wide == pytest.approx(list(stats.t.interval(0.95, 3, loc=np.mean(values), scale=scale)))


def test_paired_difference_needs_more_than_a_few_clips():
    """McNemar's exact p of 4 clips to 0 is 2 / 2**4 = 0.125: within noise, though the bootstrap
    interval alone leaves 0 out; 12 to 0 (p = 2 / 2**12) is beyond noise; identical runs differ by
    nothing."""
    truth = np.repeat(np.arange(10), 29)
    a = truth.copy()
    b = truth.copy()
    b[:4] = (b[:4] + 1) % 10
    result = uncertainty.paired_difference([(truth, a, b)])
    assert (result.only_a, result.only_b) == (4, 0) and result.p_value == pytest.approx(0.125)
    assert result.interval[0] > 0 and not result.beyond_noise and "within noise" in str(result)
    b[:12] = (truth[:12] + 1) % 10
    result = uncertainty.paired_difference([(truth, a, b)])
    assert result.p_value == pytest.approx(2 / 2 ** 12) and result.beyond_noise
    assert result.difference == pytest.approx((1 - 17 / 29) / 10)  # class 0: 17 of 29 right
    assert "beyond noise" in str(result)
    same = uncertainty.paired_difference([(truth, a, a), (truth, b, b)])  # two folds
    assert same.difference == 0 and same.p_value == 1 and not same.beyond_noise
    # both wrong on the same 29 clips, B on 4 more: pairing leaves only those 4 to vary (resampled
    # apart, the two runs' 29 shared errors would widen the interval to about 0.1)
    a = np.where(np.arange(290) % 10 == 0, (truth + 1) % 10, truth)
    b = a.copy()
    b[1:5] = (truth[1:5] + 1) % 10
    result = uncertainty.paired_difference([(truth, a, b)])
    assert result.difference == pytest.approx(4 / 29 / 10) and (result.only_a, result.only_b) == (4, 0)
    assert result.interval[1] - result.interval[0] < 0.04
