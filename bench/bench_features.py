"""Benchmark: audio feature extraction, three ways side by side on one core, then 1 vs 2 workers.

    python bench/bench_features.py ../shared/gtzan/genres
    python bench/bench_features.py ../shared/gtzan/genres --limit 10 --feature-set extended

One core (BLAS/FFT and numba limited to one thread, as each worker is): every clip is decoded
once, untimed, then its features are computed, in an order that rotates from clip to clip, by
  librosa   each feature from the waveform with its own librosa call, as the public table was made
  today     the clip_features this benchmark was written against (a frozen copy below)
  new       audio.clip_features
Prints the median seconds per clip of each, CPU (this process's: what other work on shared cores
disturbs least) and wall, and the median over clips of the per-clip ratios of CPU seconds; the
largest deviation of new from today per column, in units of the column's scale (max |today| over
the clips) and of its standard deviation over the clips; and the largest deviation of each way from
the public table (--public-csv, default SRC/../features_30_sec.csv), in the same scale units.

Workers: the same clips through conversion.extract_features with workers=1, then 2, each into a
fresh folder (so a fresh feature cache: every clip is computed); pool start-up is counted.
One clip's features and common.warm_imports() run first, untimed, so librosa's imports and
numba's JIT are not counted. --target sets a workers 1 / workers 2 speedup to check (none by
default).
"""
import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `common`

from bench_conversion import link_tree, pick_clips  # noqa: E402  (bench/ is on sys.path)

import audio  # noqa: E402
import common  # noqa: E402
import conversion  # noqa: E402
from audio import add_mean_var, add_rows_mean_var  # noqa: E402  (the table's column names)

PAD = "reflect"  # the public table's STFT padding (librosa < 0.10)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="labeled audio: one sub-folder per genre")
    p.add_argument("--limit", type=int, default=0,
                   help="use this many clips, taken round-robin over the genres (default 0: all)")
    p.add_argument("--feature-set", choices=list(audio.FEATURE_SETS), default="standard",
                   help="standard (the GTZAN table's columns) or extended (default standard)")
    p.add_argument("--public-csv", type=Path,
                   help="the public table to compare with (default SRC/../features_30_sec.csv)")
    p.add_argument("--target", type=float, help="speedup workers 1 / workers 2 to check (default: none)")
    return p


def librosa_features(y, sr, feature_set="standard"):
    """Each feature from the waveform with its own librosa call (its own STFT), as the public
    table was made, with the old defaults that reproduce it (reflect padding, old HPSS tail)."""
    import librosa
    out = {"length": float(len(y))}
    add_mean_var(out, "chroma_stft", librosa.feature.chroma_stft(y=y, sr=sr, pad_mode=PAD))
    add_mean_var(out, "rms", librosa.feature.rms(y=y, pad_mode=PAD))
    add_mean_var(out, "spectral_centroid", librosa.feature.spectral_centroid(y=y, sr=sr, pad_mode=PAD))
    add_mean_var(out, "spectral_bandwidth", librosa.feature.spectral_bandwidth(y=y, sr=sr, pad_mode=PAD))
    add_mean_var(out, "rolloff", librosa.feature.spectral_rolloff(y=y, sr=sr, pad_mode=PAD))
    add_mean_var(out, "zero_crossing_rate", librosa.feature.zero_crossing_rate(y))
    harmonic, percussive = librosa.decompose.hpss(librosa.stft(y, pad_mode=PAD))  # = old effects.hpss
    for name, part in (("harmony", harmonic), ("perceptr", percussive)):
        add_mean_var(out, name, librosa.util.fix_length(librosa.istft(part, dtype=y.dtype), size=len(y)))
    onset_env = librosa.onset.onset_strength(y=y, sr=sr, aggregate=np.median, pad_mode=PAD)
    out["tempo"] = float(np.atleast_1d(librosa.beat.beat_track(onset_envelope=onset_env, sr=sr)[0])[0])
    add_rows_mean_var(out, "mfcc", librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, pad_mode=PAD))
    if feature_set == "extended":
        add_rows_mean_var(out, "spectral_contrast",
                          librosa.feature.spectral_contrast(y=y, sr=sr, pad_mode=PAD))
        add_mean_var(out, "onset_strength", librosa.onset.onset_strength(y=y, sr=sr, pad_mode=PAD))
        add_rows_mean_var(out, "tonnetz", librosa.feature.tonnetz(y=y, sr=sr))
    return {c: out[c] for c in audio.FEATURE_SETS[feature_set]}


def today_features(y, sr, feature_set="standard"):
    """audio.clip_features before the fast HPSS (commit 54bc878), frozen: the reference."""
    import librosa
    stft = librosa.stft(y, pad_mode=PAD)  # n_fft 2048, hop 512, Hann, centered
    magnitude = np.abs(stft)
    power = magnitude ** 2
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
    out = {"length": float(len(y))}
    add_mean_var(out, "chroma_stft", librosa.feature.chroma_stft(S=power, sr=sr))
    add_mean_var(out, "rms", librosa.feature.rms(y=y, pad_mode=PAD))
    add_mean_var(out, "spectral_centroid", librosa.feature.spectral_centroid(S=magnitude, sr=sr))
    add_mean_var(out, "spectral_bandwidth", librosa.feature.spectral_bandwidth(S=magnitude, sr=sr))
    add_mean_var(out, "rolloff", librosa.feature.spectral_rolloff(S=magnitude, sr=sr))
    add_mean_var(out, "zero_crossing_rate", librosa.feature.zero_crossing_rate(y))
    # as old effects.hpss: istft without length=, so the last len(y) % hop samples stay zero
    harmonic, percussive = librosa.decompose.hpss(stft)
    for name, part in (("harmony", harmonic), ("perceptr", percussive)):
        add_mean_var(out, name, librosa.util.fix_length(librosa.istft(part, dtype=y.dtype), size=len(y)))
    # = librosa.beat.beat_track(y=y, sr=sr)[0]: median-aggregated onset envelope
    onset_env = librosa.onset.onset_strength(S=log_mel, sr=sr, aggregate=np.median)
    out["tempo"] = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset_env, sr=sr))[0])
    add_rows_mean_var(out, "mfcc", librosa.feature.mfcc(S=log_mel, n_mfcc=20))
    if feature_set == "extended":
        add_rows_mean_var(out, "spectral_contrast", librosa.feature.spectral_contrast(S=magnitude, sr=sr))
        add_mean_var(out, "onset_strength", librosa.onset.onset_strength(S=log_mel, sr=sr))
        add_rows_mean_var(out, "tonnetz", librosa.feature.tonnetz(y=y, sr=sr))
    return {c: out[c] for c in audio.FEATURE_SETS[feature_set]}


WAYS = {"librosa": librosa_features, "today": today_features, "new": audio.clip_features}


def one_core_side_by_side(clips, feature_set):
    """({way: [CPU seconds per clip]}, {way: [wall seconds]}, {way: rows, clips x columns})."""
    seconds = {way: [] for way in WAYS}
    wall = {way: [] for way in WAYS}
    rows = {way: [] for way in WAYS}
    for i, (path, _) in enumerate(clips):
        y, sr = audio.decode_audio(path)
        names = list(WAYS)
        for way in names[i % 3:] + names[:i % 3]:  # each way first, second and third in turn
            start, start_wall = time.process_time(), time.perf_counter()
            row = WAYS[way](y, sr, feature_set)
            seconds[way].append(time.process_time() - start)
            wall[way].append(time.perf_counter() - start_wall)
            rows[way].append(list(row.values()))
    return seconds, wall, {way: np.array(r) for way, r in rows.items()}


def worst(deviation, columns):
    i = int(np.nanargmax(deviation))  # NaN: a column the public table lacks (extended)
    return f"{deviation[i]:.1e} ({columns[i]})"


def public_rows(csv_path, clips, columns):
    """The public table's rows for these clips (clips it lacks are NaN), or None without it."""
    if not csv_path.exists():
        return None
    with open(csv_path, newline="") as f:
        table = {r["filename"]: r for r in csv.DictReader(f)}
    return np.array([[float(table[p.name][c]) if p.name in table and c in table[p.name] else np.nan
                      for c in columns] for p, _ in clips])


def main(argv=None):
    args = build_parser().parse_args(argv)
    clips = pick_clips(args.src, args.limit)
    public_csv = args.public_csv or Path(args.src).resolve().parent / "features_30_sec.csv"
    print(f"bench_features: {len(clips)} clips from {args.src}, feature set {args.feature_set}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    audio.audio_features(clips[0][0], args.feature_set)  # untimed warm-up: imports, numba JIT
    common.warm_imports(common.FEATURE_MODULES)

    workers_seconds = {}
    with tempfile.TemporaryDirectory(prefix="bench_features-") as tmp:
        src = link_tree(clips, Path(tmp) / "src")
        for workers in (1, 2):
            out_csv = Path(tmp) / f"workers{workers}" / "features.csv"
            os.environ["SUITE_CACHE"] = str(Path(tmp) / f"cache{workers}")  # a fresh cache each
            start = time.perf_counter()
            n, _, errors = conversion.extract_features(src, out_csv, args.feature_set, workers)
            workers_seconds[workers] = (time.perf_counter() - start) / len(clips)
            if n != len(clips):
                print(f"warning: workers={workers} extracted {n} of {len(clips)} ({len(errors)} errors)")

    common.one_thread()
    y, sr = audio.decode_audio(clips[0][0])
    for fn in WAYS.values():  # untimed warm-up of each way (beat_track's JIT)
        fn(y, sr, args.feature_set)
    seconds, wall, rows = one_core_side_by_side(clips, args.feature_set)
    columns = audio.FEATURE_SETS[args.feature_set]

    print(f"\none core, {len(clips)} clips{'':<8}{'CPU s/clip':>10}{'wall':>8}")
    for way in WAYS:
        print(f"{way:<32}{np.median(seconds[way]):>10.3f}{np.median(wall[way]):>8.3f}")
    for a, b in (("today", "new"), ("librosa", "new"), ("librosa", "today")):
        ratio = np.median(np.array(seconds[a]) / np.array(seconds[b]))
        print(f"{a} / {b}{'':<{24 - len(a) - len(b)}}{ratio:>9.2f}x")

    today = rows["today"]
    scale = np.abs(today).max(axis=0)
    std = today.std(axis=0)
    scale[scale == 0] = std[std == 0] = np.inf  # a constant column (length, on a few clips): 0
    deviation = np.abs(rows["new"] - today).max(axis=0)
    changed = deviation > 0
    print(f"\nnew vs today: {changed.sum()} of {len(columns)} columns differ at all; "
          f"max |new - today| per column, worst: {worst(deviation / scale, columns)} of the "
          f"column's scale, {worst(deviation / std, columns)} of its std")
    public = public_rows(public_csv, clips, columns)
    if public is None:
        print(f"(no {public_csv}: no comparison with the public table)")
    else:
        known = ~np.isnan(public[:, 0])
        print(f"vs the public table ({known.sum()} of {len(clips)} clips in it), max |way - public| "
              f"per column in units of its scale, worst of all columns | of those new changes:")
        for way in WAYS:
            deviation = np.abs(rows[way][known] - public[known]).max(axis=0) / scale
            of_changed = worst(np.where(changed, deviation, np.nan), columns) if changed.any() else "-"
            print(f"  {way:<10}{worst(deviation, columns):<32}{of_changed}")

    speedup = workers_seconds[1] / workers_seconds[2]
    print(f"\n{'conversion.extract_features':<32}{'s/clip':>10}")
    for workers in (1, 2):
        print(f"{f'workers={workers}':<32}{workers_seconds[workers]:>10.3f}")
    verdict = "(no target set)" if args.target is None else \
        f"(target >= {args.target:g})  {'PASS' if speedup >= args.target else 'FAIL'}"
    print(f"\nworkers 1 / workers 2  {speedup:5.2f}x  {verdict}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
