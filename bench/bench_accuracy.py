"""Accuracy benchmark: 5-fold clip-level cross-validation on real clips, the same folds for
every row (a fold is a pure function of the clip set and --seed), clip-level balanced accuracy.

    python bench/bench_accuracy.py ../shared/gtzan/genres            # about an hour on 2 cores
    python bench/bench_accuracy.py ../shared/gtzan/genres --only mlp svm --work /tmp/acc

Rows: the study's ConvolNeuNet (RGB linear spectrograms, 128 px, 3-s segments); SpecNet on
the linear and on the log-mel spectrogram (dB levels), without and with SpecAugment; with the
default early stopping and with a minimum number of epochs; the study's MLP, an RBF SVM and
logistic regression on the audio features; and the ensemble of every model but the study's
CNN and the ablations (mean clip probabilities, fold by fold). Runs already in --work are
reused (delete them, or --fresh, to train again). Prints a markdown table and the targets.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import compare  # noqa: E402
import data_conversion  # noqa: E402
import train_cnn  # noqa: E402
import train_mlp  # noqa: E402

SPECNET = ["--model", "specnet", "--epochs", "60"]
LONGER = ["--min-epochs", "20", "--patience", "10"]
ROWS = {  # name -> (label, trainer, data, arguments)
    "convolneunet": ("ConvolNeuNet (study), linear RGB, 128 px", train_cnn, "linear",
                     ["--img-size", "128"]),
    "specnet-linear": ("SpecNet, linear levels, 128 px", train_cnn, "linear", SPECNET + LONGER),
    "specnet-linear-sa": ("SpecNet, linear levels, 128 px, SpecAugment", train_cnn, "linear",
                          SPECNET + LONGER + ["--augment", "specaugment"]),
    "specnet-mel-p5": ("SpecNet, mel 128, patience 5 (default stopping)", train_cnn, "mel",
                       SPECNET),
    "specnet-mel": ("SpecNet, mel 128", train_cnn, "mel", SPECNET + LONGER),
    "specnet-mel-sa": ("SpecNet, mel 128, SpecAugment", train_cnn, "mel",
                       SPECNET + LONGER + ["--augment", "specaugment"]),
    "mlp": ("MLP (study: 512 tanh/relu/tanh, PCA 0.95)", train_mlp, "features", []),
    "svm": ("SVM (RBF, C=10)", train_mlp, "features", ["--baseline", "svm", "--pca", "0"]),
    "logreg": ("logistic regression", train_mlp, "features", ["--baseline", "logreg", "--pca", "0"]),
}
ENSEMBLE = ["specnet-linear", "specnet-mel-sa", "mlp", "svm", "logreg"]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", help="labeled real audio, e.g. ../shared/gtzan/genres")
    p.add_argument("--work", default="/tmp/bench_accuracy", help="data and runs (default %(default)s)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=list(ROWS), help="train these rows only")
    p.add_argument("--fresh", action="store_true", help="train every row again")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    work = Path(args.work)
    data = {"linear": work / "linear128", "mel": work / "mel128", "features": work / "features.csv"}
    convert = [args.audio, "--segment-seconds", "3", "--workers", "2"]
    if data_conversion.main([args.audio, str(data["linear"]), "--size", "128", *convert[1:]]) or \
            data_conversion.main([args.audio, str(data["mel"]), "--size", "0", "--mel", "128",
                                  *convert[1:]]) or \
            train_mlp.main(["--extract", args.audio, "--features", str(data["features"]),
                            "--workers", "2"]):
        return 1
    runs = work / "runs"
    for name in args.only or ROWS:
        label, trainer, source, extra = ROWS[name]
        if (runs / name / "summary.json").exists() and not args.fresh:
            print(f"{name}: reusing {runs / name}")
            continue
        print(f"\n=== {label} ===", flush=True)
        flag = "--features" if trainer is train_mlp else "--data"
        code = trainer.main([flag, str(data[source]), "--folds", str(args.folds), "--seed",
                             str(args.seed), "--out", str(runs), "--name", name, "--overwrite",
                             "--workers", "2", *extra])
        if code:
            return code
    entries = {e["name"].split(" (")[0]: e for e in compare.load_runs(runs, list(ROWS))}
    ensemble = compare.ensemble_entry(runs, ENSEMBLE, "ensemble", work / "report") \
        if set(ENSEMBLE) <= set(entries) else None
    print(f"\n{args.folds}-fold cross-validation on {args.audio}, seed {args.seed}: clip-level "
          "balanced accuracy, mean ± sample std over the folds\n")
    print("| model | balanced accuracy | accuracy | epochs | seconds to best |\n|---|---|---|---|---|")
    for name, (label, *_rest) in ROWS.items():
        if name in entries:
            e = entries[name]
            print(f"| {label} | {e['test_balanced_accuracy']:.3f} ± {e['test_balanced_accuracy_std']:.3f}"
                  f" | {e['test_accuracy']:.3f} | {e['epochs_run']:.0f} | {e['seconds_to_best']:.1f} |")
    if ensemble:
        print(f"| ensemble: {' + '.join(ENSEMBLE)} | {ensemble['test_balanced_accuracy']:.3f} ± "
              f"{ensemble['test_balanced_accuracy_std']:.3f} | {ensemble['test_accuracy']:.3f} | - | - |")
    bal = {name: e["test_balanced_accuracy"] for name, e in entries.items()}
    if {"specnet-mel", "specnet-mel-sa", "convolneunet", "logreg"} <= set(bal):
        best_mel = max(bal["specnet-mel"], bal["specnet-mel-sa"])
        print(f"\nSpecNet on mel (best of the two) - ConvolNeuNet: {best_mel - bal['convolneunet']:+.3f} "
              f"(target >= +0.15): {'PASS' if best_mel - bal['convolneunet'] >= 0.15 else 'FAIL'}")
        print(f"SpecNet on mel - logistic regression: {best_mel - bal['logreg']:+.3f} (target >= 0): "
              f"{'PASS' if best_mel >= bal['logreg'] else 'FAIL'}")
    if ensemble:
        margin = ensemble["test_balanced_accuracy"] - max(bal[m] for m in ENSEMBLE)
        print(f"ensemble - best member: {margin:+.3f} (target > 0): {'PASS' if margin > 0 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
