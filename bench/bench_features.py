"""Benchmark: audio feature extraction (train_mlp.extract_features) with 1 and 2 worker processes.

    python bench/bench_features.py ../shared/gtzan/genres
    python bench/bench_features.py ../shared/gtzan/genres --limit 10 --feature-set extended

The same clips are extracted into a temporary CSV with workers=1, then workers=2, each into a
fresh folder (so a fresh feature cache: every clip is computed). One clip's features and
common.warm_imports() run first, untimed, so librosa's imports and numba's JIT are not counted;
pool start-up is. Prints seconds per clip and the speedup; --target sets a speedup to check
(none is set by default).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `common`

import common  # noqa: E402
import train_mlp  # noqa: E402
from bench_conversion import link_tree, pick_clips  # noqa: E402  (bench/ is on sys.path)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="labeled audio: one sub-folder per genre")
    p.add_argument("--limit", type=int, default=0,
                   help="use this many clips, taken round-robin over the genres (default 0: all)")
    p.add_argument("--feature-set", choices=list(common.FEATURE_SETS), default="standard",
                   help="standard (the GTZAN table's columns) or extended (default standard)")
    p.add_argument("--target", type=float, help="speedup workers 1 / workers 2 to check (default: none)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    clips = pick_clips(args.src, args.limit)
    print(f"bench_features: {len(clips)} clips from {args.src}, feature set {args.feature_set}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    common.audio_features(clips[0][0], args.feature_set)  # untimed warm-up: imports, numba JIT
    common.warm_imports(common.FEATURE_MODULES)

    seconds = {}
    with tempfile.TemporaryDirectory(prefix="bench_features-") as tmp:
        src = link_tree(clips, Path(tmp) / "src")
        for workers in (1, 2):
            out_csv = Path(tmp) / f"workers{workers}" / "features.csv"  # fresh cache beside it
            start = time.perf_counter()
            n, errors = train_mlp.extract_features(src, out_csv, args.feature_set, workers)
            seconds[workers] = (time.perf_counter() - start) / len(clips)
            if n != len(clips):
                print(f"warning: workers={workers} extracted {n} of {len(clips)} ({len(errors)} errors)")

    speedup = seconds[1] / seconds[2]
    print(f"\n{'train_mlp.extract_features':<32}{'s/clip':>10}")
    for workers in (1, 2):
        print(f"{f'workers={workers}':<32}{seconds[workers]:>10.3f}")
    verdict = "(no target set)" if args.target is None else \
        f"(target >= {args.target:g})  {'PASS' if speedup >= args.target else 'FAIL'}"
    print(f"\nworkers 1 / workers 2  {speedup:5.2f}x  {verdict}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
