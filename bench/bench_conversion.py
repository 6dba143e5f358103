"""Benchmark: audio -> spectrogram PNG, the study's matplotlib way vs ours (conversion.convert_clip).

    python bench/bench_conversion.py ../shared/gtzan/genres
    python bench/bench_conversion.py ../shared/gtzan/genres --limit 10 --size 512

Same clips, one run, side by side:
  1. seconds per clip, one process: the study (librosa.load, STFT, amplitude_to_db, specshow on a
     5.12 in figure at dpi 100, savefig) vs conversion.convert_clip; target ratio >= 20.
  2. conversion.convert_folder with workers=1 vs workers=2 into fresh folders; target speedup >= 1.7.
One clip is converted untimed first by each path, and common.warm_imports() (librosa's lazy
submodules, which convert_folder loads before forking workers) runs untimed, so one-time imports
and JIT warm-up are not counted; pool start-up is.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `common`

import numpy as np  # noqa: E402

import audio  # noqa: E402
import common  # noqa: E402
import conversion  # noqa: E402

RATIO_TARGET, SPEEDUP_TARGET = 20.0, 1.7


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="labeled audio: one sub-folder per genre")
    p.add_argument("--limit", type=int, default=0,
                   help="use this many clips, taken round-robin over the genres (default 0: all)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    return p


def pick_clips(src, limit):
    """[(path, genre)], round-robin over genres so a small limit still covers every genre."""
    by_genre = {}
    for path, genre in audio.list_labeled_audio(src):
        by_genre.setdefault(genre, []).append(path)
    queues = [[(p, g) for p in paths] for g, paths in sorted(by_genre.items())]
    picked = [item for row in zip(*queues) for item in row]  # GTZAN: equal counts per genre
    picked += [item for q in queues for item in q if item not in picked]
    return picked[:limit] if limit else picked


def link_tree(clips, root):
    """A labeled folder of symlinks to exactly these clips, for convert_folder."""
    for path, genre in clips:
        (root / genre).mkdir(parents=True, exist_ok=True)
        (root / genre / path.name).symlink_to(path.resolve())
    return root


def study_convert(path, png, size):
    """The study's conversion: librosa + a borderless matplotlib figure saved as PNG."""
    import librosa
    import librosa.display
    import matplotlib.pyplot as plt
    y, sr = librosa.load(path, sr=22050, mono=True)
    db = librosa.amplitude_to_db(np.abs(librosa.stft(y, n_fft=2048, hop_length=512)), ref=np.max)
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.axis("off")
    librosa.display.specshow(db, sr=sr, hop_length=512, ax=ax)
    fig.savefig(png)
    plt.close(fig)


def our_convert(path, out_dir, size):
    settings = {**audio.CONVERSION_DEFAULTS, "size": size}
    _, n_written, _, error = conversion.convert_clip((path, out_dir, settings))
    if error or n_written != 1:
        raise SystemExit(f"convert_clip failed on {path}: {error}")


def seconds_per_clip(convert, clips, out_dir, size):
    start = time.perf_counter()
    for path, genre in clips:
        convert(path, out_dir / genre, size)
    return (time.perf_counter() - start) / len(clips)


def image_size(png):
    from PIL import Image
    with Image.open(png) as im:
        return "x".join(map(str, im.size))


def verdict(ok):
    return "PASS" if ok else "FAIL"


def main(argv=None):
    args = build_parser().parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    clips = pick_clips(args.src, args.limit)
    print(f"bench_conversion: {len(clips)} clips from {args.src}, size {args.size}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    with tempfile.TemporaryDirectory(prefix="bench_conversion-") as tmp:
        tmp = Path(tmp)
        for name in ("study", "ours", "warm_study", "warm_ours"):
            for genre in {g for _, g in clips}:
                (tmp / name / genre).mkdir(parents=True)

        def study(path, out_dir, size):
            study_convert(path, out_dir / f"{path.stem}.png", size)

        first, genre = clips[0]
        study(first, tmp / "warm_study" / genre, args.size)  # untimed warm-up: imports, JIT
        our_convert(first, tmp / "warm_ours" / genre, args.size)
        common.warm_imports()  # what parallel_map imports before forking (librosa submodules, 5-7 s)

        study_s = seconds_per_clip(study, clips, tmp / "study", args.size)
        ours_s = seconds_per_clip(our_convert, clips, tmp / "ours", args.size)
        sizes = (image_size(tmp / "study" / genre / f"{first.stem}.png"),
                 image_size(tmp / "ours" / genre / f"{first.stem}.png"))

        src = link_tree(clips, tmp / "src")
        folder_s = {}
        for workers in (1, 2):
            start = time.perf_counter()
            converted, _, errors = conversion.convert_folder(src, tmp / f"folder{workers}",
                                                         {"size": args.size}, workers)
            folder_s[workers] = (time.perf_counter() - start) / len(clips)
            if converted != len(clips):
                print(f"warning: convert_folder workers={workers} converted {converted} of "
                      f"{len(clips)} ({len(errors)} errors)")

    ratio, speedup = study_s / ours_s, folder_s[1] / folder_s[2]
    print(f"\n{'path':<40}{'s/clip':>10}")
    print(f"{'study: librosa + matplotlib specshow':<40}{study_s:>10.4f}   image {sizes[0]}")
    print(f"{'ours: conversion.convert_clip, in process':<40}{ours_s:>10.4f}   image {sizes[1]}")
    print(f"{'conversion.convert_folder workers=1':<40}{folder_s[1]:>10.4f}")
    print(f"{'conversion.convert_folder workers=2':<40}{folder_s[2]:>10.4f}")
    print(f"\nstudy / ours          {ratio:6.1f}x  (target >= {RATIO_TARGET:g})  "
          f"{verdict(ratio >= RATIO_TARGET)}")
    print(f"workers 1 / workers 2 {speedup:6.2f}x  (target >= {SPEEDUP_TARGET:g})  "
          f"{verdict(speedup >= SPEEDUP_TARGET)}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
