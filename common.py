"""Shared code of the music-genre suite, in the order the data flows:

constants and errors -> audio I/O -> spectrogram images and demo data -> audio features ->
datasets -> split -> models -> training loop -> metrics -> run folder -> prediction, Kaggle.

The scripts (data_conversion.py, train_*.py, compare.py) are argparse front ends over this file.
`python common.py predict RUN/model.pt AUDIO_DIR` predicts with any saved model.
"""
import argparse
import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------------------------
# Constants and errors

GENRES = ["blues", "classical", "country", "disco", "hiphop",
          "jazz", "metal", "pop", "reggae", "rock"]
AUDIO_EXTS = {".wav", ".au", ".mp3", ".flac", ".ogg", ".m4a", ".aiff", ".aif"}
SR = 22050            # GTZAN's sample rate
N_FFT, HOP = 2048, 512  # the study's STFT frame and hop
TOP_DB = 80.0
SEGMENT_TAG = "__s"    # <clip>__sNN.png
CONVERSION_FILE = "conversion.json"  # beside the images: how they were made, for prediction


class SuiteError(Exception):
    """A user's mistake or bad input: printed as one line, never as a traceback."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


class BadAudio(SuiteError):
    """One unusable audio file; converters record it and go on."""


def user_errors(main):
    """Decorate a script's main(): SuiteError -> one line on stderr and its exit code."""
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv) or 0
        except SuiteError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return wrapper


def atomic_write(path, write_fn, mode="w"):
    """Write via a temp file in the same folder and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            write_fn(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, obj):
    atomic_write(path, lambda f: json.dump(obj, f, indent=2))


def write_csv(path, header, rows):
    def write(f):
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    atomic_write(path, write)


def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


CONVERSION_MODULES = ("load", "stft", "resample", "amplitude_to_db")
FEATURE_MODULES = CONVERSION_MODULES + ("feature", "effects", "beat", "onset", "decompose")


def warm_imports(names=CONVERSION_MODULES):
    """Import the librosa parts a worker will use (librosa imports them lazily), so forked
    workers inherit them instead of each importing them again."""
    import librosa
    import soundfile  # noqa: F401
    for name in names:
        getattr(librosa, name)


def one_thread():
    """Worker initializer: processes already give the parallelism; BLAS/FFT threads would
    oversubscribe the cores (measured 10x slower on 2 cores)."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    os.environ["OMP_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = "1"


def parallel_map(fn, items, workers, desc, warm=CONVERSION_MODULES):
    """Yield fn(item) for each item (in completion order) with a tqdm bar, in `workers` processes."""
    from tqdm import tqdm
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in tqdm(items, desc=desc, unit="file", disable=None):
            yield fn(item)
        return
    import multiprocessing as mp
    warm_imports(warm)
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    workers = min(workers, len(items))
    chunk = max(1, min(8, len(items) // (4 * workers)))  # fewer round trips, still balanced
    with ctx.Pool(workers, initializer=one_thread) as pool:
        for out in tqdm(pool.imap_unordered(fn, items, chunksize=chunk), total=len(items),
                        desc=desc, unit="file", disable=None):
            yield out


# ----------------------------------------------------------------------------------------------
# Audio I/O: finding labeled or unlabeled audio, decoding to peak-normalized mono

def is_audio(path):
    return path.suffix.lower() in AUDIO_EXTS and not path.name.startswith(".")


def list_audio(folder):
    """Audio files directly in a flat folder (an unlabeled Kaggle test set), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SuiteError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_audio(p))
    if not files:
        raise SuiteError(f"{folder}: no audio files ({', '.join(sorted(AUDIO_EXTS))})")
    return files


def read_labels_csv(labels_csv):
    """A Kaggle-style CSV mapping file id -> label: {normalized id: label}."""
    with open(labels_csv, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise SuiteError(f"{labels_csv}: expected a header and rows of `id,label`")
    return {normalize_id(r[0]): r[1].strip() for r in rows[1:] if len(r) >= 2 and r[1].strip()}


def normalize_id(file_id):
    """'00042.wav', '42', 'blues.00042' -> comparable keys (extension dropped, zeros stripped)."""
    stem = Path(str(file_id).strip()).stem if Path(str(file_id)).suffix.lower() in AUDIO_EXTS \
        else str(file_id).strip()
    return stem.lstrip("0") or "0" if stem.isdigit() else stem


def list_labeled_audio(root, labels_csv=None):
    """[(path, label)] from `root/<label>/*` (classes = sorted sub-folders) or a flat folder + CSV."""
    root = Path(root)
    if not root.is_dir():
        raise SuiteError(f"{root}: no such folder")
    if labels_csv:
        labels = read_labels_csv(labels_csv)
        items = [(p, labels.get(normalize_id(p.name))) for p in list_audio(root)]
        missing = [p.name for p, label in items if label is None]
        if missing:
            print(f"warning: {len(missing)} files have no label in {labels_csv} and are left out "
                  f"(first: {missing[0]})", file=sys.stderr)
        items = [(p, label) for p, label in items if label is not None]
        if not items:
            raise SuiteError(f"{root}: no file matches an id in {labels_csv}")
        return items
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        if any(is_audio(p) for p in root.iterdir()):
            raise SuiteError(f"{root}: a flat folder of audio; give --labels CSV or one sub-folder "
                             "per genre")
        raise SuiteError(f"{root}: empty; expected one sub-folder of audio per genre")
    items = []
    for d in class_dirs:
        files = sorted(p for p in d.iterdir() if p.is_file() and is_audio(p))
        if not files:
            raise SuiteError(f"{d}: genre folder without audio files")
        items += [(p, d.name) for p in files]
    return items


def decode_audio(path):
    """(mono float32 samples, the file's own sample rate). Raises BadAudio for a missing, empty,
    unreadable, non-finite or silent file."""
    import librosa
    path = Path(path)
    if not path.is_file():
        raise BadAudio(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise BadAudio(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # audioread's deprecation chatter on fallback
            y, sr = librosa.load(path, sr=None, mono=True)
    except Exception as e:
        raise BadAudio(f"{path}: not readable as audio ({type(e).__name__})") from None
    if y.size == 0:
        raise BadAudio(f"{path}: no samples")
    if not np.all(np.isfinite(y)):
        raise BadAudio(f"{path}: samples are not finite")
    if float(np.max(np.abs(y))) < 1e-6:
        raise BadAudio(f"{path}: silent (all samples zero)")
    return y, sr


def load_audio(path, sr=SR):
    """Decode to mono float32 at `sr`, peak-normalized to +-1. Raises BadAudio with a reason."""
    import librosa
    y, file_sr = decode_audio(path)
    if file_sr != sr:
        y = librosa.resample(y, orig_sr=file_sr, target_sr=sr)
    return (y / np.max(np.abs(y))).astype(np.float32)


def segments(y, sr, segment_seconds):
    """Non-overlapping segments of `segment_seconds` (0 = the whole clip); drops the tail."""
    if not segment_seconds:
        return [y]
    n = int(round(segment_seconds * sr))
    return [y[i * n:(i + 1) * n] for i in range(len(y) // n)]


# ----------------------------------------------------------------------------------------------
# Spectrogram images (the study's conversion, computed as arrays) and the synthetic demo set

@functools.lru_cache(maxsize=8)
def colormap_lut(name):
    """256x3 uint8 lookup table of a matplotlib colormap."""
    import matplotlib
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise SuiteError(f"unknown colormap {name!r}; try magma, viridis, inferno, gray") from None
    return (cmap(np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def spectrogram_db(y):
    """|STFT| (Hann, 2048/512) in dB relative to the max, floored at -80 dB: (1025, frames).
    = librosa.amplitude_to_db(magnitude, ref=np.max, top_db=80), computed in place (3x faster)."""
    import librosa
    db = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, window="hann"))
    np.maximum(db, 1e-5, out=db)  # librosa's amin
    np.log10(db, out=db)
    db *= 20.0
    db -= db.max()
    return np.maximum(db, -TOP_DB, out=db)


def spectrogram_levels(y, size=512):
    """The log spectrogram as uint8 colormap indices (0 = -80 dB, 255 = the max), low
    frequencies at the bottom, time to the right, resized to size x size (0: 1025 x frames)."""
    from PIL import Image
    db = spectrogram_db(y)
    level = np.clip((db + TOP_DB) * (255.0 / TOP_DB) + 0.5, 0, 255).astype(np.uint8)[::-1]
    if size:
        level = np.asarray(Image.fromarray(level).resize((size, size), Image.BILINEAR,
                                                         reducing_gap=2.0))
    return level


def spectrogram_image(y, size=512, cmap="magma"):
    """RGB uint8 image of the log spectrogram, as librosa.display.specshow draws it without axes
    (magma for all-negative dB), computed directly: dB -> 0..255 -> resize -> colormap table."""
    return np.take(colormap_lut(cmap), spectrogram_levels(y, size), axis=0)


def save_spectrogram_png(path, levels, cmap="magma"):
    """An indexed-colour PNG whose palette is the colormap: it decodes to exactly the RGB image
    (every viewer, PIL's .convert("RGB"), torchvision), 2.3x smaller and 4x faster to write
    than 24-bit RGB."""
    from PIL import Image
    image = Image.frombytes("P", levels.shape[::-1], np.ascontiguousarray(levels).tobytes())
    image.putpalette(colormap_lut(cmap).tobytes())
    atomic_write(path, lambda f: image.save(f, format="PNG", compress_level=1), mode="wb")


def segment_name(stem, index):
    return f"{stem}{SEGMENT_TAG}{index:02d}"


def clip_id_of(name):
    """File name -> clip id: 'blues.00000__s03.png' -> 'blues.00000'."""
    stem = Path(name).stem if Path(name).suffix.lower() in AUDIO_EXTS | {".png"} else Path(name).name
    return stem.split(SEGMENT_TAG)[0]


def expected_segment_count(path, sr, segment_seconds):
    """How many segments a clip gives, from its header only (None when unknown)."""
    if not segment_seconds:
        return 1
    try:
        import soundfile
        info = soundfile.info(str(path))
        n_samples = math.ceil(info.frames * sr / info.samplerate)
    except Exception:
        return None
    return n_samples // int(round(segment_seconds * sr))


def conversion_outputs(path, out_dir, sr, segment_seconds):
    """PNG paths a clip will produce, or None when it cannot be known without decoding."""
    count = expected_segment_count(path, sr, segment_seconds)
    if count is None:
        return None
    if not segment_seconds:
        return [out_dir / f"{path.stem}.png"]
    return [out_dir / f"{segment_name(path.stem, i)}.png" for i in range(count)]


def convert_clip(job):
    """Worker: one audio file -> PNG(s). Returns (path, n_written, n_skipped, error or None)."""
    path, out_dir, size, sr, segment_seconds, cmap = job
    outputs = conversion_outputs(path, out_dir, sr, segment_seconds)
    if outputs and all(o.exists() and o.stat().st_mtime >= path.stat().st_mtime for o in outputs):
        return path, 0, len(outputs), None
    try:
        y = load_audio(path, sr)
        parts = segments(y, sr, segment_seconds)
        if not parts:
            raise BadAudio(f"{path}: shorter than one {segment_seconds:g} s segment "
                           f"({len(y) / sr:.2f} s)")
        for i, part in enumerate(parts):
            name = segment_name(path.stem, i) if segment_seconds else path.stem
            save_spectrogram_png(out_dir / f"{name}.png", spectrogram_levels(part, size), cmap)
        return path, len(parts), 0, None
    except BadAudio as e:
        return path, 0, 0, str(e).split(": ", 1)[-1]
    except Exception as e:  # a decoder crash must not stop the other files
        return path, 0, 0, f"{type(e).__name__}: {e}"


def remove_stale_temp_files(out_root):
    for tmp in Path(out_root).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def convert_folder(src, out, size=512, sr=SR, segment_seconds=0.0, workers=None, cmap="magma",
                   labels_csv=None, labeled=True):
    """Convert a labeled tree (or a flat folder with labeled=False) to OUT/<genre>/<name>.png.

    Bad files: a warning line each, a row in OUT/errors.csv, the rest converted.
    Returns (converted files, skipped up-to-date files, errors) and raises when nothing converted.
    """
    colormap_lut(cmap)  # fail fast on a bad name
    out = Path(out)
    if labeled:
        items = list_labeled_audio(src, labels_csv)
        jobs = [(p, out / label, size, sr, segment_seconds, cmap) for p, label in items]
    else:
        jobs = [(p, out, size, sr, segment_seconds, cmap) for p in list_audio(src)]
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    converted, skipped, errors = 0, 0, []
    for path, n_written, n_skipped, error in parallel_map(
            convert_clip, jobs, workers or default_workers(), "convert"):
        if error:
            print(f"warning: skipped {path}: {error}", file=sys.stderr)
            errors.append((str(path), error))
        converted += n_written > 0
        skipped += n_skipped > 0
    write_csv(out / "errors.csv", ["file", "reason"], sorted(errors))
    write_json(out / CONVERSION_FILE, {"size": size, "sr": sr, "segment_seconds": segment_seconds,
                                       "cmap": cmap})
    if converted + skipped == 0:
        raise SuiteError(f"nothing converted: all {len(jobs)} files failed (see {out}/errors.csv)")
    return converted, skipped, errors


# The demo set: ten synthetic "genres" that differ in tempo, pitch range, timbre and noise.
DEMO_STYLES = {  # bpm, base pitch (Hz), harmonics, noise level, note length (beats)
    "blues": (70, 110, 6, 0.02, 1.0), "classical": (60, 440, 2, 0.0, 2.0),
    "country": (110, 196, 4, 0.02, 0.5), "disco": (120, 262, 3, 0.05, 0.25),
    "hiphop": (90, 55, 8, 0.03, 0.5), "jazz": (140, 330, 5, 0.01, 0.33),
    "metal": (180, 82, 12, 0.5, 0.25), "pop": (115, 523, 3, 0.03, 0.5),
    "reggae": (75, 147, 4, 0.04, 1.0), "rock": (150, 165, 9, 0.15, 0.5),
}


def demo_clip(genre, rng, seconds, sr=SR):
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


def make_demo(out, clips_per_genre=10, seconds=6.0, seed=0, sr=SR):
    """Write OUT/<genre>/<genre>.NNNNN.wav, deterministic for `seed`. Returns the file count."""
    import soundfile
    out = Path(out)
    rng = np.random.default_rng(seed)
    for genre in GENRES:
        for i in range(clips_per_genre):
            y = demo_clip(genre, rng, seconds, sr)
            path = out / genre / f"{genre}.{i:05d}.wav"
            atomic_write(path, lambda f: soundfile.write(f, y, sr, format="WAV", subtype="PCM_16"),
                         mode="wb")
    (out / "README.txt").write_text(
        "SYNTHETIC demo data made by `python data_conversion.py --make-demo`: not music, not "
        f"GTZAN. {clips_per_genre} clips x {len(GENRES)} classes, {seconds:g} s, seed {seed}.\n")
    return clips_per_genre * len(GENRES)


# ----------------------------------------------------------------------------------------------
# Audio features: the columns of the public GTZAN table (features_30_sec.csv), same meaning.
# The table was made with librosa < 0.10, whose STFT padded with "reflect"; newer librosa pads
# with zeros, which moves most columns by ~0.1 %. Asking for "reflect" reproduces the table.

PAD = "reflect"
_FEATURE_BASES = ["chroma_stft", "rms", "spectral_centroid", "spectral_bandwidth", "rolloff",
                  "zero_crossing_rate", "harmony", "perceptr"]
FEATURE_COLUMNS = (["length"] + [f"{b}_{s}" for b in _FEATURE_BASES for s in ("mean", "var")]
                   + ["tempo"] + [f"mfcc{i}_{s}" for i in range(1, 21) for s in ("mean", "var")])
EXTENDED_COLUMNS = ([f"spectral_contrast{i}_{s}" for i in range(1, 8) for s in ("mean", "var")]
                    + ["onset_strength_mean", "onset_strength_var"]
                    + [f"tonnetz{i}_{s}" for i in range(1, 7) for s in ("mean", "var")])
FEATURE_SETS = {"standard": FEATURE_COLUMNS, "extended": FEATURE_COLUMNS + EXTENDED_COLUMNS}


def _mean_var(out, name, x):
    out[f"{name}_mean"] = float(np.mean(x))
    out[f"{name}_var"] = float(np.var(x))


def _rows_mean_var(out, name, rows):
    for i, row in enumerate(rows, 1):
        _mean_var(out, f"{name}{i}", row)


def clip_features(y, sr, feature_set="standard"):
    """{column: float} for one clip, librosa defaults at the clip's own rate. The STFT is
    computed once and shared (chroma, spectral, mel for MFCC and tempo, HPSS)."""
    import librosa
    stft = librosa.stft(y, pad_mode=PAD)  # n_fft 2048, hop 512, Hann, centered
    magnitude = np.abs(stft)
    power = magnitude ** 2
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
    out = {"length": float(len(y))}
    _mean_var(out, "chroma_stft", librosa.feature.chroma_stft(S=power, sr=sr))
    _mean_var(out, "rms", librosa.feature.rms(y=y, pad_mode=PAD))
    _mean_var(out, "spectral_centroid", librosa.feature.spectral_centroid(S=magnitude, sr=sr))
    _mean_var(out, "spectral_bandwidth", librosa.feature.spectral_bandwidth(S=magnitude, sr=sr))
    _mean_var(out, "rolloff", librosa.feature.spectral_rolloff(S=magnitude, sr=sr))
    _mean_var(out, "zero_crossing_rate", librosa.feature.zero_crossing_rate(y))
    # as old effects.hpss: istft without length=, so the last len(y) % hop samples stay zero
    harmonic, percussive = librosa.decompose.hpss(stft)
    for name, part in (("harmony", harmonic), ("perceptr", percussive)):
        _mean_var(out, name, librosa.util.fix_length(librosa.istft(part, dtype=y.dtype), size=len(y)))
    # = librosa.beat.beat_track(y=y, sr=sr)[0]: median-aggregated onset envelope
    onset_env = librosa.onset.onset_strength(S=log_mel, sr=sr, aggregate=np.median)
    out["tempo"] = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset_env, sr=sr))[0])
    _rows_mean_var(out, "mfcc", librosa.feature.mfcc(S=log_mel, n_mfcc=20))
    if feature_set == "extended":
        _rows_mean_var(out, "spectral_contrast", librosa.feature.spectral_contrast(S=magnitude, sr=sr))
        _mean_var(out, "onset_strength", librosa.onset.onset_strength(S=log_mel, sr=sr))
        _rows_mean_var(out, "tonnetz", librosa.feature.tonnetz(y=y, sr=sr))
    return {c: out[c] for c in FEATURE_SETS[feature_set]}


def audio_features(path, feature_set="standard"):
    """Features of one file at its own sample rate, without normalization (as the public table).
    Raises BadAudio for bad files (decode_audio) and clips shorter than one STFT frame."""
    y, sr = decode_audio(path)
    if y.size < N_FFT:
        raise BadAudio(f"{path}: shorter than one {N_FFT}-sample frame")
    return clip_features(y, sr, feature_set)


def _feature_job(job):
    """Worker: (path, label, feature_set, cache file) -> (path, label, row or None, error)."""
    path, label, feature_set, cache = job
    try:
        row = audio_features(path, feature_set)
    except BadAudio as e:
        return path, label, None, str(e).split(": ", 1)[-1]
    except Exception as e:
        return path, label, None, f"{type(e).__name__}: {e}"
    write_json(cache, {"stamp": _file_stamp(path), "features": row})
    return path, label, row, None


def _file_stamp(path):
    st = Path(path).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def extract_features(src, out_csv, feature_set="standard", workers=None, labels_csv=None):
    """Labeled audio -> a CSV like the public GTZAN table (filename, features..., label).
    Each clip's features are cached beside the CSV; a rerun computes only new or changed files.
    Returns (rows written, errors)."""
    out_csv = Path(out_csv)
    cache_dir = out_csv.parent / f".{out_csv.stem}-cache" / feature_set
    rows, jobs, errors = {}, [], []
    for path, label in list_labeled_audio(src, labels_csv):
        cache = cache_dir / label / f"{path.name}.json"
        if cache.exists():
            cached = json.loads(cache.read_text())
            if cached.get("stamp") == _file_stamp(path):
                rows[path] = (label, cached["features"])
                continue
        jobs.append((path, label, feature_set, cache))
    for path, label, row, error in parallel_map(_feature_job, jobs, workers or default_workers(),
                                                "features", warm=FEATURE_MODULES):
        if error:
            print(f"warning: skipped {path}: {error}", file=sys.stderr)
            errors.append((str(path), error))
        else:
            rows[path] = (label, row)
    if not rows:
        raise SuiteError(f"nothing extracted: all {len(jobs)} files failed")
    columns = FEATURE_SETS[feature_set]
    write_csv(out_csv, ["filename", *columns, "label"],
              [[p.name, *(row[c] for c in columns), label] for p, (label, row) in sorted(rows.items())])
    write_csv(out_csv.with_name(out_csv.stem + "_errors.csv"), ["file", "reason"], sorted(errors))
    return len(rows), errors


def read_features_csv(path, label_col="label"):
    """(features float32 array, columns, clip ids, labels) from our CSV or the public one.
    Columns that are not numbers (besides filename and the label) are ignored."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such features CSV (make one with train_mlp.py --extract)")
    try:
        with open(path, newline="") as f:
            header, *rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
        raise SuiteError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    missing = [c for c in ("filename", label_col) if c not in header]
    if missing:
        raise SuiteError(f"{path}: missing column(s) {', '.join(missing)} "
                         f"(has {', '.join(header[:5])}, ...)")
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows or any(len(r) != len(header) for r in rows):
        raise SuiteError(f"{path}: no rows, or rows with a different number of cells than the header")
    columns = list(zip(*rows))

    def as_number(cell):
        try:
            return float(cell)
        except ValueError:
            return None if cell.strip() else float("nan")
    numeric, values = [], []
    for name, cells in zip(header, columns):
        if name in ("filename", label_col):
            continue
        numbers = [as_number(c) for c in cells]
        if sum(n is None for n in numbers) > len(numbers) // 2:
            continue  # a text column
        numeric.append(name)
        values.append([float("nan") if n is None else n for n in numbers])
    if not numeric:
        raise SuiteError(f"{path}: no numeric feature columns")
    x = np.array(values, dtype=np.float64).T
    labels = [c.strip() for c in columns[header.index(label_col)]]
    bad = [c for c, col in zip(numeric, x.T) if not np.all(np.isfinite(col))]
    if bad or not all(labels):
        n_rows = int((~np.isfinite(x)).any(axis=1).sum()) + sum(not label for label in labels)
        raise SuiteError(f"{path}: NaN, empty or non-numeric values in column(s) "
                         f"{', '.join((bad or [label_col])[:5])} ({n_rows} rows); fix or drop them")
    clip_ids = [feature_clip_id(name) for name in columns[header.index("filename")]]
    return x.astype(np.float32), numeric, clip_ids, labels


def feature_clip_id(filename):
    """'blues.00000.wav' -> 'blues.00000'; GTZAN's 3-second table 'blues.00000.3.wav' too."""
    stem = clip_id_of(filename)
    head, _, tail = stem.rpartition(".")
    return head if tail.isdigit() and head.rpartition(".")[2].isdigit() else stem


# ----------------------------------------------------------------------------------------------
# Datasets: spectrogram images decoded once into memory as uint8, or features as float32

def list_images(root):
    """(paths, labels, classes) for root/<class>/*.png; classes = sorted sub-folder names."""
    root = Path(root)
    if not root.is_dir():
        raise SuiteError(f"{root}: no such folder (make images with data_conversion.py)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for d in class_dirs:
        files = sorted(d.glob("*.png"))
        paths += files
        labels += [d.name] * len(files)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise SuiteError(f"{root}: need PNG images in at least two class sub-folders, found "
                         f"{len(classes)}")
    return paths, labels, classes


def read_conversion(root):
    """How the images in root were made (conversion.json); defaults when absent."""
    path = Path(root) / CONVERSION_FILE
    info = json.loads(path.read_text()) if path.exists() else {}
    return {"size": info.get("size", 512), "sr": info.get("sr", SR),
            "segment_seconds": info.get("segment_seconds", 0.0), "cmap": info.get("cmap", "magma")}


def decode_image(path, img_size):
    """PNG -> uint8 tensor (3, img_size, img_size)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if img_size and im.size != (img_size, img_size):
                im = im.resize((img_size, img_size), Image.BILINEAR)
            array = np.asarray(im)
    except OSError as e:
        raise SuiteError(f"{path}: unreadable image ({e})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def batch_collate(batch):
    """Datasets here return whole batches from __getitems__; nothing left to collate."""
    return batch


class ArrayDataset:
    """Inputs already in memory (uint8 images, cached features, feature rows) + integer labels.
    __getitems__ returns a whole batch (x, y, index) so an epoch costs one gather per batch."""

    def __init__(self, x, labels, clip_ids, transform=None, rows=None):
        self.x, self.y = x, torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.labels, self.clip_ids, self.transform = np.asarray(labels), list(clip_ids), transform
        self.rows = rows  # positions in x (a view of a larger set without copying it)

    def __len__(self):
        return len(self.y)

    def inputs(self, index):
        return self.x[index if self.rows is None else self.rows[index]]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.inputs(index)
        if self.transform is not None:
            x = torch.stack([self.transform(item) for item in x])
        return x, self.y[index], index

    def subset(self, indices, transform=None):
        """The items at `indices` (a train/val/test part), sharing memory with this set."""
        import copy
        index = torch.as_tensor(list(indices), dtype=torch.long)
        part = copy.copy(self)
        part.rows = index if self.rows is None else self.rows[index]
        part.y, part.labels = self.y[index], self.labels[index.numpy()]
        part.clip_ids, part.transform = [self.clip_ids[i] for i in index.tolist()], transform
        return part

    def __getitem__(self, i):
        x, y, index = self.__getitems__([i])
        return x[0], y[0], index[0]


class LazyImageDataset(ArrayDataset):
    """Decodes PNGs per batch: for image sets larger than the memory budget."""

    def __init__(self, paths, labels, clip_ids, img_size, transform=None):
        super().__init__(None, labels, clip_ids, transform)
        self.paths, self.img_size = list(paths), img_size

    def inputs(self, index):
        rows = index if self.rows is None else self.rows[index]
        return torch.stack([decode_image(self.paths[i], self.img_size) for i in rows.tolist()])


def image_dataset(paths, labels, clip_ids, img_size, budget_mb=4096):
    """Decode every image once into one uint8 tensor when it fits in `budget_mb`, else lazy."""
    mb = len(paths) * 3 * img_size * img_size / 2 ** 20
    if mb > budget_mb:
        print(f"note: {len(paths)} images need {mb:.0f} MiB > --cache-mb {budget_mb}; "
              "decoding per batch instead", file=sys.stderr)
        return LazyImageDataset(paths, labels, clip_ids, img_size)
    x = torch.empty((len(paths), 3, img_size, img_size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        x[i] = decode_image(p, img_size)
    dataset = ArrayDataset(x, labels, clip_ids)
    dataset.paths = list(paths)
    return dataset


def load_image_data(args, img_size):
    """All images of args.data decoded once: (dataset, clip ids, class names, conversion info)."""
    paths, labels, classes = list_images(args.data)
    clip_ids = [clip_id_of(p.name) for p in paths]
    label_index = [classes.index(label) for label in labels]
    dataset = image_dataset(paths, label_index, clip_ids, img_size,
                            budget_mb=getattr(args, "cache_mb", 4096))
    return dataset, clip_ids, classes, read_conversion(args.data)


def image_parts(dataset, indices, augment=False):
    """train/val/test views; RandomRotation(15) on the training part only with augment."""
    rotate = None
    if augment:
        from torchvision.transforms import RandomRotation
        rotate = RandomRotation(15)
    return (dataset.subset(indices["train"], rotate), dataset.subset(indices["val"]),
            dataset.subset(indices["test"]))


# ----------------------------------------------------------------------------------------------
# Split: clip-level, stratified, seeded, shared by every model family through split.json

SPLIT_FILE = "split.json"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def _take_per_class(clip_ids, labels, fraction, rng, one_from=3):
    """Stratified pick of `fraction` of each class's clips; at least one from a class that has
    `one_from` clips or more, so small sets still test every class."""
    by_class = {}
    for clip, label in zip(clip_ids, labels):
        by_class.setdefault(label, []).append(clip)
    picked = []
    for label in sorted(by_class):
        clips = sorted(by_class[label])
        n = int(fraction * len(clips) + 0.5)
        if len(clips) >= one_from:
            n = max(n, 1)
        picked += list(rng.permutation(clips)[:n])
    return set(picked)


def make_split(clip_ids, labels, seed=0, fractions=SPLIT_FRACTIONS):
    """{'train','val','test': sorted clip ids}: a pure function of the clip set and seed, so two
    scripts that see the same clips make the same split even without sharing the file."""
    pairs = sorted(set(zip(clip_ids, labels)))
    clips, labs = [c for c, _ in pairs], [label for _, label in pairs]
    if len(set(clips)) != len(clips):
        raise SuiteError("a clip id appears under two labels; clip file names must be unique")
    rng = np.random.default_rng(seed)
    test = _take_per_class(clips, labs, fractions[2], rng)
    rest = [(c, label) for c, label in zip(clips, labs) if c not in test]
    val = _take_per_class([c for c, _ in rest], [label for _, label in rest],
                          fractions[1] / (1 - fractions[2]), rng, one_from=2)
    train = [c for c, _ in rest if c not in val]
    return {"seed": seed, "train": sorted(train), "val": sorted(val), "test": sorted(test)}


def split_hash(split):
    text = json.dumps({k: split[k] for k in ("train", "val", "test")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_or_make_split(split_path, clip_ids, labels, seed=0, given=False):
    """Read split_path (made there once, then reused); `given` (--split) leaves out unlisted clips."""
    split_path = Path(split_path)
    present = set(clip_ids)
    if split_path.exists():
        try:
            split = json.loads(split_path.read_text())
            listed = set(split["train"]) | set(split["val"]) | set(split["test"])
        except (ValueError, KeyError, TypeError):
            raise SuiteError(f"{split_path}: not a split file (train/val/test lists)") from None
        if not given and listed != present:
            raise SuiteError(
                f"{split_path} lists {len(listed)} clips but the data has {len(present)} "
                f"({len(present - listed)} new, {len(listed - present)} missing): delete it to "
                "make a new split, or pass --split FILE")
        for part in ("train", "val", "test"):
            split[part] = [c for c in split[part] if c in present]
        if not split["train"] or not split["test"]:
            raise SuiteError(f"{split_path}: no train or no test clip of it is in the data")
        return split
    if given:
        raise SuiteError(f"{split_path}: no such split file")
    split = make_split(clip_ids, labels, seed)
    write_json(split_path, split)  # every torchrun rank may get here: same bytes, atomic
    if DIST.main:
        print(f"wrote {split_path}: {len(split['train'])} train, {len(split['val'])} val, "
              f"{len(split['test'])} test clips")
    return split


def kfold_splits(clip_ids, labels, k, seed=0):
    """Stratified K-fold at clip level: each fold's test part, validation from the rest."""
    from sklearn.model_selection import StratifiedKFold
    pairs = sorted(set(zip(clip_ids, labels)))
    clips, labs = np.array([c for c, _ in pairs]), np.array([label for _, label in pairs])
    counts = {label: int((labs == label).sum()) for label in set(labs)}
    if k < 2 or min(counts.values()) < k:
        raise SuiteError(f"--folds {k} needs k >= 2 and at least k clips per class "
                         f"(smallest class has {min(counts.values())})")
    folds = []
    rng = np.random.default_rng(seed)
    for train_idx, test_idx in StratifiedKFold(k, shuffle=True, random_state=seed).split(clips, labs):
        val = _take_per_class(list(clips[train_idx]), list(labs[train_idx]), 1 / 9, rng, one_from=2)
        folds.append({"seed": seed, "train": sorted(c for c in clips[train_idx] if c not in val),
                      "val": sorted(val), "test": sorted(clips[test_idx])})
    return folds


def split_indices(split, clip_ids):
    """Per part, indices of the items (images, segments, rows) whose clip is in that part."""
    where = {c: part for part in ("train", "val", "test") for c in split[part]}
    out = {"train": [], "val": [], "test": []}
    for i, clip in enumerate(clip_ids):
        if clip in where:
            out[where[clip]].append(i)
    return out


def resolve_splits(args, split_dir, clip_ids, labels):
    """[(name suffix, split)] for a run: the shared split, a --split file, or K folds."""
    if getattr(args, "folds", 0) and args.folds > 1:
        return [(f"fold{i + 1}", s) for i, s in enumerate(kfold_splits(clip_ids, labels, args.folds, args.seed))]
    if args.split:
        return [("", load_or_make_split(args.split, clip_ids, labels, args.seed, given=True))]
    return [("", load_or_make_split(split_location(split_dir, args.out), clip_ids, labels, args.seed))]


def split_location(data_dir, runs_dir):
    """DATA/split.json; for a read-only data folder (a shared copy, a Kaggle input) the split is
    kept under the runs folder instead, named after the data folder."""
    data_dir = Path(data_dir)
    if not data_dir.exists() or data_dir.stat().st_mode & 0o222:
        return data_dir / SPLIT_FILE
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return Path(runs_dir) / "splits" / f"{data_dir.name}-{key}.json"


# ----------------------------------------------------------------------------------------------
# Models: every model starts with its own input preprocessing, so model.pt is all predict needs

def build_model(spec):
    """Rebuild a model from the plain-dict spec stored in model.pt."""
    kind = spec["kind"]
    if kind == "cnn":
        return ConvolNeuNet(spec["n_classes"], spec["img_size"])
    if kind == "transfer":
        return build_transfer(spec["arch"], spec["n_classes"], "none", spec["head_dropout"],
                              finetune=spec.get("finetune", False))[0]
    if kind == "mlp":
        return FeatureMLP(spec["n_inputs"], spec["n_components"], spec["hidden"],
                          spec["n_classes"], spec["dropout"])
    raise SuiteError(f"unknown model kind {kind!r} in model file")


class InputNorm(nn.Module):
    """uint8 or float input -> float, scaled to 0..1 for images, then (x - mean) / std."""

    def __init__(self, mean, std, scale=1 / 255):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.scale = scale

    def forward(self, x):
        return (x.float() * self.scale - self.mean) / self.std


class ConvolNeuNet(nn.Module):
    """The study's CNN from scratch: conv 3->32->64->96 (3x3, pad 1, ReLU, 2x2 max-pool each),
    FC ->512->256->128->64->classes with dropout 0.5 after the first and third FC layers.
    fc1 has 96*(s/8)^2*512 weights: 201 M at 512x512 (0.8 GB, ~3.2 GB with Adam)."""

    def __init__(self, n_classes, img_size=512):
        super().__init__()
        if img_size % 8:
            raise SuiteError(f"--img-size {img_size}: must be a multiple of 8")
        self.norm = InputNorm([0.0] * 3, [1.0] * 3)
        layers, width = [], 3
        for out in (32, 64, 96):
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            width = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(96 * (img_size // 8) ** 2, 512), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(512, 256), nn.ReLU(inplace=True),
            nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Linear(64, n_classes))

    def forward(self, x):
        return self.classifier(self.features(self.norm(x)))


def mlp_head(in_features, n_classes, dropout, widths=(512, 256, 128, 64)):
    layers = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, n_classes))


class TransferNet(nn.Module):
    """ImageNet backbone (its classifier replaced by Identity) + a new head. A frozen backbone
    stays in eval mode (BatchNorm statistics untouched), so head(backbone(x)) can be cached."""

    def __init__(self, backbone, head, mean, std, frozen=True):
        super().__init__()
        self.norm, self.backbone, self.head, self.frozen = InputNorm(mean, std), backbone, head, frozen
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x):
        return self.backbone(self.norm(x))

    def forward(self, x):
        return self.head(self.features(x))


def classification_archs():
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


# GoogLeNet and Inception v3 are built as torchvision builds them for their ImageNet weights
# (transform_input on), whatever the weights' source, so model.pt rebuilds the same network;
# their auxiliary heads are dropped (not used by the frozen-backbone study, not pretrained).
AUX_ARCHS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


def build_transfer(arch, n_classes, weights="imagenet", head_dropout=0.5, finetune=False):
    """(TransferNet, input size) for any torchvision classification model by name.
    weights: 'imagenet' (torchvision's enum, downloaded once), 'none', or a state-dict PATH.
    Input size, mean and std are the weights' own transforms' (their crop size; the image is
    resized to it, not cropped: a spectrogram's edges are data)."""
    import torchvision
    archs = classification_archs()
    if arch not in archs:
        raise SuiteError(f"unknown --arch {arch!r}; choose from: {', '.join(archs)}")
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    kwargs = {"transform_input": True} if arch in AUX_ARCHS else {}
    if weights == "imagenet":
        try:
            model = torchvision.models.get_model(arch, weights=enum, **kwargs)
        except Exception as e:
            raise SuiteError(
                f"could not download ImageNet weights for {arch} ({type(e).__name__}: {e}); "
                f"pass --weights PATH (a torchvision state dict for {arch}, e.g. attached to a "
                "Kaggle kernel as a dataset) or --weights none", code=2) from None
    else:
        if arch in AUX_ARCHS:
            kwargs.update(aux_logits=False, init_weights=True)
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
        if weights != "none":
            load_backbone_weights(model, arch, weights)
    for name in AUX_ARCHS.get(arch, ()):
        model.aux_logits = False
        setattr(model, name, None)
    in_features = replace_classifier(model, arch)
    transforms = enum.transforms()
    net = TransferNet(model, mlp_head(in_features, n_classes, head_dropout),
                      transforms.mean, transforms.std, frozen=not finetune)
    return net, transforms.crop_size[0]


def replace_classifier(model, arch):
    """Swap the classifier for Identity; return the feature width it received. For VGG and
    AlexNet the whole FC block goes (the study kept only the convolutional part); otherwise the
    last Linear layer."""
    if arch.startswith(("vgg", "alexnet")):
        in_features = next(m for m in model.classifier if isinstance(m, nn.Linear)).in_features
        model.classifier = nn.Identity()
        return in_features
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SuiteError(f"--arch {arch}: no Linear classifier to replace; pick another model")
    *parents, leaf = linears[-1].split(".")
    owner = model.get_submodule(".".join(parents)) if parents else model
    in_features = getattr(owner, leaf).in_features
    setattr(owner, leaf, nn.Identity())
    return in_features


def load_backbone_weights(model, arch, path):
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"--weights {path}: no such file (or use imagenet / none)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SuiteError(f"--weights {path}: not a loadable state dict ({type(e).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise SuiteError(f"--weights {path}: expected a state dict of {arch}")
    aux = AUX_ARCHS.get(arch, ())  # torchvision's files hold the auxiliary heads: not used here
    state = {k: v for k, v in state.items() if k.split(".")[0] not in aux}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    if wrong:
        raise SuiteError(f"--weights {path} does not fit {arch}: {len(wrong)} tensors of another "
                         f"shape (e.g. {wrong[0]}: {tuple(getattr(state[wrong[0]], 'shape', ()))} here, "
                         f"{tuple(own[wrong[0]].shape)} in {arch})")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys]
    if missing:
        raise SuiteError(f"--weights {path} does not fit {arch}: {len(missing)} missing keys "
                         f"(e.g. {', '.join(missing[:3])}), {len(result.unexpected_keys)} unexpected")
    if result.unexpected_keys:
        print(f"warning: --weights {path}: ignored {len(result.unexpected_keys)} unexpected keys "
              f"(e.g. {', '.join(result.unexpected_keys[:3])})", file=sys.stderr)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
               "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}


def parse_hidden(text):
    """'512:tanh,256:relu' -> [(512, 'tanh'), (256, 'relu')]."""
    layers = []
    for part in filter(None, text.split(",")):
        width, _, act = part.partition(":")
        act = act or "relu"
        if not width.strip().isdigit() or act not in ACTIVATIONS:
            raise SuiteError(f"--hidden {text!r}: expected width:activation items, activations "
                             f"{', '.join(ACTIVATIONS)}")
        layers.append((int(width), act))
    if not layers:
        raise SuiteError("--hidden needs at least one layer")
    return layers


class FeatureMLP(nn.Module):
    """StandardScaler and PCA (fitted with scikit-learn on training rows, stored as buffers)
    followed by Linear/activation/dropout layers."""

    def __init__(self, n_inputs, n_components, hidden, n_classes, dropout=0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("scale", torch.ones(n_inputs))
        self.register_buffer("pca_mean", torch.zeros(n_inputs))
        self.register_buffer("components", torch.eye(n_inputs)[:n_components])
        layers, width = [], n_components
        for out, act in hidden:
            layers += [nn.Linear(width, out), ACTIVATIONS[act]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = out
        self.net = nn.Sequential(*layers, nn.Linear(width, n_classes))

    def set_preprocessing(self, scaler, pca=None):
        self.mean.copy_(torch.as_tensor(scaler.mean_))
        self.scale.copy_(torch.as_tensor(scaler.scale_))
        if pca is not None:
            self.pca_mean.copy_(torch.as_tensor(pca.mean_))
            self.components.copy_(torch.as_tensor(pca.components_))

    def preprocess(self, x):
        return ((x - self.mean) / self.scale - self.pca_mean) @ self.components.T

    def forward(self, x):
        return self.net(self.preprocess(x.float()))


def make_criterion(name, n_classes, smoothing=0.0):
    """Cross entropy, multi-class hinge, or KL divergence to (smoothed) one-hot targets."""
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=smoothing)
    if name == "hinge":
        return nn.MultiMarginLoss()
    if name == "kl":
        kl = nn.KLDivLoss(reduction="batchmean")

        def kl_loss(logits, y):
            target = torch.full_like(logits, smoothing / n_classes, dtype=torch.float32)
            target.scatter_(1, y[:, None], 1 - smoothing + smoothing / n_classes)
            return kl(torch.log_softmax(logits.float(), 1), target)
        return kl_loss
    raise SuiteError(f"unknown --loss {name!r}: ce, hinge or kl")


# ----------------------------------------------------------------------------------------------
# Training loop: one for every trainer (plateau LR, early stopping, AMP on CUDA, DDP, seeds)

def pick_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SuiteError(f"--device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SuiteError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_tools(device):
    """(autocast context factory, GradScaler): real on CUDA, no-ops elsewhere."""
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else contextlib.nullcontext
    return autocast, torch.amp.GradScaler("cuda", enabled=cuda)


class Dist:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))

    @property
    def main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world > 1

    def setup(self, device):
        """Join the process group (nccl on CUDA, gloo on CPU); returns this rank's device."""
        if not self.active:
            return device
        import torch.distributed as dist
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def sum(self, values, device):
        """All-reduce a list of numbers (sum over ranks)."""
        if not self.active:
            return list(values)
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj):
        if not self.active:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def finish(self):
        """Wait for every rank, then leave the process group."""
        import torch.distributed as dist
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


DIST = Dist()


def make_loader(dataset, batch_size, shuffle, seed, workers, device):
    """Batches of this rank's share. The sampler is DistributedSampler even for one process, so
    one process and N processes see the same global batches for the same seed."""
    from torch.utils.data import DataLoader, DistributedSampler
    sampler = DistributedSampler(dataset, num_replicas=DIST.world, rank=DIST.rank,
                                 shuffle=shuffle, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=max(1, batch_size // DIST.world), sampler=sampler,
                      collate_fn=batch_collate, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def train_epoch(model, loader, criterion, optimizer, scaler, autocast, device, desc="train",
                mixup=0.0):
    """One pass over this rank's share; returns loss and accuracy over all ranks. mixup > 0
    trains on convex mixes of pairs of the batch (Beta(mixup, mixup) weights)."""
    from tqdm import tqdm
    model.train()
    total_loss, correct, count, start = 0.0, 0, 0, time.time()
    for x, y, _ in tqdm(loader, desc=desc, leave=False, disable=None if DIST.main else True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if mixup:
            weight = float(np.random.beta(mixup, mixup))
            partner = torch.randperm(len(y), device=device)
            x = weight * x.float() + (1 - weight) * x[partner].float()
        with autocast():
            logits = model(x)
            loss = criterion(logits, y)
            if mixup:
                loss = weight * loss + (1 - weight) * criterion(logits, y[partner])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    total_loss, correct, count = DIST.sum([total_loss, correct, count], device)
    return {"loss": total_loss / count, "acc": correct / count, "seconds": time.time() - start}


@torch.no_grad()
def predict_logits(model, loader, autocast, device, forward=None):
    """Outputs (logits, or `forward`'s features) for the whole dataset in its order, each rank
    computing its share and all of them gathered."""
    model.eval()
    parts = []
    for x, _, index in loader:
        with autocast():
            logits = (forward or model)(x.to(device, non_blocking=True))
        parts.append((index.numpy(), logits.float().cpu().numpy()))
    gathered = [p for rank_parts in DIST.gather(parts) for p in rank_parts]
    n = len(loader.dataset)
    out = np.zeros((n, gathered[0][1].shape[1]), dtype=np.float32)
    for index, logits in gathered:  # DistributedSampler pads with repeats: same rows, same values
        out[index] = logits
    return out


def evaluate(model, loader, criterion, autocast, device):
    """Loss over items; accuracy and balanced accuracy at clip level (segments vote)."""
    dataset = loader.dataset
    logits = predict_logits(model, loader, autocast, device)
    loss = criterion(torch.from_numpy(logits), dataset.y).item()
    scores = clip_scores(logits, dataset.labels, dataset.clip_ids)
    return {"loss": loss, "acc": scores["accuracy"], "balanced_acc": scores["balanced_accuracy"],
            "logits": logits}


def fit(model, train_set, val_set, criterion, args, device, param_groups=None, log=print):
    """Adam + ReduceLROnPlateau(val loss, x0.1, patience 3) + early stopping on validation
    balanced accuracy (patience args.patience) with the best weights restored.
    Returns (history rows, best epoch). Works on one device or under torchrun (DDP)."""
    if not len(train_set) or not len(val_set):
        raise SuiteError(f"{len(train_set)} training and {len(val_set)} validation items: each "
                         "class needs at least 3 clips (one to train, validate and test)")
    model = model.to(device)
    trainable = param_groups or [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=args.lr, weight_decay=getattr(args, "weight_decay", 0.0))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=3)
    autocast, scaler = amp_tools(device)
    net = model
    if DIST.active:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    workers = getattr(args, "workers", 0) if isinstance(train_set, LazyImageDataset) else 0
    train_loader = make_loader(train_set, args.batch_size, True, args.seed, workers, device)
    val_loader = make_loader(val_set, args.batch_size, False, args.seed, workers, device)
    history, best, best_epoch, best_state, elapsed = [], -1.0, 0, None, 0.0
    patience = getattr(args, "patience", 5)
    for epoch in range(1, args.epochs + 1):
        train_loader.sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        tr = train_epoch(net, train_loader, criterion, optimizer, scaler, autocast, device,
                         desc=f"epoch {epoch}/{args.epochs}", mixup=getattr(args, "mixup", 0.0))
        va = evaluate(net, val_loader, criterion, autocast, device)
        elapsed += tr["seconds"]
        scheduler.step(va["loss"])  # every rank sees the same gathered val loss: same decision
        history.append({"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                        "val_loss": va["loss"], "val_acc": va["acc"],
                        "val_balanced_acc": va["balanced_acc"], "lr": lr, "seconds": elapsed})
        improved = va["balanced_acc"] > best
        if improved:
            best, best_epoch = va["balanced_acc"], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if DIST.main:
            log(f"epoch {epoch:3d}  train loss {tr['loss']:.4f} acc {tr['acc']:.3f}  "
                f"val loss {va['loss']:.4f} acc {va['acc']:.3f} bal {va['balanced_acc']:.3f}  "
                f"lr {lr:.1e}  {tr['seconds']:.1f}s{'  *' if improved else ''}")
        if epoch - best_epoch >= patience:
            if DIST.main:
                log(f"early stop: no better validation balanced accuracy for {patience} epochs; "
                    f"best epoch {best_epoch} ({best:.3f})")
            break
    model.load_state_dict(best_state)
    return history, best_epoch


# ----------------------------------------------------------------------------------------------
# Metrics: every figure from scikit-learn on one set of predictions; segments vote per clip

def clip_vote(logits, labels, clip_ids):
    """Mean logits per clip: (clip ids in first-seen order, clip logits, clip labels)."""
    order, rows = [], {}
    for i, clip in enumerate(clip_ids):
        if clip not in rows:
            order.append(clip)
            rows[clip] = []
        rows[clip].append(i)
    clip_logits = np.stack([logits[rows[c]].mean(0) for c in order])
    clip_labels = np.array([labels[rows[c][0]] for c in order])
    return order, clip_logits, clip_labels


def scores(y_true, y_pred, n_classes):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny sets: classes absent from y_true
        return {"accuracy": float(accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, average="macro",
                                           labels=list(range(n_classes)), zero_division=0)),
                "confusion": confusion_matrix(y_true, y_pred, labels=list(range(n_classes))).tolist()}


def clip_scores(logits, labels, clip_ids):
    _, clip_logits, clip_labels = clip_vote(logits, labels, clip_ids)
    return scores(clip_labels, clip_logits.argmax(1), logits.shape[1])


# ----------------------------------------------------------------------------------------------
# Run folder: config.json, history.csv, metrics.json, curves.png, confusion.png, report.txt,
# model.pt; plus the common flags and the driver every trainer runs

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
                   "lr", "seconds"]


def add_common_args(parser, epochs=20, batch_size=32, lr=1e-3, data_help="data folder"):
    d = parser.add_argument_group("data")
    d.add_argument("--data", default="data/images", help=f"{data_help} (default %(default)s)")
    d.add_argument("--split", help="split file to use instead of DATA/split.json; clips it does "
                                   "not list are left out")
    d.add_argument("--folds", type=int, default=0, help="stratified K-fold cross-validation "
                                                        "(mean and std reported)")
    d.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
    o = parser.add_argument_group("optimization")
    o.add_argument("--epochs", type=int, default=epochs, help="maximum epochs (default %(default)s)")
    o.add_argument("--batch-size", type=int, default=batch_size,
                   help="global batch size, split across torchrun ranks (default %(default)s)")
    o.add_argument("--lr", type=float, default=lr, help="Adam learning rate (default %(default)s)")
    o.add_argument("--patience", type=int, default=5,
                   help="early stopping patience in epochs (default %(default)s)")
    o.add_argument("--mixup", type=float, default=0.0,
                   help="mixup: train on mixes of pairs, weights ~ Beta(a, a); 0 = off (default)")
    r = parser.add_argument_group("run")
    r.add_argument("--out", default="runs", help="runs folder (default %(default)s)")
    r.add_argument("--name", help="run name (default script-model-timestamp)")
    r.add_argument("--seed", type=int, default=0, help="seed for split, init and order (default 0)")
    r.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    add_predict_args(parser)


def add_predict_args(parser):
    p = parser.add_argument_group("prediction and Kaggle")
    p.add_argument("--predict", metavar="DIR", help="after training, predict the audio in DIR "
                                                    "and write RUN/submission.csv")
    p.add_argument("--id-col", default="id", help="submission id column (default id: file name)")
    p.add_argument("--label-col", default="class", help="submission label column (default class)")
    p.add_argument("--submit", metavar="COMPETITION", help="send submission.csv to this Kaggle "
                                                           "competition")
    p.add_argument("-m", "--message", help="submission message (default: the run name)")
    p.add_argument("--dry-run", action="store_true", help="show what --submit would send")


def library_versions():
    import sklearn
    import torchvision
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": np.__version__,
                "scikit-learn": sklearn.__version__}
    with contextlib.suppress(Exception):
        import librosa
        versions["librosa"] = librosa.__version__
    return versions


def run_folder(args, script, model_name, suffix=""):
    if not getattr(args, "run_name", None):
        args.run_name = args.name or f"{script}-{model_name}-{datetime.now():%Y%m%d-%H%M%S}"
    path = Path(args.out) / args.run_name
    return path / suffix if suffix else path


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_config(run_dir, args, split, extra=None):
    config = {"args": jsonable({k: v for k, v in vars(args).items() if k != "run_name"}),
              "versions": library_versions(), "split_hash": split_hash(split),
              "split_seed": split.get("seed"), "world_size": DIST.world,
              "command": " ".join(sys.argv)}
    write_json(run_dir / "config.json", {**config, **(extra or {})})


def save_model(path, model, spec, classes, extra=None):
    """A plain dict that torch.load(..., weights_only=True) reads back: spec rebuilds the model
    (build_model), preprocess says how audio becomes its input."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    checkpoint = {"spec": spec, "classes": list(classes), "state_dict": state, **(extra or {})}
    atomic_write(path, lambda f: torch.save(checkpoint, f), mode="wb")


def load_model(path, device="cpu"):
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such model file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(checkpoint["spec"])
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as e:  # torch.load raises many kinds on a foreign or damaged file
        raise SuiteError(f"{path}: not a model.pt of this suite ({type(e).__name__})") from None
    return model.to(device).eval(), checkpoint


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(path, fig):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    pyplot().close(fig)


def plot_curves(path, history):
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.plot(epochs, [h["train_acc"] for h in history], "o-", label="train accuracy")
    ax2.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation accuracy")
    ax2.plot(epochs, [h["val_balanced_acc"] for h in history], "s--", label="validation balanced")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(path, fig)


def plot_confusion(path, confusion, classes, title):
    plt = pyplot()
    cm = np.array(confusion)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    save_figure(path, fig)


def test_metrics(model_name, classes, logits, test_set, train_set, val_set):
    """Clip-level figures (segments vote); segment-level beside them when there are segments."""
    from sklearn.metrics import classification_report
    clips, clip_logits, clip_labels = clip_vote(logits, test_set.labels, test_set.clip_ids)
    predicted = clip_logits.argmax(1)
    s = scores(clip_labels, predicted, len(classes))
    metrics = {"model": model_name, "test_accuracy": s["accuracy"],
               "test_balanced_accuracy": s["balanced_accuracy"], "test_macro_f1": s["macro_f1"],
               "classes": list(classes), "confusion": s["confusion"],
               "n_train": len(set(train_set.clip_ids)), "n_val": len(set(val_set.clip_ids)),
               "n_test": len(clips), "kaggle_score": None}
    if len(test_set) > len(clips):
        seg = scores(test_set.labels, logits.argmax(1), len(classes))
        metrics.update({"segment_test_accuracy": seg["accuracy"],
                        "segment_test_balanced_accuracy": seg["balanced_accuracy"],
                        "segment_test_macro_f1": seg["macro_f1"], "n_test_segments": len(test_set)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = classification_report(clip_labels, predicted, labels=list(range(len(classes))),
                                       target_names=list(classes), zero_division=0)
    predictions = [(c, classes[t], classes[p]) for c, t, p in zip(clips, clip_labels, predicted)]
    return metrics, report, predictions


def write_results(run_dir, metrics, history, report, predictions, title):
    """Everything of a run folder but config.json and model.pt (rank 0 only)."""
    write_csv(run_dir / "history.csv", HISTORY_COLUMNS,
              [[h[c] for c in HISTORY_COLUMNS] for h in history])
    write_csv(run_dir / "predictions.csv", ["clip_id", "true", "predicted"], predictions)
    atomic_write(run_dir / "report.txt", lambda f: f.write(report))
    write_json(run_dir / "metrics.json", metrics)
    if history:
        plot_curves(run_dir / "curves.png", history)
    plot_confusion(run_dir / "confusion.png", metrics["confusion"], metrics["classes"],
                   f"{title}: balanced accuracy {metrics['test_balanced_accuracy']:.3f}")


class Job:
    """What a trainer hands the driver for one split. fit_model/fit_train/fit_val default to the
    full model and its data; the transfer fast path fits the head on cached features instead."""

    def __init__(self, model, spec, train_set, val_set, test_set, criterion=None, fit_model=None,
                 fit_train=None, fit_val=None, param_groups=None, notes=None, estimator=None):
        self.model, self.spec, self.criterion, self.estimator = model, spec, criterion, estimator
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        self.fit_model = model if fit_model is None else fit_model
        self.fit_train = train_set if fit_train is None else fit_train
        self.fit_val = val_set if fit_val is None else fit_val
        self.param_groups, self.notes = param_groups, notes or {}


def run_training(args, script, model_name, clip_ids, labels, classes, split_dir, prepare):
    """The whole life of a training command: for the shared split (or each fold) build the job,
    fit, test, write the run folder; then the K-fold summary, prediction and submission.
    Returns the list of metrics dicts."""
    device = DIST.setup(pick_device(args.device))
    if args.predict and args.folds and args.folds > 1:
        raise SuiteError("--predict with --folds: train without --folds, or predict with one "
                         "fold's model: python common.py predict RUN/foldK/model.pt DIR")
    if DIST.main:
        print(f"{script} {model_name}: {len(set(clip_ids))} clips, {len(clip_ids)} items, "
              f"{len(classes)} classes, device {device}"
              + (f", {DIST.world} processes" if DIST.active else ""))
    results, run_dir = [], None
    for suffix, split in resolve_splits(args, split_dir, clip_ids, labels):
        run_dir = run_folder(args, script, model_name, suffix)
        seed_everything(args.seed)
        start = time.time()
        job = prepare(split_indices(split, clip_ids), device)
        prepare_seconds = time.time() - start  # e.g. the transfer fast path's backbone pass
        if DIST.main:
            print(f"run {run_dir}: {len(job.train_set)} train, {len(job.val_set)} val, "
                  f"{len(job.test_set)} test items")
            write_config(run_dir, args, split, {"model": model_name, "spec": job.spec,
                                                "notes": job.notes})
        seed_everything(args.seed)
        fit_job = fit_estimator if job.estimator is not None else fit_and_test
        history, best_epoch, train_seconds, logits, predict_seconds = fit_job(job, args, device)
        metrics, report, predictions = test_metrics(model_name, classes, logits, job.test_set,
                                                    job.train_set, job.val_set)
        metrics.update({"epochs_run": len(history), "best_epoch": best_epoch,
                        "train_seconds": prepare_seconds + train_seconds,
                        "seconds_to_best": prepare_seconds + (history[best_epoch - 1]["seconds"]
                                                              if history else train_seconds),
                        "predict_seconds_per_clip": predict_seconds / metrics["n_test"],
                        "split_hash": split_hash(split), "data": str(args.data),
                        "run": run_dir.name if not suffix else f"{args.run_name}/{suffix}",
                        **job.notes})
        if suffix:
            metrics.update({"group": args.run_name, "fold": int(suffix[4:]), "folds": args.folds})
        if DIST.main:
            write_results(run_dir, metrics, history, report, predictions, model_name)
            if job.estimator is not None:
                import joblib
                atomic_write(run_dir / "model.joblib", lambda f: joblib.dump(
                    {"estimator": job.estimator, "spec": job.spec, "classes": list(classes)}, f), mode="wb")
            else:
                save_model(run_dir / "model.pt", job.model, job.spec, classes,
                           {"best_epoch": best_epoch, "run": str(run_dir)})
            print(f"test: balanced accuracy {metrics['test_balanced_accuracy']:.3f}, accuracy "
                  f"{metrics['test_accuracy']:.3f}, macro F1 {metrics['test_macro_f1']:.3f} on "
                  f"{metrics['n_test']} clips -> {run_dir}")
        results.append(metrics)
    if DIST.main and len(results) > 1:
        summarize_folds(run_dir.parent, results)
    if DIST.main and args.predict:
        if not (run_dir / "model.pt").exists():
            raise SuiteError("--predict needs a model.pt; scikit-learn baselines save model.joblib")
        predict_and_submit(run_dir / "model.pt", args.predict, args, device)
    DIST.finish()
    return results


def fit_and_test(job, args, device):
    """fit() the job, then the test set's logits from the full model, timed."""
    start = time.time()
    history, best_epoch = fit(job.fit_model, job.fit_train, job.fit_val, job.criterion, args,
                              device, job.param_groups)
    train_seconds = time.time() - start
    autocast, _ = amp_tools(device)
    loader = make_loader(job.test_set, args.batch_size, False, args.seed, 0, device)
    start = time.time()
    logits = predict_logits(job.model.to(device), loader, autocast, device)
    return history, best_epoch, train_seconds, logits, time.time() - start


def fit_estimator(job, args=None, device=None):
    """Fit a scikit-learn model on the training rows; its decision scores stand in for logits."""
    start = time.time()
    job.estimator.fit(job.train_set.inputs(torch.arange(len(job.train_set))).numpy(),
                      job.train_set.labels)
    train_seconds = time.time() - start
    start = time.time()
    x_test = job.test_set.inputs(torch.arange(len(job.test_set))).numpy()
    scores = np.asarray(job.estimator.decision_function(x_test), np.float32)
    if scores.ndim == 1:  # two classes: one score for the second
        scores = np.stack([-scores, scores], axis=1)
    return [], 0, train_seconds, scores, time.time() - start


def summarize_folds(group_dir, results):
    bal = np.array([m["test_balanced_accuracy"] for m in results])
    acc = np.array([m["test_accuracy"] for m in results])
    summary = {"model": results[0]["model"], "folds": len(results),
               "balanced_accuracy_mean": float(bal.mean()), "balanced_accuracy_std": float(bal.std()),
               "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
               "per_fold_balanced_accuracy": bal.tolist()}
    write_json(group_dir / "summary.json", summary)
    print(f"{len(results)}-fold: balanced accuracy {bal.mean():.3f} +- {bal.std():.3f}, "
          f"accuracy {acc.mean():.3f} +- {acc.std():.3f} -> {group_dir}/summary.json")
    return summary


# ----------------------------------------------------------------------------------------------
# Prediction and submission: audio folder -> the model's input -> submission.csv -> Kaggle

def model_inputs(job):
    """Worker: one audio file -> (path, model input array or None, error). Images are made and
    resized exactly as data_conversion + training did; features as train_mlp --extract did."""
    path, preprocess = job
    try:
        if preprocess["type"] == "features":
            row = audio_features(path, preprocess.get("feature_set", "standard"))
            return path, np.array([[row[c] for c in preprocess["columns"]]], np.float32), None
        from PIL import Image
        y = load_audio(path, preprocess["sr"])
        parts = segments(y, preprocess["sr"], preprocess["segment_seconds"])
        if not parts:
            raise BadAudio(f"{path}: shorter than one segment")
        images = []
        for part in parts:
            rgb = spectrogram_image(part, preprocess["size"], preprocess["cmap"])
            img = preprocess["img_size"]
            if rgb.shape[:2] != (img, img):
                rgb = np.asarray(Image.fromarray(rgb).resize((img, img), Image.BILINEAR))
            images.append(rgb.transpose(2, 0, 1))
        return path, np.stack(images), None
    except BadAudio as e:
        return path, None, str(e).split(": ", 1)[-1]
    except Exception as e:
        return path, None, f"{type(e).__name__}: {e}"


def predict_folder(model_path, audio_dir, device="cpu", workers=None, batch_size=32):
    """[(file name, class)] for the audio in audio_dir, the unreadable files, seconds per clip."""
    model, checkpoint = load_model(model_path, device)
    classes, preprocess = checkpoint["classes"], checkpoint["spec"]["preprocess"]
    files = list_audio(audio_dir)
    autocast, _ = amp_tools(device)
    start = time.time()
    rows, bad = [], []
    with torch.no_grad():
        warm = FEATURE_MODULES if preprocess["type"] == "features" else CONVERSION_MODULES
        for path, inputs, error in parallel_map(model_inputs, [(p, preprocess) for p in files],
                                                workers or default_workers(), "predict", warm):
            if error:
                print(f"warning: skipped {path}: {error}", file=sys.stderr)
                bad.append((path.name, error))
                continue
            logits = []
            for i in range(0, len(inputs), batch_size):
                with autocast():
                    logits.append(model(torch.from_numpy(inputs[i:i + batch_size]).to(device)).float())
            rows.append((path.name, classes[int(torch.cat(logits).mean(0).argmax())]))
    if not rows:
        raise SuiteError(f"{audio_dir}: no file could be read ({len(bad)} bad)")
    return sorted(rows), bad, (time.time() - start) / len(rows)


def write_submission(path, rows, id_col="id", label_col="class"):
    write_csv(path, [id_col, label_col], rows)


def kaggle_submit(csv_path, competition, message, dry_run=False):
    """Send a submission through the kaggle package; any failure is one line and exit code 2."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise SuiteError(f"{csv_path}: no such submission file", code=2)
    if dry_run:
        with open(csv_path) as f:
            n = sum(1 for _ in f) - 1
        print(f"dry run: would submit {csv_path} ({n} rows) to {competition} with message "
              f"{message!r}")
        return None
    api = kaggle_api()
    result = kaggle_call(f"submission of {csv_path} to {competition}", api.competition_submit,
                         str(csv_path), message, competition, quiet=True)
    answer = getattr(result, "message", "") or ""
    # The package reports a failed upload in the answer instead of raising.
    if answer == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE or not getattr(result, "ref", 1):
        raise SuiteError(f"Kaggle refused the submission to {competition}: "
                         f"{answer or 'no submission was created'} ({csv_path} is kept)", code=2)
    print(f"submitted {csv_path} to {competition}: {answer or 'ok'}")
    return result


def predict_and_submit(model_path, audio_dir, args, device="cpu", output=None):
    """Predict audio_dir, write submission.csv (default beside model.pt), then --submit it."""
    rows, bad, seconds = predict_folder(model_path, audio_dir, device, args.workers or None)
    out = Path(output) if output else Path(model_path).parent / "submission.csv"
    write_submission(out, rows, args.id_col, args.label_col)
    print(f"wrote {out}: {len(rows)} clips, {len(bad)} unreadable, {seconds:.3f} s per clip")
    if bad:
        write_csv(out.with_name(out.stem + "_errors.csv"), ["file", "reason"], bad)
    if args.submit:
        kaggle_submit(out, args.submit, submission_message(args.message, Path(model_path).parent.name),
                      args.dry_run)
    return out


def names_run(message, run_name):
    """Whether a submission message names the run as a whole word ('cnn-a v2' names cnn-a,
    not cnn-a2 or cnn): how compare.py --kaggle finds a run's score."""
    return re.search(rf"(?<![\w.-]){re.escape(run_name)}(?![\w.-])", message or "") is not None


def submission_message(message, run_name):
    """The user's message (default: the run name), with the run name added when it lacks it."""
    if not message:
        return run_name
    return message if names_run(message, run_name) else f"{message} [{run_name}]"


# ----------------------------------------------------------------------------------------------
# Kaggle: one authenticated client, or one clear line and exit code 2

KAGGLE_HELP = ("Kaggle credentials not found: create a token at https://www.kaggle.com/settings/api "
               "and export KAGGLE_API_TOKEN=... (or save it to ~/.kaggle/access_token, or put "
               "kaggle.json in ~/.kaggle/)")


@functools.lru_cache(maxsize=1)
def kaggle_api_class():
    """The kaggle package's KaggleApi, with one change to how it builds its HTTP client.

    KaggleApi always talks to api.kaggle.com (unless --local), ignoring kagglesdk's own
    KAGGLE_API_ENVIRONMENT (TEST -> http://localhost:7777, what our tests serve), and with
    VERBOSE=1 it prints every request's headers, the token included. Here the environment comes
    from kagglesdk and verbose output is off."""
    captured = io.StringIO()
    try:  # importing kaggle authenticates and prints (with VERBOSE, the token): never shown
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi
            from kagglesdk import KaggleClient
            from kagglesdk.kaggle_env import get_env
    except Exception as e:
        raise SuiteError(f"the kaggle package does not import ({type(e).__name__}: {e}); "
                         "pip install -r requirements.txt", code=2) from None

    class SuiteKaggleApi(KaggleApi):
        def build_kaggle_client(self):
            return KaggleClient(env=get_env(), verbose=False,
                                username=self.config_values.get(self.CONFIG_NAME_USER),
                                password=self.config_values.get(self.CONFIG_NAME_KEY),
                                api_token=self.config_values.get(self.CONFIG_NAME_TOKEN),
                                response_processor=self.get_response_processor())
    return SuiteKaggleApi


def kaggle_error(action, error):
    """One line for a failed Kaggle call: which call, what Kaggle (or the network) said, and
    what to do. Never the token: messages come from status lines and URLs, and are redacted."""
    import requests
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403) and action == "authentication":
        reason = (f"Kaggle rejected the credentials ({status}): the token is invalid or expired; "
                  "create a new one at https://www.kaggle.com/settings/api")
    elif status is not None:
        reason = f"Kaggle answered {status} {getattr(response, 'reason', '') or ''}".rstrip()
        detail = str(error).split(" for url:")[0]
        if detail and str(status) not in detail:
            reason += f" ({detail})"
        if status in (401, 403):
            reason += ": check that this account may do this (joined the competition, accepted "
            reason += "its rules) and that the token is valid"
        elif status >= 500:
            reason += ": Kaggle's side; try again later"
    elif isinstance(error, (requests.ConnectionError, requests.Timeout)):
        reason = ("could not reach Kaggle (no network?); a Kaggle kernel needs its internet "
                  "setting on for this")
    else:
        reason = f"{type(error).__name__}: {error}"
    message = f"{action} failed: {reason}"
    from kagglesdk.kaggle_env import get_access_token_from_env
    token = get_access_token_from_env()[0]
    return SuiteError(message.replace(token, "***") if token else message, code=2)


def kaggle_call(action, fn, *args, **kwargs):
    """fn(*args, **kwargs) with its printing captured and any failure turned into one line."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            return fn(*args, **kwargs)
    except SuiteError:
        raise
    except (Exception, SystemExit) as e:
        raise kaggle_error(action, e) from None


def kaggle_credentials_present():
    """Whether any credentials the kaggle package reads are there (token, key, kaggle.json)."""
    from kagglesdk.kaggle_env import get_access_token_from_env
    folders = [os.environ.get("KAGGLE_CONFIG_DIR", "~/.kaggle"), "~/.config/kaggle"]
    return bool(get_access_token_from_env()[0] or os.environ.get("KAGGLE_KEY")
                or any((Path(d).expanduser() / "kaggle.json").is_file() for d in folders))


def kaggle_api():
    """An authenticated kaggle client, or exit code 2 with one line saying what is wrong:
    no credentials, rejected credentials, no network, or the package itself."""
    api = kaggle_api_class()()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its help text; ours is one line
            api.authenticate()
    except SystemExit:  # the package found no credentials it could use
        if kaggle_credentials_present():
            raise SuiteError("Kaggle did not accept the credentials found (token invalid or "
                             "expired?): create a new one at https://www.kaggle.com/settings/api",
                             code=2) from None
        raise SuiteError(KAGGLE_HELP, code=2) from None
    except Exception as e:
        raise kaggle_error("authentication", e) from None
    return api


def kaggle_submissions(api, competition):
    """Every submission of the user to a competition, newest first: all pages, which the
    package's competition_submissions() cannot give (it drops the next-page token)."""
    from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest

    def list_all():
        submissions, token = [], ""
        with api.build_kaggle_client() as client:
            for _ in range(1000):  # a guard against a server that never stops paging
                request = ApiListSubmissionsRequest()
                request.competition_name, request.page_size = competition, 100
                request.page_token = token
                response = client.competitions.competition_api_client.list_submissions(request)
                submissions += response.submissions or []
                token = response.next_page_token
                if not token:
                    break
        return submissions
    return kaggle_call(f"reading the submissions of {competition}", list_all)


# ----------------------------------------------------------------------------------------------
# `python common.py predict MODEL.pt AUDIO_DIR`: predict with any saved model

def build_predict_parser():
    p = argparse.ArgumentParser(prog="common.py", description="Predict genres with a saved model.")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="model.pt + folder of audio -> submission.csv")
    pr.add_argument("model", help="a run's model.pt")
    pr.add_argument("audio_dir", help="flat folder of audio files (e.g. a Kaggle test set)")
    pr.add_argument("--output", help="CSV path (default: submission.csv beside model.pt)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--workers", type=int, default=default_workers())
    pr.add_argument("--id-col", default="id")
    pr.add_argument("--label-col", default="class")
    pr.add_argument("--submit", metavar="COMPETITION")
    pr.add_argument("-m", "--message")
    pr.add_argument("--dry-run", action="store_true")
    return p


@user_errors
def main(argv=None):
    args = build_predict_parser().parse_args(argv)
    predict_and_submit(args.model, args.audio_dir, args, pick_device(args.device), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
