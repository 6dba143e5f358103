"""Audio clips -> log-spectrogram PNG images (the study's data conversion), and demo data.

    python data_conversion.py ../shared/gtzan/genres data/images --size 512
    python data_conversion.py ../shared/gtzan/genres data/seg3 --size 256 --segment-seconds 3
    python data_conversion.py --make-demo data/demo        # synthetic labeled audio, offline
    python data_conversion.py --download data/gtzan        # GTZAN from Kaggle (needs a token)

Each clip: mono at --sr, peak-normalized, STFT (Hann, 2048/512), dB (ref max, 80 dB range),
colormap -> RGB, low frequencies at the bottom, no axes. Output mirrors the input tree:
OUT/<genre>/<clip>.png (or <clip>__sNN.png with segments). Up-to-date outputs are skipped; bad
files are reported, listed in OUT/errors.csv and skipped.
"""
import argparse
import sys
import time
from pathlib import Path

import common

GTZAN_DATASET = "andradaolteanu/gtzan-dataset-music-genre-classification"
GTZAN_CORRUPT = "jazz.00054.wav"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="?", help="labeled audio: one sub-folder per genre (or flat with --labels)")
    p.add_argument("out", nargs="?", help="output folder for the PNG tree")
    g = p.add_argument_group("conversion")
    g.add_argument("--size", type=int, default=512, help="square image side in pixels; 0 keeps 1025 x frames (default 512)")
    g.add_argument("--segment-seconds", type=float, default=0.0, help="cut clips into S-second segments (default 0: whole clip)")
    g.add_argument("--sr", type=int, default=common.SR, help="sample rate to decode at (default 22050)")
    g.add_argument("--cmap", default="magma", help="matplotlib colormap (default magma, as specshow)")
    g.add_argument("--labels", help="CSV id,label for a flat folder of audio (Kaggle style)")
    g.add_argument("--unlabeled", action="store_true", help="src is a flat unlabeled folder (a test set)")
    g.add_argument("--workers", type=int, default=common.default_workers(), help="processes (default: all cores)")
    d = p.add_argument_group("data sets")
    d.add_argument("--make-demo", metavar="DIR", help="write the synthetic demo audio set to DIR and exit")
    d.add_argument("--clips-per-genre", type=int, default=10, help="demo clips per class (default 10)")
    d.add_argument("--seconds", type=float, default=6.0, help="demo clip length in seconds (default 6)")
    d.add_argument("--seed", type=int, default=0, help="demo seed (default 0)")
    d.add_argument("--download", metavar="DIR", help="download GTZAN from Kaggle into DIR and exit")
    return p


def download_gtzan(target):
    api = common.kaggle_api()
    target = Path(target)
    print(f"downloading {GTZAN_DATASET} to {target} ...")
    common.kaggle_call(f"download of {GTZAN_DATASET}", api.dataset_download_files,
                       GTZAN_DATASET, path=str(target), unzip=True, quiet=False)
    genres = next(iter(sorted(target.rglob("genres_original"))), None)
    print(f"GTZAN audio is in {genres or target}")
    corrupt = list(target.rglob(GTZAN_CORRUPT))
    if corrupt:
        print(f"note: {corrupt[0]} is a known corrupt clip; conversion will skip and record it")
    return 0


@common.user_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.make_demo:
        n = common.make_demo(args.make_demo, args.clips_per_genre, args.seconds, args.seed, args.sr)
        print(f"wrote {n} SYNTHETIC demo clips to {args.make_demo}")
        return 0
    if args.download:
        return download_gtzan(args.download)
    if not args.src or not args.out:
        raise common.SuiteError("give SRC and OUT folders (or --make-demo DIR / --download DIR)")
    if args.size < 0 or args.segment_seconds < 0:
        raise common.SuiteError("--size and --segment-seconds must be >= 0")
    start = time.time()
    converted, skipped, errors = common.convert_folder(
        args.src, args.out, args.size, args.sr, args.segment_seconds, args.workers, args.cmap,
        args.labels, labeled=not args.unlabeled)
    print(f"{converted} clips converted, {skipped} up to date, {len(errors)} bad "
          f"in {time.time() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
