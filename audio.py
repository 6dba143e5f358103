"""Audio: finding labeled or unlabeled clips, decoding them to peak-normalized mono, the study's
spectrogram images (computed as arrays) and the GTZAN table's audio features.

Used by data_conversion.py (conversion and extraction), predict.py (the same preprocessing on
test audio), the trainers (clip lists and labels) and the kernels. No torch at import.
"""

import csv
import functools
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from common import BadAudio, SuiteError

AUDIO_EXTS = {".wav", ".au", ".mp3", ".flac", ".ogg", ".m4a", ".aiff", ".aif"}
SR = 22050            # GTZAN's sample rate
N_FFT, HOP = 2048, 512  # the study's STFT frame and hop
TOP_DB = 80.0
SEGMENT_TAG = "__s"    # <clip>__sNN.png
CONVERSION_FILE = "conversion.json"  # beside the images: how they were made, for prediction


def feature_record(csv_path):
    """What data_conversion.py --features recorded beside a table it extracted (source folder,
    feature set, rows), or None for any other table (the public one, a hand-made one)."""
    try:
        record = json.loads(Path(csv_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("feature_set") in FEATURE_SETS else None


# ----------------------------------------------------------------------------------------------
# Audio: finding labeled or unlabeled audio, decoding to peak-normalized mono

def is_audio(path):
    return path.suffix.lower() in AUDIO_EXTS and not path.name.startswith(".")


def check_folder(folder):
    """A folder that exists, or one line saying what the path is instead."""
    folder = Path(folder)
    if folder.is_file():
        raise SuiteError(f"{folder}: a file, not a folder of audio")
    if not folder.is_dir():
        raise SuiteError(f"{folder}: no such folder")
    return folder


def in_subfolders(folder):
    """Sub-folders of folder that hold audio (genre folders)."""
    return [d for d in sorted(Path(folder).iterdir()) if d.is_dir() and not d.name.startswith(".")
            and any(p.is_file() and is_audio(p) for p in d.iterdir())]


def list_audio(folder):
    """Audio files directly in a flat folder (an unlabeled Kaggle test set), sorted."""
    files = sorted(p for p in check_folder(folder).iterdir() if p.is_file() and is_audio(p))
    if not files:
        genres = in_subfolders(folder)
        if genres:
            raise SuiteError(f"{folder}: no audio directly in it, but {len(genres)} sub-folders "
                             f"hold some ({genres[0].name}, ...): a flat folder of audio is "
                             "expected here (a test set, or one of those folders)")
        raise SuiteError(f"{folder}: no audio files ({', '.join(sorted(AUDIO_EXTS))})")
    return files


def normalize_id(file_id):
    """'00042.wav', ' 42 ', '042' -> '42'; 'blues.00042.wav' -> 'blues.00042': comparable keys
    (extension dropped, surrounding space and the zero padding of numeric ids ignored)."""
    text = str(file_id).strip()
    stem = Path(text).stem if Path(text).suffix.lower() in AUDIO_EXTS else text
    return (stem.lstrip("0") or "0") if stem.isdigit() else stem


def read_labels_csv(labels_csv):
    """A Kaggle-style CSV mapping file id -> label: {normalized id: label}."""
    path = Path(labels_csv)
    if not path.is_file():
        raise SuiteError(f"--labels {path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise SuiteError(f"--labels {path}: not a text CSV ({type(e).__name__})") from None
    if len(rows) < 2 or len(rows[0]) < 2:
        raise SuiteError(f"--labels {path}: expected a header and rows of `id,label`")
    labels = {}
    for row in rows[1:]:
        if len(row) < 2 or not row[1].strip():
            continue
        key, label = normalize_id(row[0]), row[1].strip()
        if labels.setdefault(key, label) != label:
            raise SuiteError(f"--labels {path}: id {row[0].strip()!r} is listed with two labels "
                             f"({labels[key]}, {label})")
    return labels


def list_labeled_audio(root, labels_csv=None):
    """[(path, label)] from `root/<label>/*` (classes = sorted sub-folders) or a flat folder + CSV."""
    root = check_folder(root)
    if labels_csv and in_subfolders(root) and not any(is_audio(p) for p in root.iterdir()):
        raise SuiteError(f"{root}: audio in genre sub-folders, which are its labels; leave out "
                         f"--labels (it is for a flat folder of audio)")
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
    unreadable, non-finite, silent or too short file (under one STFT frame)."""
    import librosa
    path = Path(path)
    if not path.is_file():
        raise BadAudio(path, "not a file")
    if path.stat().st_size == 0:
        raise BadAudio(path, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # audioread's deprecation chatter on fallback
            y, sr = librosa.load(path, sr=None, mono=True)
    except Exception as e:
        raise BadAudio(path, f"not readable as audio ({type(e).__name__})") from None
    if y.size == 0:
        raise BadAudio(path, "no samples")
    if not np.all(np.isfinite(y)):
        raise BadAudio(path, "samples are not finite")
    if float(np.max(np.abs(y))) < 1e-6:
        raise BadAudio(path, "silent (all samples zero)")
    if y.size < N_FFT:
        raise BadAudio(path, f"shorter than one {N_FFT}-sample frame ({y.size / sr:.3f} s)")
    return y, sr


def load_audio(path, sr=SR, normalize=True):
    """Decode to mono float32 at `sr`, peak-normalized to +-1 unless not `normalize`. Raises
    BadAudio with a reason."""
    import librosa
    y, file_sr = decode_audio(path)
    if file_sr != sr:
        y = librosa.resample(y, orig_sr=file_sr, target_sr=sr)
    return (y / np.max(np.abs(y)) if normalize else y).astype(np.float32)


def audio_windows(path, sr, seconds):
    """One file -> float32 (windows, sr * seconds): mono at `sr`, not normalized (as PANNs reads
    audio), in non-overlapping windows of `seconds`, the last padded with silence (a clip
    shorter than a window is one window; a tail under half a window is dropped)."""
    y = load_audio(path, sr, normalize=False)
    n = int(round(seconds * sr))
    count = max(1, int(len(y) / n + 0.5))
    y = np.pad(y, (0, max(0, count * n - len(y))))[:count * n]
    return y.reshape(count, n).astype(np.float32)


def segments(y, sr, segment_seconds):
    """Non-overlapping segments of `segment_seconds` (0 = the whole clip); drops the tail."""
    if not segment_seconds:
        return [y]
    n = int(round(segment_seconds * sr))
    return [y[i * n:(i + 1) * n] for i in range(len(y) // n)]


# ----------------------------------------------------------------------------------------------
# Spectrogram images (the study's conversion, computed as arrays). A folder's conversion
# settings are its identity, recorded in conversion.json: prediction repeats them exactly.

CONVERSION_DEFAULTS = {"size": 512, "sr": SR, "segment_seconds": 0.0, "cmap": "magma", "mel": 0}


@functools.lru_cache(maxsize=8)
def colormap_lut(name):
    """256x3 uint8 lookup table of a matplotlib colormap."""
    import matplotlib
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise SuiteError(f"--cmap {name!r}: unknown colormap; try magma, viridis, inferno, gray") from None
    return (cmap(np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def mel_filters(sr, n_mels):
    import librosa
    return librosa.filters.mel(sr=sr, n_fft=N_FFT, n_mels=n_mels, htk=False)


def spectrogram_db(y, sr=SR, mel=0):
    """|STFT| (Hann, 2048/512) in dB relative to the max, floored at -80 dB: (1025, frames);
    = librosa.amplitude_to_db(magnitude, ref=np.max, top_db=80), computed in place (3x faster).
    mel > 0: the power spectrum through `mel` mel bands (Slaney, as librosa's melspectrogram)
    instead, = librosa.power_to_db(mel power, ref=np.max, top_db=80): (mel, frames)."""
    import librosa
    db = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, window="hann"))
    if mel:
        db = mel_filters(sr, mel) @ (db * db)
        np.maximum(db, 1e-10, out=db)  # librosa's amin for power
        np.log10(db, out=db)
        db *= 10.0
    else:
        np.maximum(db, 1e-5, out=db)  # librosa's amin for amplitude
        np.log10(db, out=db)
        db *= 20.0
    db -= db.max()
    return np.maximum(db, -TOP_DB, out=db)


def spectrogram_levels(y, size=512, sr=SR, mel=0):
    """The log spectrogram as uint8 levels (0 = -80 dB, 255 = the max): the colormap index.
    Low frequencies at the bottom, time to the right, resized to size x size (0: native)."""
    from PIL import Image
    db = spectrogram_db(y, sr, mel)
    level = np.clip((db + TOP_DB) * (255.0 / TOP_DB) + 0.5, 0, 255).astype(np.uint8)[::-1]
    if size:
        level = np.asarray(Image.fromarray(level).resize((size, size), Image.BILINEAR,
                                                         reducing_gap=2.0))
    return level


def segment_name(stem, index):
    return f"{stem}{SEGMENT_TAG}{index:02d}"


def clip_id_of(name):
    """File name -> clip id: 'blues.00000__s03.png' -> 'blues.00000'."""
    stem = Path(name).stem if Path(name).suffix.lower() in AUDIO_EXTS | {".png"} else Path(name).name
    return stem.split(SEGMENT_TAG)[0]


def clip_images(path, settings):
    """One audio file -> its images' levels (one per segment), as the settings say."""
    sr, seconds = settings["sr"], settings["segment_seconds"]
    y = load_audio(path, sr)
    parts = segments(y, sr, seconds)
    if not parts:
        raise BadAudio(path, f"shorter than one {seconds:g} s segment ({len(y) / sr:.2f} s)")
    return [spectrogram_levels(part, settings["size"], sr, settings["mel"]) for part in parts]


def read_conversion(root):
    """How the images in root were made (conversion.json); the defaults when absent."""
    path = Path(root) / CONVERSION_FILE
    try:
        recorded = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        raise SuiteError(f"{path}: not readable JSON; convert again with --overwrite") from None
    return {**CONVERSION_DEFAULTS, **{k: v for k, v in recorded.items() if k in CONVERSION_DEFAULTS}}


# ----------------------------------------------------------------------------------------------
# Audio features: the columns of the public GTZAN table (features_30_sec.csv), same meaning;
# data_conversion.py --features extracts the tables, train_mlp.py reads them, prediction
# computes one clip's row.
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


def add_mean_var(out, name, x):
    """out[NAME_mean], out[NAME_var]: how the GTZAN table names a feature's two columns."""
    out[f"{name}_mean"] = float(np.mean(x))
    out[f"{name}_var"] = float(np.var(x))


def add_rows_mean_var(out, name, rows):
    """NAME1_mean, NAME1_var, NAME2_mean, ...: one pair per row (MFCCs, contrast bands)."""
    for i, row in enumerate(rows, 1):
        add_mean_var(out, f"{name}{i}", row)


def _median_filter_rows(x, width):
    """= scipy.ndimage.median_filter(x, size=(1, width), mode="reflect"), the same numbers for
    rows of 3 or more: each row padded as "reflect" pads it, then all rows as one 1-D signal,
    which takes scipy's O(log width) 1-D path (scipy >= 1.15; the n-D path is 10-20x slower on
    a spectrogram). A window centered in a row reaches only that row's padding."""
    from scipy.ndimage import median_filter
    half = width // 2
    padded = np.pad(x, ((0, 0), (half, half)), mode="symmetric")  # numpy's name for "reflect"
    flat = median_filter(padded.ravel(), size=width, mode="reflect")
    return flat.reshape(padded.shape)[:, half:-half]


def _hpss_waveforms(y, stft, magnitude):
    """(harmonic, percussive) samples as old librosa.effects.hpss(y) made them: decompose.hpss
    (kernel 31, power 2, margin 1), then istft without length=, so the last len(y) % hop samples
    stay zero."""
    import librosa
    harmonic_median = _median_filter_rows(magnitude, 31)  # along time
    percussive_median = _median_filter_rows(np.ascontiguousarray(magnitude.T), 31).T  # frequency
    # = librosa.util.softmask(harmonic_median, percussive_median, power=2, split_zeros=True), its
    # steps without its input checks and boolean-indexed copies (3x faster, the same numbers)
    peak = np.maximum(harmonic_median, percussive_median)
    silent = peak < np.finfo(peak.dtype).tiny
    peak[silent] = 1
    mask = (harmonic_median / peak) ** 2
    reference = (percussive_median / peak) ** 2
    np.divide(mask, mask + reference, out=mask, where=~silent)
    mask[silent] = 0.5
    harmonic = librosa.istft(stft * mask, dtype=y.dtype)
    # the two masks sum to 1 and istft(stft) = y: the percussive part is what is left
    percussive = y[:len(harmonic)] - harmonic
    return tuple(librosa.util.fix_length(part, size=len(y)) for part in (harmonic, percussive))


def _zero_crossing_rate(y, frame_length=2048, hop_length=512):
    """= librosa.feature.zero_crossing_rate(y)[0], the same numbers: crossings found once over the
    edge-padded signal and summed per frame, not found again in each of 4 overlapping frames."""
    import librosa
    padded = np.pad(y, frame_length // 2, mode="edge")
    crossings = np.cumsum(librosa.zero_crossings(padded, pad=False))
    starts = np.arange(1 + (len(padded) - frame_length) // hop_length) * hop_length
    # a frame's first sample has no predecessor inside the frame (librosa: pad=False per frame)
    return (crossings[starts + frame_length - 1] - crossings[starts]) / frame_length


def clip_features(y, sr, feature_set="standard"):
    """{column: float} for one clip, librosa defaults at the clip's own rate. The STFT is
    computed once and shared (chroma, spectral, mel for MFCC and tempo, HPSS); every column equals
    what each feature's own librosa call on the waveform gives, to float rounding
    (bench/bench_features.py measures it)."""
    import librosa
    stft = librosa.stft(y, pad_mode=PAD)  # n_fft 2048, hop 512, Hann, centered
    magnitude = np.abs(stft)
    power = magnitude ** 2
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
    out = {"length": float(len(y))}
    add_mean_var(out, "chroma_stft", librosa.feature.chroma_stft(S=power, sr=sr))
    add_mean_var(out, "rms", librosa.feature.rms(y=y, pad_mode=PAD))
    centroid = librosa.feature.spectral_centroid(S=magnitude, sr=sr)
    add_mean_var(out, "spectral_centroid", centroid)
    add_mean_var(out, "spectral_bandwidth",
              librosa.feature.spectral_bandwidth(S=magnitude, sr=sr, centroid=centroid))
    add_mean_var(out, "rolloff", librosa.feature.spectral_rolloff(S=magnitude, sr=sr))
    add_mean_var(out, "zero_crossing_rate", _zero_crossing_rate(y))
    for name, part in zip(("harmony", "perceptr"), _hpss_waveforms(y, stft, magnitude)):
        add_mean_var(out, name, part)
    # = librosa.beat.beat_track(y=y, sr=sr)[0]: median-aggregated onset envelope
    onset_env = librosa.onset.onset_strength(S=log_mel, sr=sr, aggregate=np.median)
    out["tempo"] = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset_env, sr=sr))[0])
    add_rows_mean_var(out, "mfcc", librosa.feature.mfcc(S=log_mel, n_mfcc=20))
    if feature_set == "extended":
        add_rows_mean_var(out, "spectral_contrast", librosa.feature.spectral_contrast(S=magnitude, sr=sr))
        add_mean_var(out, "onset_strength", librosa.onset.onset_strength(S=log_mel, sr=sr))
        add_rows_mean_var(out, "tonnetz", librosa.feature.tonnetz(y=y, sr=sr))
    return {c: out[c] for c in FEATURE_SETS[feature_set]}


def audio_features(path, feature_set="standard"):
    """Features of one file at its own sample rate, without normalization (as the public table).
    Raises BadAudio for bad files (decode_audio)."""
    y, sr = decode_audio(path)
    return clip_features(y, sr, feature_set)
