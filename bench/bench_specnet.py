"""Benchmark: SpecNet's recommended recipe as it was (commit 5be97c4) and as it is, side by side
in one run on the same clips and folds: CPU seconds per epoch and in total, balanced accuracy per
fold, and the paired difference with its 95 % interval: a measure that can see 0.05.

    python bench/bench_specnet.py ../shared/gtzan/genres                 # 5 x 5-fold, seeds 0 1 2
    python bench/bench_specnet.py ../shared/gtzan/genres --repeats 2 --folds 2 --seeds 0 --epochs 1

Each recipe is its own code: the old one is checked out of git (`git archive 5be97c4`) into a
scratch folder, the new one is this working tree; both run as child processes (conversion, then
train_cnn.py --split FOLD.json --seed S with the recipe's flags, one process per fold), and their
CPU seconds (user + system of the children) and wall time are measured around each command.

The folds are sklearn's RepeatedStratifiedKFold over the clips (stratified by genre, seed 0): R
repeats of K folds, every clip tested once per repeat, validation clips (one per genre, or a
ninth) drawn from each fold's training clips; both recipes train and test on the very same
files, and every seed on the same folds. A fold's difference (new minus old, clip-level
balanced accuracy) is averaged over seeds; the mean of the R x K differences gets a t interval
with Nadeau and Bengio's correction for folds that share training clips (variance of the mean
s^2 (1/(R K) + test/train clips) instead of s^2 / (R K); uncertainty.mean_interval). On 50 clips
one clip of a 10-clip fold is 0.1: many repeats are what narrow the interval.
"""
import argparse
import io
import json
import resource
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import uncertainty  # noqa: E402

OLD = "5be97c4"  # the recipe before issue 30
RECIPES = {  # name -> (code: the commit or None for this tree, conversion flags, trainer flags)
    "old": (OLD, "--size 0 --mel 128 --segment-seconds 3", "--model specnet"),
    "new": (None, None, None),  # from kernels/recipes/specnet-mel.json
}
AUDIO = (".wav", ".au", ".mp3", ".flac", ".ogg")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", help="labeled audio: one sub-folder per genre")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="repeats of the K folds (default 5)")
    p.add_argument("--epochs", type=int, help="both recipes' epochs (default: the recipes' own; "
                                              "fewer only for a smoke run)")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    return p


def new_recipe():
    recipe = json.loads((ROOT / "kernels" / "recipes" / "specnet-mel.json").read_text())
    conversion = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe["conversion"].items())
    return conversion, " ".join(recipe["trainer_args"])


def checkout(commit, folder):
    """The repository's files at `commit` in `folder` (git archive)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder)
    return folder


def timed(command, cwd):
    """(CPU seconds of the child, wall seconds, stdout) of one command, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, result.stdout


def fold_splits(audio, folds, repeats, folder):
    """[(repeat, fold, split file)]: RepeatedStratifiedKFold over the clips (file names without
    extension, as the trainers name them), validation clips from each fold's training clips."""
    from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split
    clips = sorted((f.name.rsplit(".", 1)[0], f.parent.name) for f in audio.glob("*/*")
                   if f.suffix.lower() in AUDIO)
    ids, labels = np.array([c for c, _ in clips]), np.array([g for _, g in clips])
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=0)
    for i, (train, test) in enumerate(cv.split(ids, labels)):
        n_val = max(len(set(labels)), round(len(train) / 9))
        train, val = train_test_split(train, test_size=n_val, stratify=labels[train], random_state=i)
        path = folder / f"r{i // folds + 1}f{i % folds + 1}.json"
        path.write_text(json.dumps({"seed": 0, "train": sorted(ids[train]), "val": sorted(ids[val]),
                                    "test": sorted(ids[test])}))
        out.append((i // folds + 1, i % folds + 1, path))
    return out, len(test) / len(train)


def main(argv=None):
    args = build_parser().parse_args(argv)
    audio = Path(args.audio).resolve()
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    with tempfile.TemporaryDirectory(prefix="bench_specnet-") as tmp:
        work = Path(args.work or tmp)
        splits, overlap = fold_splits(audio, args.folds, args.repeats, work / "splits")
        results = {}
        for name, (commit, conversion, flags) in RECIPES.items():
            if commit is None:
                conversion, flags = new_recipe()
            code = checkout(commit, work / f"code-{name}") if commit else ROOT
            images = work / f"images-{name}"
            cpu, wall, _ = timed([sys.executable, "data_conversion.py", str(audio), str(images),
                                  *shlex.split(conversion), "--workers", "2"], code)
            results[name] = {"conversion": (cpu, wall), "code": commit or "this tree",
                             "recipe": f"{conversion} / {flags}", "seeds": {}}
            print(f"{name}: conversion {conversion}: {cpu:.0f} CPU-s, {wall:.0f} s", flush=True)
            for seed in args.seeds:
                s = results[name]["seeds"][seed] = {"cpu": 0.0, "wall": 0.0, "epochs": 0, "scores": {}}
                for repeat, fold, split in splits:
                    run = work / f"runs-{name}" / f"s{seed}" / split.stem
                    cpu, wall, _ = timed([sys.executable, "train_cnn.py", "--data", str(images),
                                          *shlex.split(flags), *epochs, "--split", str(split),
                                          "--seed", str(seed), "--out", str(run.parent), "--name",
                                          run.name, "--workers", "2"], code)
                    metrics = json.loads((run / "metrics.json").read_text())
                    s["cpu"], s["wall"] = s["cpu"] + cpu, s["wall"] + wall
                    s["epochs"] += metrics["epochs_run"]
                    s["scores"][repeat, fold] = metrics["test_balanced_accuracy"]
                scores = list(s["scores"].values())
                print(f"{name} seed {seed}: balanced accuracy {statistics.mean(scores):.3f} over "
                      f"{len(scores)} folds, {s['cpu']:.0f} CPU-s, {s['wall']:.0f} s, "
                      f"{s['epochs']} epochs", flush=True)
    report(results, args, overlap)
    return 0


def report(results, args, overlap):
    print(f"\nSpecNet's recipe on {args.audio}: {args.repeats} x {args.folds}-fold "
          f"cross-validation (RepeatedStratifiedKFold, the same folds for both), seeds "
          f"{' '.join(map(str, args.seeds))}{f', {args.epochs} epochs' if args.epochs else ''}; "
          "CPU seconds of the training commands (user + system; 2 cores), clip-level balanced "
          "accuracy\n")
    print("| recipe | code | seed | balanced accuracy (mean of folds) | CPU-s | CPU-s/epoch | wall s |")
    print("|---|---|---|---|---|---|---|")
    total = {}
    for name, r in results.items():
        for seed, s in r["seeds"].items():
            print(f"| {name}: {r['recipe']} | {r['code']} | {seed} | "
                  f"{statistics.mean(s['scores'].values()):.3f} | {s['cpu']:.0f} | "
                  f"{s['cpu'] / s['epochs']:.2f} | {s['wall']:.0f} |")
        seeds = r["seeds"].values()
        cells = {cell: statistics.mean(s["scores"][cell] for s in seeds)  # a fold: mean of seeds
                 for cell in next(iter(seeds))["scores"]}
        total[name] = (sum(s["cpu"] for s in seeds), sum(s["epochs"] for s in seeds), cells)
        cpu, epochs, _ = total[name]
        values = list(cells.values())
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        print(f"| {name}: all | | | {statistics.mean(values):.3f}{spread} | {cpu:.0f} | "
              f"{cpu / epochs:.2f} | |")
    old, new = total["old"], total["new"]
    diffs = [new[2][cell] - old[2][cell] for cell in old[2]]
    print(f"\nCPU time, old / new: {old[0] / new[0]:.2f}x in total, "
          f"{(old[0] / old[1]) / (new[0] / new[1]):.2f}x per epoch (target >= 3x)")
    ci = uncertainty.mean_interval(diffs, overlap=overlap, bounds=None)
    if ci is None or len(set(diffs)) == 1:  # no spread to measure: not a precise difference
        verdict = ("every fold gives the same difference: no spread to measure, no interval "
                   "(too few folds or epochs to tell the recipes apart)")
    else:
        half = (ci[1] - ci[0]) / 2
        verdict = (f"95% CI {ci[0]:+.3f}..{ci[1]:+.3f} (t, {len(diffs) - 1} df, corrected for "
                   f"folds sharing training clips, test/train {overlap:.2f}): "
                   + ("within noise" if ci[0] <= 0 <= ci[1] else "beyond noise")
                   + f"; half-width {half:.3f}: a difference of 0.05 would "
                   + ("" if half < 0.05 else "not ") + "be told from noise at these settings")
    print(f"balanced accuracy, new - old, fold by fold (mean of seeds), {len(diffs)} folds: "
          f"{statistics.mean(diffs):+.3f}, {verdict}")
    for name, r in results.items():
        cpu, wall = r["conversion"]
        print(f"conversion ({name}): {cpu:.0f} CPU-s, {wall:.0f} s wall")


if __name__ == "__main__":
    sys.exit(main())
