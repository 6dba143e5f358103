"""Benchmark: SpecNet's recommended recipe as it was (commit 5be97c4) and as it is, side by side
in one run on the same clips: CPU seconds per epoch and in total, balanced accuracy per seed and
fold, and the ratio.

    python bench/bench_specnet.py ../shared/gtzan/genres            # seeds 0 1 2, 5 folds
    python bench/bench_specnet.py ../shared/gtzan/genres --seeds 0 --folds 5

Each recipe is its own code: the old one is checked out of git (`git archive 5be97c4`) into a
scratch folder, the new one is this working tree; both run as child processes (conversion, then
train_cnn.py --model specnet --folds K --seed S with the recipe's flags), and their CPU seconds
(user + system of the children) and wall time are measured around each command. Both
cross-validate the same clips with the same folds (StratifiedKFold of the clip ids, seeded), so
their accuracies are compared fold by fold: the mean difference and its standard error.
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

ROOT = Path(__file__).resolve().parents[1]
OLD = "5be97c4"  # the recipe before issue 30
RECIPES = {  # name -> (code: the commit or None for this tree, conversion flags, trainer flags)
    "old": (OLD, "--size 0 --mel 128 --segment-seconds 3", "--model specnet"),
    "new": (None, None, None),  # from kernels/recipes/specnet-mel.json
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", help="labeled audio: one sub-folder per genre")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--folds", type=int, default=5)
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


def fold_scores(run, folds):
    metrics = [json.loads((run / f"fold{k}" / "metrics.json").read_text())
               for k in range(1, folds + 1)]
    return [m["test_balanced_accuracy"] for m in metrics], sum(m["epochs_run"] for m in metrics)


def main(argv=None):
    args = build_parser().parse_args(argv)
    audio = Path(args.audio).resolve()
    with tempfile.TemporaryDirectory(prefix="bench_specnet-") as tmp:
        work = Path(args.work or tmp)
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
                run = work / f"runs-{name}" / f"s{seed}"
                cpu, wall, _ = timed([sys.executable, "train_cnn.py", "--data", str(images),
                                      *shlex.split(flags), "--folds", str(args.folds), "--seed",
                                      str(seed), "--out", str(run.parent), "--name", run.name,
                                      "--workers", "2"], code)
                scores, epochs = fold_scores(run, args.folds)
                results[name]["seeds"][seed] = {"cpu": cpu, "wall": wall, "epochs": epochs,
                                                "scores": scores}
                print(f"{name} seed {seed}: balanced accuracy {statistics.mean(scores):.3f} "
                      f"({', '.join(f'{s:.2f}' for s in scores)}), {cpu:.0f} CPU-s, {wall:.0f} s, "
                      f"{epochs} epochs", flush=True)
    report(results, args)
    return 0


def report(results, args):
    print(f"\nSpecNet's recipe on {args.audio}: {args.folds}-fold cross-validation, seeds "
          f"{' '.join(map(str, args.seeds))}; CPU seconds of the training commands (user + system; "
          "2 cores), clip-level balanced accuracy\n")
    print("| recipe | code | seed | balanced accuracy (mean of folds) | CPU-s | CPU-s/epoch | wall s |")
    print("|---|---|---|---|---|---|---|")
    total = {}
    for name, r in results.items():
        for seed, s in r["seeds"].items():
            print(f"| {name}: {r['recipe']} | {r['code']} | {seed} | "
                  f"{statistics.mean(s['scores']):.3f} | {s['cpu']:.0f} | {s['cpu'] / s['epochs']:.2f} | "
                  f"{s['wall']:.0f} |")
        seeds = r["seeds"].values()
        total[name] = (sum(s["cpu"] for s in seeds), sum(s["epochs"] for s in seeds),
                       [x for s in seeds for x in s["scores"]])
        cpu, epochs, scores = total[name]
        print(f"| {name}: all | | | {statistics.mean(scores):.3f} ± "
              f"{statistics.stdev(scores):.3f} | {cpu:.0f} | {cpu / epochs:.2f} | |")
    old, new = total["old"], total["new"]
    diffs = [b - a for a, b in zip(old[2], new[2])]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    print(f"\nCPU time, old / new: {old[0] / new[0]:.2f}x in total, "
          f"{(old[0] / old[1]) / (new[0] / new[1]):.2f}x per epoch (target >= 3x)")
    print(f"balanced accuracy, new - old, fold by fold: {statistics.mean(diffs):+.3f} ± {se:.3f} "
          f"(standard error over {len(diffs)} folds); one clip of a 10-clip fold is 0.1")
    for name, r in results.items():
        cpu, wall = r["conversion"]
        print(f"conversion ({name}): {cpu:.0f} CPU-s, {wall:.0f} s wall")


if __name__ == "__main__":
    sys.exit(main())
