"""Audio clips -> what the models train on: log-spectrogram PNG images (the study's data
conversion) or a table of audio features; and the data sets (demo, GTZAN).

    python data_conversion.py data/gtzan/Data/genres_original data/images --size 512
    python data_conversion.py data/demo data/mel --size 0 --mel 128 --segment-seconds 3
    python data_conversion.py data/demo --features data/features.csv     # for train_mlp.py
    python data_conversion.py --make-demo data/demo        # synthetic labeled audio, offline
    python data_conversion.py --download data/gtzan        # GTZAN from Kaggle (needs a token)

Each clip: mono at --sr, peak-normalized, STFT (Hann, 2048/512), dB (ref max, 80 dB range),
colormap -> RGB, low frequencies at the bottom, no axes (--mel N: N log-mel bands instead of
the 1025 linear ones). Output mirrors the input tree: OUT/<genre>/<clip>.png (or
<clip>__sNN.png with segments). The PNGs are palette images whose index is the dB level.
The settings are the folder's identity (OUT/conversion.json): other settings into the same
folder are refused, or redo everything with --overwrite. Up-to-date outputs are skipped; bad
files are reported, listed in OUT/errors.csv and skipped.

--features CSV: the columns of the public GTZAN table (MFCC, chroma, spectral centroid /
bandwidth / roll-off, RMS, zero-crossing rate, harmonic and percussive parts, tempo: means and
variances), so our table and Kaggle's features_30_sec.csv are interchangeable. Each clip's row is
cached (common.cache_dir): a rerun computes only new or changed files. A table that exists is
refreshed only when this source extracted it; any other is kept unless --overwrite.
"""
import sys
import time
from pathlib import Path

import numpy as np

import audio
import common
import conversion
import kaggle_client

GTZAN_DATASET = "andradaolteanu/gtzan-dataset-music-genre-classification"
GTZAN_CORRUPT = "jazz.00054.wav"
GENRES = ["blues", "classical", "country", "disco", "hiphop",
          "jazz", "metal", "pop", "reggae", "rock"]


def build_parser():
    bounded = common.bounded
    p = common.ArgumentParser(prog="data_conversion.py", description=__doc__)
    p.add_argument("src", nargs="?", help="labeled audio: one sub-folder per genre (or flat with --labels)")
    p.add_argument("out", nargs="?", help="output folder for the PNG tree")
    p.add_argument("--features", metavar="CSV", help="extract audio features into this table "
                   "instead of images (what train_mlp.py --features reads)")
    p.add_argument("--feature-set", choices=list(audio.FEATURE_SETS), default="standard",
                   help="with --features: standard, the GTZAN table's 57 columns; extended adds "
                        "spectral contrast, onset strength and tonnetz")
    g = p.add_argument_group("conversion")
    g.add_argument("--size", type=bounded(int, minimum=0), default=audio.CONVERSION_DEFAULTS["size"],
                   help="square image side in pixels; 0 keeps the native size (default 512)")
    g.add_argument("--segment-seconds", type=bounded(float, minimum=0),
                   default=audio.CONVERSION_DEFAULTS["segment_seconds"],
                   help="cut clips into S-second segments (default 0: whole clip)")
    g.add_argument("--sr", type=bounded(int, minimum=1000), default=audio.SR,
                   help="sample rate to decode at (default 22050)")
    g.add_argument("--mel", type=bounded(int, minimum=0), default=audio.CONVERSION_DEFAULTS["mel"],
                   help="N log-mel bands instead of the linear STFT (default 0: the study's linear)")
    g.add_argument("--cmap", default=audio.CONVERSION_DEFAULTS["cmap"], help="matplotlib colormap (default magma, as specshow)")
    g.add_argument("--labels", help="CSV id,label for a flat folder of audio (Kaggle style)")
    g.add_argument("--unlabeled", action="store_true", help="src is a flat unlabeled folder (a test "
                   "set); with --make-demo, write one")
    g.add_argument("--workers", type=bounded(int, minimum=1), default=common.default_workers(),
                   help="processes (default: the %(default)s cores)")
    g.add_argument("--overwrite", action="store_true",
                   help="OUT holds images made with other settings: redo them all; --features: "
                        "replace a table this source did not make")
    d = p.add_argument_group("data sets")
    d.add_argument("--make-demo", metavar="DIR", help="write the synthetic demo audio set to DIR and exit")
    d.add_argument("--clips-per-genre", type=bounded(int, minimum=1), default=10,
                   help="demo clips per class (default 10)")
    d.add_argument("--seconds", type=bounded(float, above=0), default=6.0,
                   help="demo clip length in seconds (default 6)")
    d.add_argument("--seed", type=int, default=0, help="demo seed (default 0)")
    d.add_argument("--download", metavar="DIR", help="download GTZAN from Kaggle into DIR and exit")
    return p


# The demo set: ten synthetic "genres" that differ in tempo, pitch range, timbre and noise.
DEMO_STYLES = {  # bpm, base pitch (Hz), harmonics, noise level, note length (beats)
    "blues": (70, 110, 6, 0.02, 1.0), "classical": (60, 440, 2, 0.0, 2.0),
    "country": (110, 196, 4, 0.02, 0.5), "disco": (120, 262, 3, 0.05, 0.25),
    "hiphop": (90, 55, 8, 0.03, 0.5), "jazz": (140, 330, 5, 0.01, 0.33),
    "metal": (180, 82, 12, 0.5, 0.25), "pop": (115, 523, 3, 0.03, 0.5),
    "reggae": (75, 147, 4, 0.04, 1.0), "rock": (150, 165, 9, 0.15, 0.5),
}


def demo_clip(genre, rng, seconds, sr=audio.SR):
    bpm, base, harmonics, noise, note_beats = DEMO_STYLES[genre]
    bpm *= rng.uniform(0.95, 1.05)
    t = np.arange(int(seconds * sr)) / sr
    beat = 60.0 / bpm
    note_len = beat * note_beats
    note_index = (t // note_len).astype(int)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    notes = base * 2 ** (rng.choice(scale, note_index.max() + 1) / 12)
    freq = notes[note_index]
    phase = 2 * np.pi * np.cumsum(freq) / sr
    tone = sum(np.sin(k * phase) / k ** 1.2 for k in range(1, harmonics + 1))
    envelope = np.exp(-3 * (t % note_len) / note_len)
    kick = np.exp(-30 * (t % beat)) * np.sin(2 * np.pi * 60 * (t % beat))
    y = tone * envelope + 0.8 * kick + noise * rng.standard_normal(t.size)
    return (0.9 * y / np.max(np.abs(y))).astype(np.float32)


def make_demo(out, clips_per_genre=10, seconds=6.0, seed=0, sr=audio.SR, flat=False):
    """Write OUT/<genre>/<genre>.NNNNN.wav (flat: OUT/NNNNN.wav, unlabeled, a Kaggle-like test
    set), deterministic for `seed`. Returns the file count."""
    import soundfile
    out = Path(out)
    readme = out / "README.txt"
    if out.exists() and any(out.iterdir()) and not (
            readme.is_file() and readme.read_text().startswith("SYNTHETIC")):
        raise common.SuiteError(f"--make-demo {out}: not empty and not a demo folder; give a new "
                                "or empty folder")
    common.check_output_folder(out, "--make-demo")
    rng = np.random.default_rng(seed)
    for k, genre in enumerate(GENRES):
        for i in range(clips_per_genre):
            y = demo_clip(genre, rng, seconds, sr)
            path = out / f"{i * len(GENRES) + k:05d}.wav" if flat else out / genre / f"{genre}.{i:05d}.wav"
            common.atomic_write(path, lambda f, y=y: soundfile.write(f, y, sr, format="WAV",
                                                                subtype="PCM_16"), mode="wb")
    readme.write_text(
        "SYNTHETIC demo data made by `python data_conversion.py --make-demo`: not music, not "
        f"GTZAN. {clips_per_genre} clips x {len(GENRES)} classes, {seconds:g} s, seed {seed}.\n")
    return clips_per_genre * len(GENRES)


def download_gtzan(target):
    target = Path(target)
    common.check_output_folder(target, "--download")
    api = kaggle_client.kaggle_api()
    print(f"downloading {GTZAN_DATASET} to {target} ...")
    kaggle_client.kaggle_call(f"download of {GTZAN_DATASET}", api.dataset_download_files,
                              GTZAN_DATASET, path=str(target), unzip=True, quiet=False)
    genres = next(iter(sorted(target.rglob("genres_original"))), None)
    print(f"GTZAN audio is in {genres or target}")
    corrupt = list(target.rglob(GTZAN_CORRUPT))
    if corrupt:
        print(f"note: {corrupt[0]} is a known corrupt clip; conversion will skip and record it")
    return 0


IMAGE_FLAGS = ("size", "segment_seconds", "sr", "mel", "cmap", "unlabeled")


def extract(args):
    if not args.src or args.out:
        raise common.SuiteError("--features CSV takes one SRC folder of labeled audio and no OUT "
                                "folder (images and features are made by separate commands)")
    common.refuse_unused(build_parser(), args, IMAGE_FLAGS, "a setting of the images; "
                       "--features reads each whole clip at its own sample rate, as the "
                       "public table was made")
    conversion.check_feature_table(args.features, args.src, args.feature_set, args.overwrite)
    start = time.time()
    n, computed, errors = conversion.extract_features(args.src, args.features, args.feature_set,
                                           args.workers, args.labels)
    print(f"{n} clips -> {args.features} ({computed} extracted, {n - computed} unchanged from "
          f"the cache {common.cache_dir('features')}; {len(errors)} bad) in "
          f"{time.time() - start:.1f} s")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.make_demo:
        n = make_demo(args.make_demo, args.clips_per_genre, args.seconds, args.seed, args.sr,
                      flat=args.unlabeled)
        print(f"wrote {n} SYNTHETIC demo clips to {args.make_demo}")
        return 0
    if args.download:
        return download_gtzan(args.download)
    if args.features:
        return extract(args)
    if not args.src or not args.out:
        raise common.SuiteError("give SRC and OUT folders, or SRC --features CSV (or --make-demo "
                                "DIR / --download DIR)")
    common.refuse_unused(build_parser(), args, ("feature_set",), "needs --features CSV")
    start = time.time()
    settings = {"size": args.size, "sr": args.sr, "segment_seconds": args.segment_seconds,
                "cmap": args.cmap, "mel": args.mel}
    converted, skipped, errors = conversion.convert_folder(
        args.src, args.out, settings, args.workers, args.labels, labeled=not args.unlabeled,
        overwrite=args.overwrite)
    print(f"{converted} clips converted, {skipped} up to date, {len(errors)} bad "
          f"in {time.time() - start:.1f} s -> {args.out}")
    return 0


cli = common.user_errors(main)  # the command line: a SuiteError is one line and an exit code


if __name__ == "__main__":
    sys.exit(cli())
