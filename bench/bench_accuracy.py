"""Accuracy benchmark: 5-fold clip-level cross-validation on real clips, repeated for a few
seeds (a seed's folds are a pure function of the clip set and the seed, the same for every
row), clip-level balanced accuracy.

    python bench/bench_accuracy.py ../shared/gtzan/genres            # about 2 hours on 2 cores
    python bench/bench_accuracy.py ../shared/gtzan/genres --only mlp svm logreg --seeds 0

Rows: the study's ConvolNeuNet (RGB linear spectrograms, 128 px, 3-s segments); SpecNet with
its defaults (cosine schedule over 30 epochs, mixup 0.2, last weights) on the log-mel and on the
linear spectrogram (dB levels), on mel with SpecAugment, and on mel with the study's stopping
(plateau, early stopping on validation, no mixup); the study's MLP, an RBF SVM and logistic
regression on the audio features; and the ensemble chosen before the run (ENSEMBLE: mean clip
probabilities, fold by fold). With 10 test clips a fold, one fold's balanced accuracy moves in
steps of 0.1: the table gives the mean over every fold of every seed, its sample std, and each
seed's mean. Runs already in --work are reused (delete them, or --fresh, to train again).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import compare  # noqa: E402
import data_conversion  # noqa: E402
import train_cnn  # noqa: E402
import train_mlp  # noqa: E402

SPECNET = ["--model", "specnet"]
ROWS = {  # name -> (label, trainer, data, arguments)
    "convolneunet": ("ConvolNeuNet (study), linear RGB, 128 px", train_cnn, "linear",
                     ["--img-size", "128"]),
    "specnet-mel": ("SpecNet, mel 128", train_cnn, "mel", SPECNET),
    "specnet-mel-sa": ("SpecNet, mel 128, SpecAugment", train_cnn, "mel",
                       SPECNET + ["--augment", "specaugment"]),
    "specnet-mel-plateau": ("SpecNet, mel 128, the study's stopping (plateau, patience 5, no "
                            "mixup)", train_cnn, "mel",
                            SPECNET + ["--schedule", "plateau", "--epochs", "60", "--mixup", "0"]),
    "specnet-linear": ("SpecNet, linear levels, 128 px", train_cnn, "linear", SPECNET),
    "mlp": ("MLP (study: 512 tanh/relu/tanh, PCA 0.95)", train_mlp, "features", []),
    "svm": ("SVM (RBF, C=10)", train_mlp, "features", ["--baseline", "svm", "--pca", "0"]),
    "logreg": ("logistic regression", train_mlp, "features", ["--baseline", "logreg", "--pca", "0"]),
}
ENSEMBLE = ["specnet-mel", "specnet-linear", "mlp", "svm", "logreg"]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", help="labeled real audio, e.g. ../shared/gtzan/genres")
    p.add_argument("--work", default="/tmp/bench_accuracy", help="data and runs (default %(default)s)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", choices=list(ROWS), help="train these rows only")
    p.add_argument("--fresh", action="store_true", help="train every row again")
    return p


def fold_scores(runs, name, seeds):
    """{seed: [balanced accuracy of each fold]} for the seeds this row has finished."""
    scores = {}
    for seed in seeds:
        summary = runs / f"{name}-s{seed}" / "summary.json"
        if summary.exists():
            scores[seed] = json.loads(summary.read_text())["per_fold_balanced_accuracy"]
    return scores


def row(label, scores):
    folds = [v for values in scores.values() for v in values]
    per_seed = ", ".join(f"{statistics.mean(v):.2f}" for v in scores.values())
    return (f"| {label} | {statistics.mean(folds):.3f} ± {statistics.stdev(folds):.3f} | "
            f"{per_seed} |")


def paired(scores, a, b):
    """a - b fold by fold over the seeds both have: 'mean ± standard error; wins/ties/losses'."""
    seeds = [s for s in scores[a] if s in scores[b]]
    diffs = [x - y for s in seeds for x, y in zip(scores[a][s], scores[b][s])]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    return (f"fold by fold {statistics.mean(diffs):+.3f} ± {se:.3f} (standard error); better on "
            f"{sum(d > 1e-9 for d in diffs)}, equal on {sum(abs(d) <= 1e-9 for d in diffs)}, worse "
            f"on {sum(d < -1e-9 for d in diffs)} of {len(diffs)} folds")


def main(argv=None):
    args = build_parser().parse_args(argv)
    work = Path(args.work)
    data = {"linear": work / "linear128", "mel": work / "mel128", "features": work / "features.csv"}
    convert = [args.audio, "--segment-seconds", "3", "--workers", "2"]
    if data_conversion.cli([args.audio, str(data["linear"]), "--size", "128", *convert[1:]]) or \
            data_conversion.cli([args.audio, str(data["mel"]), "--size", "0", "--mel", "128",
                                  *convert[1:]]) or \
            data_conversion.cli([args.audio, "--features", str(data["features"]),
                                  "--workers", "2", "--overwrite"]):
        return 1
    runs = work / "runs"
    for seed in args.seeds:
        for name in args.only or ROWS:
            label, trainer, source, extra = ROWS[name]
            run = f"{name}-s{seed}"
            if (runs / run / "summary.json").exists() and not args.fresh:
                print(f"{run}: reusing {runs / run}")
                continue
            print(f"\n=== {label}, seed {seed} ===", flush=True)
            flag = "--features" if trainer is train_mlp else "--data"
            code = trainer.cli([flag, str(data[source]), "--folds", str(args.folds), "--seed",
                                 str(seed), "--out", str(runs), "--name", run, "--overwrite",
                                 "--workers", "2", *extra])
            if code:
                return code
    scores = {name: fold_scores(runs, name, args.seeds) for name in ROWS}
    scores = {name: s for name, s in scores.items() if s}
    if set(ENSEMBLE) <= set(scores):
        seeds = [s for s in args.seeds if all(s in scores[m] for m in ENSEMBLE)]
        entries = [compare.ensemble_entry(runs, [f"{m}-s{s}" for m in ENSEMBLE], f"ensemble-s{s}",
                                          work / "report") for s in seeds]
        scores["ensemble"] = {s: [f["test_balanced_accuracy"] for f in e["folds"]]
                              for s, e in zip(seeds, entries)}
    print(f"\n{args.folds}-fold cross-validation on {args.audio}, seeds "
          f"{' '.join(map(str, args.seeds))}: clip-level balanced accuracy, mean ± sample std "
          "over every fold of every seed, and each seed's mean\n")
    print("| model | balanced accuracy | per seed |\n|---|---|---|")
    for name, s in scores.items():
        label = ROWS[name][0] if name in ROWS else f"ensemble: {' + '.join(ENSEMBLE)}"
        print(row(label, s))
    mean = {name: statistics.mean(v for values in s.values() for v in values)
            for name, s in scores.items()}
    if {"specnet-mel", "convolneunet", "logreg"} <= set(mean):
        gain = mean["specnet-mel"] - mean["convolneunet"]
        print(f"\nSpecNet on mel - ConvolNeuNet: {gain:+.3f} (target >= +0.15): "
              f"{'PASS' if gain >= 0.15 else 'FAIL'}")
        gap = mean["specnet-mel"] - mean["logreg"]
        print(f"SpecNet on mel - logistic regression: {gap:+.3f} (target >= 0): "
              f"{'PASS' if gap >= 0 else 'FAIL'}; {paired(scores, 'specnet-mel', 'logreg')}")
    if "ensemble" in mean:
        margin = mean["ensemble"] - max(mean[m] for m in ENSEMBLE)
        print(f"ensemble - best member: {margin:+.3f} (target > 0): {'PASS' if margin > 0 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
