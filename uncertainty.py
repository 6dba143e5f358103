"""How sure a test figure is: 95 % intervals over the test clips, the interval of a K-fold mean,
and whether two runs tested on the same clips differ by more than noise. numpy and scipy only (no
torch): the trainers, compare.py, the notebooks' results and the benchmarks share it.

The choices, and why:
- Accuracy: the exact Clopper-Pearson interval (scipy.stats.binomtest(...).proportion_ci). It is
  never a point: 10 of 10 clips right gives [0.69, 1.00].
- Balanced accuracy: a percentile bootstrap over the test clips (2000 resamples, seed 0; each
  resample's figure the mean recall of the classes it holds, as scikit-learn's), widened where
  needed to the Clopper-Pearson interval of round(balanced accuracy x n) of the n clips. A
  bootstrap alone collapses to a point when every clip is right (or every one wrong) and is too
  narrow on a handful of clips; the exact interval is the floor. On a test part with as many clips
  of every class (a stratified split of a balanced set) balanced accuracy is accuracy and that
  floor is exact; otherwise it is an approximation, which the bootstrap usually exceeds anyway.
- K-fold: the fold-to-fold spread (sample std) and the t interval of the mean (scipy.stats.t, K-1
  degrees of freedom), never narrower than the exact interval of the mean as a share of all the
  test clips (each tested once): five folds that happen to agree would otherwise make it a
  point. Folds share training clips, so the t interval alone is somewhat too narrow; for
  repeated K-fold, `overlap` (test / train clips) applies Nadeau and Bengio's correction (2003).
- Two runs on the same clips: a paired bootstrap of the balanced-accuracy difference (the same
  resampled clips for both; per fold, for K-fold runs on the same folds) and McNemar's exact test
  on the clips only one of them got right (scipy.stats.binomtest). The difference counts as beyond
  noise only when both say so: the interval excludes 0 and p < 0.05 (the bootstrap alone calls 4
  clips to 0 a difference; McNemar's exact p is then 0.125).
"""
from dataclasses import dataclass

import numpy as np

CONFIDENCE, RESAMPLES, SEED = 0.95, 2000, 0
EXACT = "exact Clopper-Pearson over test clips (scipy.stats.binomtest)"
BOOTSTRAP = (f"percentile bootstrap over test clips, {RESAMPLES} resamples, seed {SEED}, "
             "widened to the Clopper-Pearson interval of round(balanced accuracy x clips)")
T_MEAN = ("t interval of the mean over folds (scipy.stats.t), widened to the Clopper-Pearson "
          "interval of round(mean x test clips)")


def exact_interval(successes, n, confidence=CONFIDENCE):
    """Clopper-Pearson interval of successes out of n."""
    from scipy.stats import binomtest
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence, method="exact")
    return [float(ci.low), float(ci.high)]


def resampled(statistic, args, n, resamples, rng):
    """statistic(counts, *args) of each resample of n clips, counts (resamples, n) saying how often
    each clip is drawn; in chunks of about 2 million counts (a large test part stays small in
    memory)."""
    chunk = max(1, 2_000_000 // n)
    return np.concatenate([statistic(rng.multinomial(n, np.full(n, 1 / n), size=min(chunk, resamples - done)),
                                     *args) for done in range(0, resamples, chunk)])


def balanced_accuracies(counts, truth, correct, n_classes):
    """Balanced accuracy of each weighting of the clips (a row of counts): the mean recall of
    the classes present."""
    onehot = np.eye(n_classes)[truth]
    total, hits = counts @ onehot, counts @ (onehot * correct[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(np.where(total > 0, hits / total, np.nan), axis=1)


def balanced_difference(counts, truth, right_a, right_b, n_classes):
    return (balanced_accuracies(counts, truth, right_a, n_classes)
            - balanced_accuracies(counts, truth, right_b, n_classes))


def percentile_interval(values, confidence=CONFIDENCE):
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def balanced_accuracy_interval(truth, predicted, confidence=CONFIDENCE, resamples=RESAMPLES,
                               seed=SEED):
    """The bootstrap interval of balanced accuracy over the test clips, with the exact floor
    (see the module's notes)."""
    truth, predicted = np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int)
    n, n_classes = len(truth), int(max(truth.max(), predicted.max())) + 1
    correct = truth == predicted
    point = balanced_accuracies(np.ones((1, n)), truth, correct, n_classes)[0]
    boot = resampled(balanced_accuracies, (truth, correct, n_classes), n, resamples,
                     np.random.default_rng(seed))
    low, high = percentile_interval(boot, confidence)
    floor = exact_interval(round(point * n), n, confidence)
    return [min(low, floor[0]), max(high, floor[1])]


def test_intervals(truth, predicted):
    """metrics.json's intervals of one test part, and how each was computed."""
    truth, predicted = np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int)
    return {"test_balanced_accuracy_ci": balanced_accuracy_interval(truth, predicted),
            "test_accuracy_ci": exact_interval((truth == predicted).sum(), len(truth)),
            "ci_method": {"test_balanced_accuracy_ci": BOOTSTRAP, "test_accuracy_ci": EXACT}}


def mean_interval(values, confidence=CONFIDENCE, overlap=0.0, bounds=(0.0, 1.0), clips=None):
    """The t interval of the mean of values (folds; None under two), clipped to bounds.
    overlap = test / train clips corrects for resamples that share clips (Nadeau and Bengio):
    the variance of the mean is s^2 (1/J + overlap) instead of s^2 / J. clips: the test clips
    behind a K-fold mean, whose exact interval of round(mean x clips) is the floor."""
    from scipy import stats
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    mean, scale = values.mean(), values.std(ddof=1) * np.sqrt(1 / len(values) + overlap)
    low, high = (stats.t.interval(confidence, len(values) - 1, loc=mean, scale=scale)
                 if scale > 0 else (mean, mean))
    if clips:
        floor = exact_interval(round(mean * clips), clips, confidence)
        low, high = min(low, floor[0]), max(high, floor[1])
    lo, hi = bounds or (-np.inf, np.inf)
    return [float(max(lo, low)), float(min(hi, high))]


@dataclass
class Paired:
    difference: float  # A minus B: balanced accuracy (the mean over parts)
    interval: list     # its 95 % paired bootstrap interval
    only_a: int        # clips only A got right
    only_b: int        # clips only B got right
    p_value: float     # McNemar's exact test on those

    @property
    def beyond_noise(self):
        return (self.interval[0] > 0 or self.interval[1] < 0) and self.p_value < 0.05

    def __str__(self):
        return (f"{self.difference:+.3f} (95% CI {self.interval[0]:+.3f}..{self.interval[1]:+.3f}; "
                f"McNemar p = {self.p_value:.2g}, {self.only_a} vs {self.only_b} clips right by "
                f"one only): {'beyond noise' if self.beyond_noise else 'within noise'}")


def paired_difference(parts, confidence=CONFIDENCE, resamples=RESAMPLES, seed=SEED):
    """A against B on the same clips. parts: [(truth, predicted by A, predicted by B)], one per
    test part (one, or a fold each); each part is resampled within itself and the statistic is
    the mean over parts of balanced accuracy, as a K-fold figure is."""
    from scipy.stats import binomtest
    rng = np.random.default_rng(seed)
    point, boot, only_a, only_b = 0.0, np.zeros(resamples), 0, 0
    for truth, a, b in parts:
        truth, a, b = (np.asarray(x, dtype=int) for x in (truth, a, b))
        n, n_classes = len(truth), int(max(truth.max(), a.max(), b.max())) + 1
        right_a, right_b = truth == a, truth == b
        args = (truth, right_a, right_b, n_classes)
        point += balanced_difference(np.ones((1, n)), *args)[0]
        boot += resampled(balanced_difference, args, n, resamples, rng)
        only_a += int((right_a & ~right_b).sum())
        only_b += int((right_b & ~right_a).sum())
    discordant = only_a + only_b
    p = binomtest(only_a, discordant).pvalue if discordant else 1.0
    return Paired(float(point / len(parts)), percentile_interval(boot / len(parts), confidence),
                  only_a, only_b, float(p))


def interval_text(ci, fmt="{:.3f}"):
    """'low..high', or '?' for a figure recorded without one."""
    return "?" if not ci else f"{fmt.format(ci[0])}..{fmt.format(ci[1])}"
