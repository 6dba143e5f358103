"""Shared code of the music-genre suite: what two or more of the scripts need.

Infrastructure first (errors and command lines, files, processes), then in the order the data
flows: audio -> spectrograms -> audio features -> datasets -> split -> models -> training loop
-> metrics -> flags -> run folder -> prediction and submission -> Kaggle.

The scripts (data_conversion.py, train_*.py, predict.py, compare.py) are front ends over this
file and show their own steps; code that only one of them needs lives in that script.
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
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

AUDIO_EXTS = {".wav", ".au", ".mp3", ".flac", ".ogg", ".m4a", ".aiff", ".aif"}
SR = 22050            # GTZAN's sample rate
N_FFT, HOP = 2048, 512  # the study's STFT frame and hop
TOP_DB = 80.0
SEGMENT_TAG = "__s"    # <clip>__sNN.png
CONVERSION_FILE = "conversion.json"  # beside the images: how they were made, for prediction

# ----------------------------------------------------------------------------------------------
# Errors and command lines: a user's mistake is one line on stderr and an exit code, never a
# traceback (1 for bad input, 2 for Kaggle credentials and refusals, 130 for Ctrl-C)


class SuiteError(Exception):
    """A user's mistake or bad input: printed as one line, never as a traceback."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


class NothingToDo(SuiteError):
    """Not a mistake: there is nothing left to do (e.g. --resume of a finished run); exit 0."""

    def __init__(self, message):
        super().__init__(message, code=0)


class BadAudio(SuiteError):
    """One unusable audio file; converters record it and go on."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def line_buffered_output():
    """Every printed line leaves the process when printed, also into a pipe or a file (Kaggle's
    log, `| tee`), where Python would hold it back until its buffer fills or the process ends."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and not stream.isatty():  # not Jupyter's own streams
            stream.reconfigure(line_buffering=True)


def user_errors(main):
    """Decorate a script's main(): SuiteError -> one line on stderr and its exit code; output
    line-buffered."""
    @functools.wraps(main)
    def wrapper(argv=None, *args, **kwargs):
        line_buffered_output()
        try:
            return main(argv, *args, **kwargs) or 0
        except NothingToDo as e:
            print(e)
            return 0
        except SuiteError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors follow the suite's rule: one line naming the flag, exit code 1."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        raise SuiteError(f"{message} (see {self.prog} --help)")


def bounded(kind=int, minimum=None, above=None, below=None):
    """An argparse type: a finite number of `kind`, >= minimum, > above, < below (each optional)."""
    bounds = [f"{words} {b}" for words, b in ((">=", minimum), (">", above), ("<", below))
              if b is not None]

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) \
                or (minimum is not None and value < minimum) \
                or (above is not None and value <= above) or (below is not None and value >= below):
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'} "
                f"{' and '.join(bounds)}, got {text!r}".replace("  ", " "))
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def duration(text):
    """An argparse type: '90s', '45m', '11h30m', '2h', or plain seconds -> seconds (> 0)."""
    match = DURATION.fullmatch(text.strip())
    if text.strip().replace(".", "", 1).isdigit():
        seconds = float(text)
    elif match and any(match.groups()):
        hours, minutes, secs = (float(g or 0) for g in match.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    else:
        seconds = 0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 45m or 11h30m, got {text!r}")
    return seconds


def clock_text(seconds):
    """75 -> '1m15s', 7380 -> '2h03m'."""
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def time_left(deadline):
    """'; 3h10m left before the time limit', or '' without a deadline."""
    return f"; {clock_text(deadline - time.time())} left before the time limit" if deadline else ""


def progress(items, desc, *, total=None, unit="file", deadline=None, leave=True, show=True):
    """Yield the items while showing how far a long stage is: tqdm's bar on a terminal; in a log
    (a pipe, Kaggle's Logs tab, a notebook), where a bar is silent, one line every
    $SUITE_PROGRESS_SECONDS (default 30) with the count, the time so far, an estimate of the time
    to go and the time left before `deadline`."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if not show:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm
        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=leave)
        return
    every = float(os.environ.get("SUITE_PROGRESS_SECONDS") or 30)
    units = unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")
    start = last = time.time()
    for done, item in enumerate(items, 1):
        yield item
        now = time.time()
        if now - last >= every:
            last = now
            to_go = (f", about {clock_text((now - start) / done * (total - done))} to go"
                     if total else "")
            print(f"{desc}: {done}{f'/{total}' if total else ''} {units}, "
                  f"{clock_text(now - start)}{to_go}{time_left(deadline)}", flush=True)


# ----------------------------------------------------------------------------------------------
# Files: written whole or not at all; output folders checked before any work starts

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


def writable(folder):
    """Whether this process may write into an existing folder: permission and a read-write mount
    (os.access), and mode bits that let someone write (a folder made read-only with chmod stays
    read-only here even for root, who os.access lets write anywhere)."""
    folder = Path(folder)
    return (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
            and bool(folder.stat().st_mode & 0o222))


def check_output_folder(folder, what):
    """Fail now, in one line naming the flag, unless `folder` exists writable or can be made."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise SuiteError(f"{what} {folder}: {existing} is a file, not a folder")
    if not writable(existing):
        raise SuiteError(f"{what} {folder}: {existing} is not writable")
    return folder


def cache_dir(kind):
    """One place for what the suite can recompute (per-clip audio features, a frozen backbone's
    outputs): $SUITE_CACHE/KIND, else ~/.cache/music-genre-suite/KIND ($XDG_CACHE_HOME moves
    ~/.cache). Deleting it costs time, never results."""
    root = os.environ.get("SUITE_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "music-genre-suite"
    return Path(root) / kind


def feature_record(csv_path):
    """What data_conversion.py --features recorded beside a table it extracted (source folder,
    feature set, rows), or None for any other table (the public one, a hand-made one)."""
    try:
        record = json.loads(Path(csv_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("feature_set") in FEATURE_SETS else None


# ----------------------------------------------------------------------------------------------
# Processes: torchrun's ranks, worker pools for audio

@dataclass(frozen=True)
class Dist:
    """The processes of one training: torchrun's (Dist.from_env()), or one process (Dist()).
    A trainer makes it once and passes it to what depends on it (split, loaders, fit)."""
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    active: bool = False  # launched by torchrun, even with one process: DDP and a process group

    @classmethod
    def from_env(cls):
        env = os.environ
        return cls(int(env.get("WORLD_SIZE", 1)), int(env.get("RANK", 0)),
                   int(env.get("LOCAL_RANK", 0)), "WORLD_SIZE" in env)

    @property
    def main(self):
        return self.rank == 0

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

    def log(self, line):
        """print on rank 0 only (a warning to stderr)."""
        if self.main:
            print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)

    def finish(self):
        """Wait for every rank, then leave the process group."""
        import torch.distributed as dist
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def check_torchvision():
    """torchvision imports with this torch: a pair installed from two indexes does not
    ('operator torchvision::nms does not exist'). One line before any work, not a traceback
    minutes into it."""
    import importlib
    try:
        importlib.import_module("torchvision")  # a plain import would be an unused name
    except Exception as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise SuiteError(f"torch {torch.__version__} and the installed torchvision do not work "
                         f"together ({first}); reinstall both from one index, e.g. pip install "
                         "--force-reinstall torch torchvision --index-url "
                         "https://download.pytorch.org/whl/cpu") from None


def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


CONVERSION_MODULES = ("load", "stft", "resample", "amplitude_to_db", "filters")
FEATURE_MODULES = CONVERSION_MODULES + ("feature", "effects", "beat", "onset", "decompose")


def warm_imports(names=CONVERSION_MODULES):
    """Import the librosa parts a worker will use (librosa imports them lazily), so forked
    workers inherit them instead of each importing them again."""
    import importlib
    import librosa
    importlib.import_module("soundfile")
    for name in names:
        getattr(librosa, name)


def one_thread(parent=None):
    """Worker initializer: processes already give the parallelism; BLAS/FFT/numba threads would
    oversubscribe the cores (measured 10x slower on 2 cores). Ctrl-C is the parent's to handle:
    a worker ignores it (else each prints its own traceback). A worker whose parent dies (kill -9)
    ends quietly at once (Linux's parent-death signal), instead of each failing on the broken
    pipe with a traceback."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None and sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before that was set
            os._exit(0)
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    with contextlib.suppress(Exception):  # numba's pool is sized at import: set it, not the env
        import numba
        numba.set_num_threads(1)


def parallel_map(fn, items, workers, desc, warm=CONVERSION_MODULES, deadline=None):
    """Yield fn(item) for each item (in completion order), showing progress, in `workers`
    processes (1: in this one)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in progress(items, desc, deadline=deadline):
            yield fn(item)
        return
    import multiprocessing as mp
    warm_imports(warm)
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    workers = min(workers, len(items))
    chunk = max(1, min(8, len(items) // (4 * workers)))  # fewer round trips, still balanced
    with ctx.Pool(workers, initializer=one_thread, initargs=(os.getpid(),)) as pool:
        yield from progress(pool.imap_unordered(fn, items, chunksize=chunk), desc,
                            total=len(items), deadline=deadline)


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


def _mean_var(out, name, x):
    out[f"{name}_mean"] = float(np.mean(x))
    out[f"{name}_var"] = float(np.var(x))


def _rows_mean_var(out, name, rows):
    for i, row in enumerate(rows, 1):
        _mean_var(out, f"{name}{i}", row)


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
    _mean_var(out, "chroma_stft", librosa.feature.chroma_stft(S=power, sr=sr))
    _mean_var(out, "rms", librosa.feature.rms(y=y, pad_mode=PAD))
    centroid = librosa.feature.spectral_centroid(S=magnitude, sr=sr)
    _mean_var(out, "spectral_centroid", centroid)
    _mean_var(out, "spectral_bandwidth",
              librosa.feature.spectral_bandwidth(S=magnitude, sr=sr, centroid=centroid))
    _mean_var(out, "rolloff", librosa.feature.spectral_rolloff(S=magnitude, sr=sr))
    _mean_var(out, "zero_crossing_rate", _zero_crossing_rate(y))
    for name, part in zip(("harmony", "perceptr"), _hpss_waveforms(y, stft, magnitude)):
        _mean_var(out, name, part)
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
    Raises BadAudio for bad files (decode_audio)."""
    y, sr = decode_audio(path)
    return clip_features(y, sr, feature_set)


# ----------------------------------------------------------------------------------------------
# Datasets: spectrogram images decoded once into memory as uint8, or features as float32

def list_images(root):
    """(paths, labels, classes) for root/<class>/*.png; classes = sorted sub-folder names."""
    root = Path(root)
    if not root.is_dir():
        raise SuiteError(f"--data {root}: no such folder (make images with data_conversion.py)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for d in class_dirs:
        files = sorted(d.glob("*.png"))
        paths += files
        labels += [d.name] * len(files)
    classes = sorted(set(labels))
    if len(classes) < 2 and any(is_audio(p) for d in class_dirs for p in d.iterdir()):
        raise SuiteError(f"--data {root}: audio, not images: make them with python "
                         f"data_conversion.py {root} IMAGES (or train --arch cnn14 on the audio)")
    if len(classes) < 2:
        raise SuiteError(f"--data {root}: need PNG images in at least two class sub-folders, "
                         f"found {len(classes)}")
    return paths, labels, classes


def decode_image(path, img_size, channels="rgb"):
    """PNG -> uint8 tensor (3 or 1, img_size, img_size): the RGB picture (the study's input), or
    with channels="levels" the palette index of our PNGs, which is the dB level itself."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if channels == "levels":
                if im.mode != "P":
                    raise SuiteError(f"{path}: not a palette PNG of data_conversion.py, so it has "
                                     "no dB levels; use --input rgb")
                im = Image.fromarray(np.asarray(im))  # the index as a grey image
            else:
                im = im.convert("RGB")
            if img_size and im.size != (img_size, img_size):
                im = im.resize((img_size, img_size), Image.BILINEAR)
            array = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:  # what PIL raises on damaged files
        raise SuiteError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def batch_collate(batch):
    """Datasets here return whole batches from __getitems__; nothing left to collate."""
    return batch


class ArrayDataset:
    """Inputs already in memory (uint8 images, cached features, feature rows, waveforms) +
    integer labels; a part (train, val, test) is a view of them (rows), sharing their memory.
    __getitems__ returns a whole batch (x, y, index) for a DataLoader; Batches gathers batches
    where the model is, without one."""

    def __init__(self, x, labels, clip_ids, rows=None):
        self.x, self.y = x, torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.labels, self.clip_ids = np.asarray(labels), list(clip_ids)
        self.rows = rows  # positions in x (a view of a larger set without copying it)
        self.device_copies = {}  # device -> x there; one dict for the set and all its parts

    def __len__(self):
        return len(self.y)

    @property
    def holds_images(self):
        return self.x is not None and self.x.dim() == 4

    def x_on(self, device):
        """x on the device, copied there once for the set and all its parts (train, val and
        test hold one copy between them)."""
        if str(device) not in self.device_copies:
            self.device_copies[str(device)] = self.x.to(device)
        return self.device_copies[str(device)]

    def inputs(self, index):
        return self.x[index if self.rows is None else self.rows[index]]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs(index), self.y[index], index

    def subset(self, indices):
        """The items at `indices` (a train/val/test part), sharing memory with this set."""
        import copy
        index = torch.as_tensor(list(indices), dtype=torch.long)
        part = copy.copy(self)
        part.rows = index if self.rows is None else self.rows[index]
        part.y, part.labels = self.y[index], self.labels[index.numpy()]
        part.clip_ids = [self.clip_ids[i] for i in index.tolist()]
        return part

    def __getitem__(self, i):
        x, y, index = self.__getitems__([i])
        return x[0], y[0], index[0]


class LazyImageDataset(ArrayDataset):
    """Decodes PNGs per batch: for image sets larger than the memory budget. An image that
    cannot be decoded then (in a loader worker) is named in a warning and read as silence."""

    def __init__(self, paths, labels, clip_ids, img_size, channels, shape):
        super().__init__(None, labels, clip_ids)
        self.paths, self.img_size, self.channels, self.shape = list(paths), img_size, channels, shape

    def decode(self, path):
        try:
            return decode_image(path, self.img_size, self.channels)
        except SuiteError as e:
            print(f"warning: {e}; read as silence", file=sys.stderr)
            return torch.zeros(self.shape, dtype=torch.uint8)

    def inputs(self, index):
        rows = index if self.rows is None else self.rows[index]
        return torch.stack([self.decode(self.paths[i]) for i in rows.tolist()])

    holds_images = True


@dataclass
class ImageData:
    dataset: ArrayDataset   # every image, its label index and clip id
    classes: list
    conversion: dict        # conversion.json: how audio became these images


def native_size(paths):
    """(height, width) of the first readable image."""
    from PIL import Image
    for path in paths:
        with contextlib.suppress(Exception), Image.open(path) as im:
            return im.size[::-1]
    raise SuiteError(f"{Path(paths[0]).parent.parent}: no readable image")


def load_image_data(data_dir, img_size, channels="rgb", cache_mb=4096):
    """Every image of data_dir decoded once into one uint8 tensor when it fits in cache_mb
    (else decoded per batch), resized to img_size x img_size (0: their own size, which must
    then be the same for all). Unreadable images are left out with a warning."""
    from PIL import Image
    paths, labels, classes = list_images(data_dir)
    conversion = read_conversion(data_dir)
    if channels == "levels":
        with Image.open(paths[0]) as im:
            if im.mode != "P":
                raise SuiteError(f"--input levels reads the palette PNGs of data_conversion.py; "
                                 f"{paths[0]} is {im.mode}: use --input rgb")
    shape = (1 if channels == "levels" else 3, *((img_size, img_size) if img_size else native_size(paths)))
    mb = len(paths) * math.prod(shape) / 2 ** 20
    lazy = mb > cache_mb
    if lazy:
        print(f"note: {len(paths)} images need {mb:.0f} MiB > --cache-mb {cache_mb}; "
              "decoding per batch instead", file=sys.stderr)
    x = None if lazy else torch.empty((len(paths), *shape), dtype=torch.uint8)
    good = []
    for i, path in enumerate(progress(paths, "images")):
        try:
            if lazy:
                with Image.open(path) as im:  # whole file, checksums: cheap, no decompression
                    im.verify()
            else:
                image = decode_image(path, img_size, channels)
        except SuiteError as e:
            print(f"warning: skipped {e}", file=sys.stderr)
            continue
        except Exception as e:
            print(f"warning: skipped {path}: unreadable image ({type(e).__name__})", file=sys.stderr)
            continue
        if not lazy:
            if image.shape != x.shape[1:]:
                raise SuiteError(f"--data {data_dir}: images differ in size ({path.name}: "
                                 f"{tuple(image.shape[1:])}, others {shape[1:]}); give --img-size N")
            x[len(good)] = image
        good.append(i)
    if len(good) < len(paths) and len({labels[i] for i in good}) < 2:
        raise SuiteError(f"--data {data_dir}: too few readable images ({len(good)} of {len(paths)})")
    paths = [paths[i] for i in good]
    label_index = [classes.index(labels[i]) for i in good]
    clip_ids = [clip_id_of(p.name) for p in paths]
    if lazy:
        dataset = LazyImageDataset(paths, label_index, clip_ids, img_size, channels, shape)
    else:
        dataset = ArrayDataset(x[:len(good)], label_index, clip_ids)
        dataset.paths = paths
    return ImageData(dataset, classes, conversion)


def item_uniforms(seed, epoch, items, count):
    """(len(items), count) uniform numbers in [0, 1), a pure function of (seed, epoch, item,
    k): splitmix64 of that counter, computed on the items' device. An item is augmented alike
    whatever its batch, device or torchrun rank, and after --resume; a batch's draws cost a few
    tensor operations, not a generator per item."""
    def shift(z, n):  # logical: torch's >> on int64 keeps the sign
        return (z >> n) & ((1 << (64 - n)) - 1)

    def signed(c):
        return c - (1 << 64) if c >= 1 << 63 else c
    key = ((seed * 1_000_003 + epoch) * 1_000_003) % (1 << 62)
    z = (items.to(torch.int64)[:, None] + key) * count \
        + torch.arange(count, device=items.device) + signed(0x9E3779B97F4A7C15)
    z = (z ^ shift(z, 30)) * signed(0xBF58476D1CE4E5B9)
    z = (z ^ shift(z, 27)) * signed(0x94D049BB133111EB)
    z = z ^ shift(z, 31)
    return shift(z, 40).to(torch.float32) / float(1 << 24)


class SpecAugment:
    """SpecAugment on a batch of spectrogram images (uint8, n x C x freq x time), on their
    device: per image two frequency masks and two time masks of up to 15 % each (set to level
    0, i.e. -80 dB), then a random circular shift in time."""

    def __init__(self, masks=2, max_fraction=0.15):
        self.masks, self.max_fraction = masks, max_fraction
        self.draws = 4 * masks + 1  # uniforms per image

    def __call__(self, images, uniforms):
        n, channels, height, width = images.shape
        keep, u = torch.ones(n, height, width, dtype=torch.bool, device=images.device), iter(uniforms.T)
        for axis, size in ((1, height), (2, width)):
            position = torch.arange(size, device=images.device)
            for _ in range(self.masks):
                length = (next(u) * (int(size * self.max_fraction) + 1)).long()
                start = (next(u) * (size - length + 1)).long()
                band = (position >= start[:, None]) & (position < (start + length)[:, None])
                keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
        masked = images * keep[:, None]
        shift = (next(u) * width).long()  # out[..., t] = in[..., t - shift], as torch.roll
        index = (torch.arange(width, device=images.device) - shift[:, None]) % width
        return masked.gather(3, index[:, None, None, :].expand(n, channels, height, width))


class Rotate:
    """The study's augmentation: torchvision's RandomRotation(15) (nearest, no expansion, black
    corners), each image's angle from its uniform."""
    draws = 1

    def __init__(self, degrees=15.0):
        self.degrees = degrees

    def __call__(self, images, uniforms):
        from torchvision.transforms import functional
        angles = (uniforms[:, 0] * 2 - 1) * self.degrees
        return torch.stack([functional.rotate(image, float(angle))
                            for image, angle in zip(images, angles.tolist())])


AUGMENTATIONS = {"none": None, "rotate": Rotate(), "specaugment": SpecAugment()}


def split_parts(dataset, indices):
    """train/val/test views of a dataset (images, audio windows, feature rows)."""
    return tuple(dataset.subset(indices[part]) for part in ("train", "val", "test"))


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
        twice = sorted({c for c in clips if clips.count(c) > 1})
        raise SuiteError(f"clip {twice[0]} appears under two labels ({len(twice)} such clips); "
                         "clip file names must be unique across genres")
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


def read_split(split_path):
    try:
        split = json.loads(Path(split_path).read_text())
        parts = [set(split[p]) for p in ("train", "val", "test")]
    except (OSError, ValueError, KeyError, TypeError):
        raise SuiteError(f"{split_path}: not a split file (JSON with train/val/test lists)") from None
    twice = (parts[0] & parts[1]) | (parts[0] & parts[2]) | (parts[1] & parts[2])
    if twice:
        raise SuiteError(f"{split_path}: clip {sorted(twice)[0]} is in two parts "
                         f"({len(twice)} such clips)")
    return split


def load_or_make_split(split_path, clip_ids, labels, seed=0, given=False, log=print,
                       resuming=False):
    """Read split_path (made there once, then reused); `given` (--split) leaves out unlisted clips."""
    split_path = Path(split_path)
    present = set(clip_ids)
    if split_path.exists():
        split = read_split(split_path)
        listed = set(split["train"]) | set(split["val"]) | set(split["test"])
        if not given and listed != present:
            changed = (f"{len(present - listed)} new, {len(listed - present)} missing, e.g. "
                       f"{sorted((present - listed) or (listed - present))[0]}")
            if resuming:  # the run's split is its identity: another one is another run
                raise SuiteError(f"the data changed since the run started ({changed}): put it "
                                 "back as it was to resume, or start a new run")
            raise SuiteError(
                f"{split_path} lists {len(listed)} clips but the data has {len(present)} "
                f"({changed}): delete it to make a new split, or pass --split FILE")
        unknown = sorted(listed - present)
        if unknown:
            log(f"warning: {split_path.name}: {len(unknown)} of its {len(listed)} clips are not in "
                f"the data and are left out (first: {unknown[0]})")
        for part in ("train", "val", "test"):
            split[part] = [c for c in split[part] if c in present]
        if not split["train"] or not split["test"]:
            raise SuiteError(f"{split_path}: no train or no test clip of it is in the data")
        return split
    if given:
        raise SuiteError(f"--split {split_path}: no such split file")
    split = make_split(clip_ids, labels, seed)
    write_json(split_path, split)  # every torchrun rank may get here: same bytes, atomic
    log(f"wrote {split_path}: {len(split['train'])} train, {len(split['val'])} val, "
        f"{len(split['test'])} test clips")
    return split


def kfold_splits(clip_ids, labels, k, seed=0):
    """Stratified K-fold at clip level: each fold's test part, validation from the rest."""
    from sklearn.model_selection import StratifiedKFold
    pairs = sorted(set(zip(clip_ids, labels)))
    clips, labs = np.array([c for c, _ in pairs]), np.array([label for _, label in pairs])
    counts = {label: int((labs == label).sum()) for label in set(labs)}
    if min(counts.values()) < k:
        raise SuiteError(f"--folds {k} needs at least {k} clips per class (smallest class has "
                         f"{min(counts.values())})")
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


def split_location(data_dir, runs_dir):
    """DATA/split.json, shared by every model family trained on that data; kept under the runs
    folder instead (named after the data folder) when the data folder is not ours to write:
    read-only, someone else's, a Kaggle input."""
    data_dir = Path(data_dir)
    beside = data_dir / SPLIT_FILE
    if beside.exists() or writable(data_dir):
        return beside
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return Path(runs_dir) / "splits" / f"{data_dir.name}-{key}.json"


# Splits shipped with the suite, by name (--split NAME): GTZAN's artist-filtered lists (Kereliuk,
# Sturm and Larsen 2015; 443 / 197 / 290 clips), the honest way to report GTZAN accuracy.
NAMED_SPLITS = {"gtzan-filtered": Path(__file__).resolve().parent / "splits" / "gtzan-filtered.json"}


def split_file(name):
    """--split NAME or FILE -> the file."""
    return NAMED_SPLITS.get(name, Path(name))


def split_label(args, split=None):
    """What every report says about where its test clips come from. A random split names the seed
    it was made with: a split.json made earlier is reused whatever this run's --seed."""
    if args.folds:
        return f"{args.folds}-fold (seed {args.seed})"
    if args.split:
        return args.split if args.split in NAMED_SPLITS else f"file {Path(args.split).name}"
    return f"random 80/10/10 (seed {(split or {}).get('seed', args.seed)})"


def resolve_splits(args, clip_ids, labels, split_dir, log=print):
    """[(part name, split)]: the shared split (DATA/split.json, or --split NAME|FILE), or the K
    folds; each with training, validation and test clips."""
    if args.folds:
        splits = [(f"fold{i}", s) for i, s in
                  enumerate(kfold_splits(clip_ids, labels, args.folds, args.seed), 1)]
    else:
        path = split_file(args.split) if args.split else split_location(split_dir, args.out)
        splits = [("", load_or_make_split(path, clip_ids, labels, args.seed, bool(args.split), log,
                                          resuming=bool(args.resume)))]
    for name, split in splits:
        indices = split_indices(split, clip_ids)
        empty = [part for part in ("train", "val", "test") if not indices[part]]
        if empty:
            raise SuiteError(f"{name or 'the split'} has no {' or '.join(empty)} clips: each "
                             "class needs at least 3 clips (to train, validate and test)")
    return splits
# ----------------------------------------------------------------------------------------------
# Models: every model starts with its own input preprocessing, so model.pt is all predict needs

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

    def __init__(self, n_classes, img_size=512, in_channels=3):
        super().__init__()
        if not img_size or img_size % 8:
            raise SuiteError(f"--img-size {img_size}: ConvolNeuNet needs square images whose side "
                             "is a multiple of 8 (e.g. 256 or 512)")
        self.norm = InputNorm([0.0] * in_channels, [1.0] * in_channels)
        layers, width = [], in_channels
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


class SpecNet(nn.Module):
    """A small modern CNN for spectrograms (0.29 M weights): four blocks of two 3x3 conv +
    batch norm + ReLU and a 2x2 max-pool (16, 32, 64, 128 channels), then the mean and the
    max over frequency and time (any input size), dropout 0.3 and one linear layer."""

    def __init__(self, n_classes, img_size=0, in_channels=1):
        super().__init__()
        self.norm = InputNorm([0.5] * in_channels, [0.25] * in_channels)
        layers, width = [], in_channels
        for out in (16, 32, 64, 128):
            for _ in range(2):
                layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                width = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * width, n_classes))

    def forward(self, x):
        maps = self.features(self.norm(x)).flatten(2)
        return self.classifier(torch.cat([maps.mean(2), maps.amax(2)], dim=1))


CNN_MODELS = {"convolneunet": ConvolNeuNet, "specnet": SpecNet}


def mlp_head(in_features, n_classes, dropout, widths=(512, 256, 128, 64)):
    layers = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, n_classes))


class TransferNet(nn.Module):
    """ImageNet backbone (its classifier replaced by Identity), or CNN14 on waveforms (no mean and
    std), + a new head. A frozen backbone stays in eval mode (BatchNorm statistics untouched), so
    head(backbone(x)) can be cached."""

    def __init__(self, backbone, head, mean=None, std=None, frozen=True):
        super().__init__()
        self.norm = nn.Identity() if mean is None else InputNorm(mean, std)
        self.backbone, self.head, self.frozen = backbone, head, frozen
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


def transfer_network(arch, n_classes, head_dropout=0.5, finetune=False, spec_augment=False):
    """(TransferNet with random weights, input size) for any torchvision classification model by
    name, built as torchvision builds it for its ImageNet weights, or for PANNs' CNN14 ('cnn14').
    train_transfer.py loads the pretrained weights into it; model.pt rebuilds it. Input size:
    for torchvision models an image side, and mean and std, from the weights' own transforms
    (their crop size; the image is resized to it, not cropped: a spectrogram's edges are data);
    for cnn14 the sample rate (CNN14_SR) of the (batch, samples) float32 waveforms it takes."""
    if arch == "cnn14":
        net = TransferNet(Cnn14(spec_augment), mlp_head(2048, n_classes, head_dropout),
                          frozen=not finetune)
        return net, CNN14_SR
    import torchvision
    archs = classification_archs()
    if arch not in archs:
        raise SuiteError(f"unknown --arch {arch!r}; choose from: {', '.join(archs)}, cnn14")
    kwargs = {"transform_input": True, "aux_logits": False, "init_weights": True} \
        if arch in AUX_ARCHS else {}
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    for name in AUX_ARCHS.get(arch, ()):
        model.aux_logits = False
        setattr(model, name, None)
    in_features, classifier = replace_classifier(model, arch)
    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    net = TransferNet(model, mlp_head(in_features, n_classes, head_dropout),
                      transforms.mean, transforms.std, frozen=not finetune)
    net.replaced_classifier = classifier  # its pretrained weights have no place here
    return net, transforms.crop_size[0]


def replace_classifier(model, arch):
    """Swap the classifier for Identity; return (the feature width it received, its name in the
    model). For VGG and AlexNet the whole FC block goes (the study kept only the convolutional
    part); otherwise the last Linear layer."""
    if arch.startswith(("vgg", "alexnet")):
        in_features = next(m for m in model.classifier if isinstance(m, nn.Linear)).in_features
        model.classifier = nn.Identity()
        return in_features, "classifier"
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SuiteError(f"--arch {arch}: no Linear classifier to replace; pick another model")
    *parents, leaf = linears[-1].split(".")
    owner = model.get_submodule(".".join(parents)) if parents else model
    in_features = getattr(owner, leaf).in_features
    setattr(owner, leaf, nn.Identity())
    return in_features, linears[-1]


# PANNs' CNN14 (Kong et al. 2020), pretrained on AudioSet at 32 kHz: waveform -> 2048-d embedding.
# Names follow the published state dict, so its file loads as it is (train_transfer.py); its front
# end (the STFT as conv1d kernels, the mel matrix) is part of that file, used from it and frozen.
CNN14_SR = 32000


class Cnn14Block(nn.Module):
    """(3x3 conv without bias -> BatchNorm -> ReLU) x 2 -> average pooling."""

    def __init__(self, in_channels, out_channels, pool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(out_channels), nn.BatchNorm2d(out_channels)
        self.pool = pool
        nn.init.xavier_uniform_(self.conv1.weight)  # PANNs' initialisation
        nn.init.xavier_uniform_(self.conv2.weight)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return nn.functional.avg_pool2d(x, self.pool)


class Cnn14(nn.Module):
    """PANNs' CNN14 up to its embedding: (batch, samples) float32 at 32 kHz -> (batch, 2048).
    Log-mel: STFT 1024 / hop 320 (periodic Hann, centered, reflect padding), power, 64 Slaney mel
    bands 50-14000 Hz, 10*log10 (ref 1, amin 1e-10, no top_db). Then bn0 over the mel bands, six
    conv blocks (64 ... 2048 channels, 2x2 average pooling, 1x1 after the last, dropout 0.2 after
    each), mean over frequency, max + mean over time, dropout 0.5, fc1 + ReLU and dropout 0.5 (the
    published embedding, which PANNs fine-tunes from). spec_augment: PANNs' training-time
    SpecAugmentation after bn0 (2 time stripes < 64 frames, 2 frequency stripes < 8 bands), off
    by default. Mixup is the training loop's."""

    def __init__(self, spec_augment=False):
        super().__init__()
        import librosa
        n_fft, hop = 1024, 320
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * (k * n % n_fft) / n_fft  # mod first: exact for large k * n
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        stft = nn.ModuleDict({part: nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
                              for part in ("conv_real", "conv_imag")})
        stft.conv_real.weight.data = (torch.cos(angle) * window).float()[:, None]
        stft.conv_imag.weight.data = (-torch.sin(angle) * window).float()[:, None]
        self.spectrogram_extractor = nn.ModuleDict({"stft": stft})
        mel = librosa.filters.mel(sr=CNN14_SR, n_fft=n_fft, n_mels=64, fmin=50, fmax=14000)
        self.logmel_extractor = nn.ParameterDict({"melW": nn.Parameter(torch.from_numpy(mel.T))})
        self.spectrogram_extractor.requires_grad_(False)
        self.logmel_extractor.requires_grad_(False)
        self.bn0 = nn.BatchNorm2d(64)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(1, 7):
            setattr(self, f"conv_block{i}", Cnn14Block(widths[i - 1], widths[i], 2 if i < 6 else 1))
        self.fc1 = nn.Linear(2048, 2048)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        self.spec_augment = spec_augment

    def logmel(self, waveform):
        """(batch, samples) -> (batch, 1, frames, 64) dB, in float32 even under autocast: a
        full-scale tone's power overflows float16."""
        stft = self.spectrogram_extractor.stft
        with torch.autocast(waveform.device.type, enabled=False):
            x = nn.functional.pad(waveform.float()[:, None], (512, 512), mode="reflect")
            power = stft.conv_real(x) ** 2 + stft.conv_imag(x) ** 2      # (batch, 513, frames)
            mel = power.transpose(1, 2) @ self.logmel_extractor.melW     # (batch, frames, 64)
            return 10 * torch.log10(mel.clamp(min=1e-10))[:, None]

    def forward(self, waveform):
        x = self.bn0(self.logmel(waveform).transpose(1, 3)).transpose(1, 3)
        if self.spec_augment and self.training:
            x = drop_stripes(drop_stripes(x, 2, 64, 2), 3, 8, 2)
        for i in range(1, 7):
            x = nn.functional.dropout(getattr(self, f"conv_block{i}")(x), 0.2, self.training)
        x = x.mean(dim=3)                   # over frequency
        x = x.amax(dim=2) + x.mean(dim=2)   # over time
        x = torch.relu(self.fc1(nn.functional.dropout(x, 0.5, self.training)))
        return nn.functional.dropout(x, 0.5, self.training)


def drop_stripes(x, dim, max_width, stripes):
    """Zero `stripes` stripes of 0 to max_width - 1 rows along dim, placed at random in each
    example, as PANNs' SpecAugmentation (torchlibrosa's DropStripes) does, but not in place."""
    batch, size = x.shape[0], x.shape[dim]
    width = torch.randint(0, max_width, (batch, stripes, 1), device=x.device).clamp(max=size)
    start = (torch.rand(batch, stripes, 1, device=x.device) * (size - width)).long()
    index = torch.arange(size, device=x.device)
    drop = ((index >= start) & (index < start + width)).any(dim=1)  # (batch, size)
    shape = [batch, 1, 1, 1]
    shape[dim] = size
    return x.masked_fill(drop.view(shape), 0.0)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
               "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}


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


# Model kinds: model.pt's spec["kind"] -> the function that rebuilds the network from the spec.
MODEL_KINDS = {
    "cnn": lambda spec: CNN_MODELS[spec.get("model", "convolneunet")](spec["n_classes"], spec["img_size"],
                                                  spec.get("in_channels", 3)),
    "transfer": lambda spec: transfer_network(spec["arch"], spec["n_classes"], spec["head_dropout"],
                                              spec.get("finetune", False))[0],
    "mlp": lambda spec: FeatureMLP(spec["n_inputs"], spec["n_components"], spec["hidden"],
                                   spec["n_classes"], spec["dropout"]),
}


def build_model(spec):
    """Rebuild a model from the plain-dict spec stored in model.pt (random weights)."""
    if spec.get("kind") not in MODEL_KINDS:
        raise SuiteError(f"unknown model kind {spec.get('kind')!r}; known: {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[spec["kind"]](spec)
# ----------------------------------------------------------------------------------------------
# Training loop: one for every trainer (plateau LR, early stopping or cosine, AMP on CUDA, DDP,
# seeds, a checkpoint at every improvement to resume from, a time limit)

def cuda_unsupported_reason(index=0):
    """Why this torch build cannot run on CUDA device `index` (None when it can). A card older
    than the build's kernels (Kaggle's P100, sm_60, on current wheels) reports CUDA as available
    and then fails at the first operation."""
    major, minor = torch.cuda.get_device_capability(index)
    built = torch.cuda.get_arch_list()
    for arch in built:  # 'sm_86': binary kernels, 'compute_90': PTX compiled on the fly
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        arch_major, arch_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return None  # binaries run on later minor versions of the same major
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return None
    if not built:
        return None
    return (f"{torch.cuda.get_device_name(index)} (sm_{major}{minor}) is not supported by this "
            f"torch build (built for {', '.join(built)})")


def pick_device(name="auto"):
    """cuda (a card this torch build supports), then mps, then cpu; or the one named."""
    if name == "auto":
        if torch.cuda.is_available():
            reason = cuda_unsupported_reason()
            if reason is None:
                return torch.device("cuda")
            print(f"note: {reason}; training on the CPU", file=sys.stderr)
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SuiteError(f"--device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SuiteError(f"--device {name}: CUDA is not available here; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise SuiteError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
        reason = cuda_unsupported_reason(index)
        if reason:
            raise SuiteError(f"--device {name}: {reason}; use --device cpu or another torch build")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise SuiteError(f"--device {name}: MPS is not available here; use --device cpu")
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


class Batches:
    """Batches (x, y, index) of this rank's share of an in-memory dataset, gathered on the
    device: the inputs go there once (no copy on the CPU), then a batch is one index gather, and
    no loader process is needed. The order is DistributedSampler's, so one process and N see
    the same global batches for the same seed (set_epoch reshuffles, as a DataLoader's does)."""

    def __init__(self, dataset, batch_size, shuffle, seed, device, dist=Dist()):
        from torch.utils.data import DistributedSampler
        self.dataset, self.batch_size = dataset, max(1, batch_size // dist.world)
        self.sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank,
                                          shuffle=shuffle, seed=seed, drop_last=False)
        self.x, self.y = dataset.x_on(device), dataset.y.to(device)
        rows = dataset.rows if dataset.rows is not None else torch.arange(len(dataset))
        self.rows = rows.to(device)

    def __len__(self):
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        order = torch.as_tensor(list(self.sampler), dtype=torch.long, device=self.y.device)
        for batch in order.split(self.batch_size):
            yield self.x[self.rows[batch]], self.y[batch], batch


def make_loader(dataset, batch_size, shuffle, seed, workers, device, dist=Dist()):
    """Batches of this rank's share: Batches for data in memory; for images decoded per batch
    (LazyImageDataset) a DataLoader, its `workers` processes decoding. Both sample with
    DistributedSampler, even for one process, so one process and N processes see the same
    global batches for the same seed; the DataLoader's own generator keeps its draws out of the
    global one (dropout draws the same with or without workers)."""
    if not isinstance(dataset, LazyImageDataset):
        return Batches(dataset, batch_size, shuffle, seed, device, dist)
    from torch.utils.data import DataLoader, DistributedSampler
    sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank,
                                 shuffle=shuffle, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=max(1, batch_size // dist.world), sampler=sampler,
                      collate_fn=batch_collate, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed),
                      pin_memory=device.type == "cuda")


def on_device(model, device, images):
    """The model on the device; a network that reads images in channels-last memory, where
    convolutions run faster (measured 1.4x for SpecNet on this CPU; on GPUs, tensor cores)."""
    return model.to(device, memory_format=torch.channels_last if images else torch.preserve_format)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def mixup_pairs(x, y, alpha, rng):
    """Convex mixes of the batch with a shuffled copy of itself: (mixed x, partner labels,
    weight of the original), weight ~ Beta(alpha, alpha); draws from the NumPy generator rng."""
    weight = float(rng.beta(alpha, alpha))
    partner = torch.from_numpy(rng.permutation(len(y))).to(x.device)
    return weight * x.float() + (1 - weight) * x[partner].float(), y[partner], weight


def train_epoch(model, loader, criterion, optimizer, scaler, autocast, device, desc="train",
                mixup=0.0, rng=None, augment=None, seed=0, epoch=0, dist=Dist()):
    """One pass over this rank's share; loss and accuracy over all ranks, and the optimizer
    steps GradScaler skipped (inf/NaN gradients under AMP). augment (AUGMENTATIONS) transforms
    each batch on the device, its draws item_uniforms(seed, epoch, item). mixup > 0 trains on
    mixed pairs drawn from rng, the loss mixed with the same weight; a mix is predicted right
    when it gets the label of the larger share. Sums stay on the device until the end: no step
    waits for the host."""
    model.train()
    start, steps_before = time.time(), optimizer_steps(optimizer)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct, count, batches = torch.zeros((), dtype=torch.long, device=device), 0, 0
    for x, y, index in progress(loader, desc, unit="batch", leave=False, show=dist.main):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if augment is not None:
            x = augment(x, item_uniforms(seed, epoch, index.to(device), augment.draws))
        target = y
        if mixup:
            x, y_partner, weight = mixup_pairs(x, y, mixup, rng)
            target = y if weight >= 0.5 else y_partner
        with autocast():
            logits = model(x)
            loss = criterion(logits, y)
            if mixup:
                loss = weight * loss + (1 - weight) * criterion(logits, y_partner)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == target).sum()
        count, batches = count + len(y), batches + 1
    total_loss, correct, count = dist.sum([total_loss.item(), correct.item(), count], device)
    # every rank skips the same steps (their gradients are one all-reduced sum)
    skipped = batches - (optimizer_steps(optimizer) - steps_before)
    return {"loss": total_loss / count, "acc": correct / count, "skipped": skipped,
            "seconds": time.time() - start}


def optimizer_steps(optimizer):
    """Steps the optimizer has taken: Adam's own count, which a step GradScaler skips (inf or
    NaN gradients) leaves as it was."""
    return max((int(state["step"]) for state in optimizer.state.values() if "step" in state),
               default=0)


@torch.inference_mode()
def predict_logits(model, loader, autocast, device, forward=None, desc=None, dist=Dist()):
    """Outputs (logits, or `forward`'s features) for the whole dataset in its order, each rank
    computing its share and all of them gathered. desc: show a progress bar."""
    model.eval()
    indices, outputs = [], []
    for x, _, index in progress(loader, desc, unit="batch", leave=False,
                                show=desc is not None and dist.main):
        with autocast():
            outputs.append((forward or model)(x.to(device, non_blocking=True)).float())
        indices.append(index)
    mine = (torch.cat(indices).cpu().numpy(), torch.cat(outputs).cpu().numpy())  # one copy
    out = np.zeros((len(loader.dataset), mine[1].shape[1]), dtype=np.float32)
    for index, logits in dist.gather(mine):  # DistributedSampler pads with repeats: same values
        out[index] = logits
    return out


def evaluate(model, loader, criterion, autocast, device, dist=Dist()):
    """Loss over items; accuracy and balanced accuracy at clip level (segments vote)."""
    dataset = loader.dataset
    logits = predict_logits(model, loader, autocast, device, dist=dist)
    loss = criterion(torch.from_numpy(logits), dataset.y).item()
    scores = clip_scores(logits, dataset.labels, dataset.clip_ids)
    return {"loss": loss, "acc": scores["accuracy"], "balanced_acc": scores["balanced_accuracy"],
            "logits": logits}


@dataclass
class FitResult:
    history: list        # a dict per epoch: HISTORY_COLUMNS
    best_epoch: int      # the epoch whose weights the model holds now
    skipped_steps: int   # optimizer steps GradScaler skipped (AMP on CUDA)
    complete: bool = True  # False: stopped by the time limit, to be resumed from its checkpoint


@dataclass(frozen=True)
class EarlyStopping:
    """Stop once `patience` epochs pass without a better validation balanced accuracy (not before
    epoch `min_epochs`), and end with the best epoch's weights."""
    patience: int = 5
    min_epochs: int = 0


SCHEDULES = ("plateau", "cosine")


def fit_options(args):
    """fit()'s keyword arguments from a trainer's flags. --schedule plateau (the study's): the lr
    x0.1 when the validation loss stalls, early stopping, the best epoch's weights; cosine: every
    epoch trained, the last epoch's weights (choosing an epoch by a few validation clips picks
    noise)."""
    plateau = args.schedule == "plateau"
    return {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
            "schedule": args.schedule, "weight_decay": args.weight_decay, "mixup": args.mixup,
            "early_stopping": EarlyStopping(args.patience, args.min_epochs) if plateau else None,
            "workers": args.workers}


def make_scheduler(optimizer, schedule, epochs):
    """plateau: ReduceLROnPlateau on the validation loss (x0.1, patience 3); cosine: the lr falls
    from its start to 0 over `epochs`."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=3)


def rng_state():
    """The random generators training draws from outside its own seeded ones (dropout: torch's),
    as tensors (the checkpoint loads with weights_only=True)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class BadCheckpoint(SuiteError):
    """A checkpoint.pt the run cannot go on from: saying `--resume` again would not help."""


def save_checkpoint(path, state):
    """All that training depends on (a plain dict: weights, optimizer, scheduler, scaler,
    early-stopping state, random generators, history) into path, atomically; then beside it
    checkpoint.json, which says where it stands (what a resumed run starts after) without loading
    it."""
    path = Path(path)
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")
    write_json(path.with_suffix(".json"), {"epochs_done": len(state["history"]),
                                           "best_epoch": state["best_epoch"]})


def load_checkpoint(path, device):
    """The state save_checkpoint wrote; a damaged file (cut short by a full disk or a killed copy)
    or one trained on another kind of device is one line saying what to do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        trained_on = state["device_type"]
    except Exception as e:
        raise BadCheckpoint(f"{path} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:80]}); "
                            "the run cannot go on from it: copy the file again if a copy was cut "
                            "short, or train anew with --overwrite") from None
    if trained_on != device.type:  # AMP and kernels differ: not the same run
        raise SuiteError(f"{path}: trained on {trained_on}; resume it with --device {trained_on}")
    return state


def fit(model, train_set, val_set, *, criterion, epochs, lr, batch_size, seed, device,
        schedule="plateau", early_stopping=None, weight_decay=0.0, mixup=0.0, augment="none",
        param_groups=None, workers=1, checkpoint=None, deadline=None, clock=time.time,
        dist=Dist(), log=print):
    """Train `model` with Adam (param_groups may give parts of the model their own lr) and the
    lr `schedule` (make_scheduler), the training images augmented (AUGMENTATIONS[augment],
    seeded by `seed`); returns a FitResult. A network on images trains in channels-last
    memory (faster convolutions on CPU and GPU).

    early_stopping (EarlyStopping): stop when validation stops improving and end with the best
    epoch's weights; None: train every epoch and end with the last one's. AMP on CUDA; one
    device or torchrun (DDP, `dist`). checkpoint: a file written (save_checkpoint) at every
    improvement, or after every epoch without early stopping; if it exists, training goes on from
    it and ends as an uninterrupted run would. deadline (seconds on `clock`, which is read when
    each epoch starts and ends): no epoch is started that would end after it; the state is
    checkpointed and the result says it is not complete."""
    if not len(train_set) or not len(val_set):
        raise SuiteError(f"{len(train_set)} training and {len(val_set)} validation items: each "
                         "class needs at least 3 clips (one to train, validate and test)")
    model = on_device(model, device, train_set.holds_images)
    trainable = param_groups or [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay,
                                 fused=device.type in ("cpu", "cuda"))  # one kernel: 2x on a big head
    scheduler = make_scheduler(optimizer, schedule, epochs)
    autocast, scaler = amp_tools(device)
    net = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    loader_workers = workers if isinstance(train_set, LazyImageDataset) and workers > 1 else 0
    train_loader = make_loader(train_set, batch_size, True, seed, loader_workers, device, dist)
    val_loader = make_loader(val_set, batch_size, False, seed, loader_workers, device, dist)
    history, best_epoch, best_score, best_state, skipped = [], 0, -1.0, None, 0

    def state(best_model):
        return {"model": model.state_dict(), "best_model": best_model,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "history": history, "best_epoch": best_epoch,
                "best_score": best_score, "skipped_steps": skipped, "rng": rng_state(),
                "device_type": device.type}

    if checkpoint and Path(checkpoint).exists():
        saved = load_checkpoint(checkpoint, device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        history, best_epoch, best_score = saved["history"], saved["best_epoch"], saved["best_score"]
        skipped = saved["skipped_steps"]
        if early_stopping:  # the weights to end with, unless a better epoch comes
            best_state = saved["best_model"] or saved["model"]
        set_rng_state(saved["rng"])
        if dist.main:
            log(f"resuming from {checkpoint} after epoch {len(history)}" + (
                f" (best so far: epoch {best_epoch}, {best_score:.3f})" if early_stopping else ""))
    epoch_seconds = []  # this session's, each with its validation
    for epoch in range(len(history) + 1, epochs + 1):
        started = clock()
        # the longest epoch so far, with a margin, must fit before the deadline (all ranks agree)
        if deadline and dist.sum([started + 1.2 * max(epoch_seconds, default=0.0) > deadline],
                                 device)[0]:
            if dist.main:
                log(f"time limit: stopping before epoch {epoch} (" + (
                    f"an epoch takes about {clock_text(max(epoch_seconds))}" if epoch_seconds
                    else "the time is up") + "); continue with --resume")
                if checkpoint:  # where it stands, and the best weights when they differ
                    save_checkpoint(checkpoint, state(None if best_epoch == len(history) else best_state))
            if best_state is not None:
                model.load_state_dict(best_state)
            return FitResult(history, best_epoch, skipped, complete=False)
        train_loader.sampler.set_epoch(epoch)
        if hasattr(train_loader, "generator"):  # a DataLoader's workers
            train_loader.generator.manual_seed(seed * 100003 + epoch)
        lr_now = optimizer.param_groups[0]["lr"]
        tr = train_epoch(net, train_loader, criterion, optimizer, scaler, autocast, device,
                         desc=f"epoch {epoch}/{epochs}", mixup=mixup,
                         rng=np.random.default_rng([seed, epoch]), augment=AUGMENTATIONS[augment],
                         seed=seed, epoch=epoch, dist=dist)
        va = evaluate(net, val_loader, criterion, autocast, device, dist)
        if schedule == "plateau":
            scheduler.step(va["loss"])  # every rank sees the same gathered val loss: same decision
        else:
            scheduler.step()
        skipped += tr["skipped"]
        seconds = (history[-1]["seconds"] if history else 0.0) + tr["seconds"]
        history.append({"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                        "val_loss": va["loss"], "val_acc": va["acc"],
                        "val_balanced_acc": va["balanced_acc"], "lr": lr_now, "seconds": seconds})
        improved = early_stopping is None or va["balanced_acc"] > best_score
        if improved:
            best_score, best_epoch = va["balanced_acc"], epoch
            if early_stopping:  # kept to end with; without early stopping the last one is kept
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if checkpoint and dist.main:
                save_checkpoint(checkpoint, state(None))  # the model is the one to keep
        epoch_seconds.append(clock() - started)
        if dist.main:
            log(f"epoch {epoch:3d}  train loss {tr['loss']:.4f} acc {tr['acc']:.3f}  "
                f"val loss {va['loss']:.4f} acc {va['acc']:.3f} bal {va['balanced_acc']:.3f}  "
                f"lr {lr_now:.1e}  {tr['seconds']:.1f}s{'  *' if improved and early_stopping else ''}"
                + time_left(deadline))
        if early_stopping and epoch - best_epoch >= early_stopping.patience \
                and epoch >= early_stopping.min_epochs:
            if dist.main:
                log(f"early stop: no better validation balanced accuracy for "
                    f"{early_stopping.patience} epochs; best epoch {best_epoch} ({best_score:.3f})")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(history, best_epoch, skipped)


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


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classification_scores(y_true, y_pred, n_classes):
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
    return classification_scores(clip_labels, clip_logits.argmax(1), logits.shape[1])


def test_metrics(model_name, classes, logits, test_set, probabilities=None):
    """Clip-level figures (segments vote), segment-level beside them when there are segments;
    the sklearn report; per clip: id, true and predicted class, class probabilities (softmax
    of the clip's mean logits unless given)."""
    from sklearn.metrics import classification_report
    clips, clip_logits, clip_labels = clip_vote(logits, test_set.labels, test_set.clip_ids)
    predicted = clip_logits.argmax(1)
    s = classification_scores(clip_labels, predicted, len(classes))
    metrics = {"model": model_name, "test_accuracy": s["accuracy"],
               "test_balanced_accuracy": s["balanced_accuracy"], "test_macro_f1": s["macro_f1"],
               "classes": list(classes), "confusion": s["confusion"], "n_test": len(clips),
               "kaggle_score": None}
    if len(test_set) > len(clips):
        seg = classification_scores(test_set.labels, logits.argmax(1), len(classes))
        metrics.update({"segment_test_accuracy": seg["accuracy"],
                        "segment_test_balanced_accuracy": seg["balanced_accuracy"],
                        "segment_test_macro_f1": seg["macro_f1"], "n_test_segments": len(test_set)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = classification_report(clip_labels, predicted, labels=list(range(len(classes))),
                                       target_names=list(classes), zero_division=0)
    predictions = (clips, clip_labels, softmax(clip_logits) if probabilities is None else probabilities)
    return metrics, report, predictions


def write_predictions(path, classes, clip_ids, truth, probabilities):
    """predictions.csv: per test clip its id, true and predicted class, and each class's
    probability (what compare.py --ensemble averages)."""
    write_csv(path, ["clip_id", "true", "predicted", *(f"p_{c}" for c in classes)],
              [(c, classes[t], classes[int(np.argmax(p))], *(f"{q:.6f}" for q in p))
               for c, t, p in zip(clip_ids, truth, probabilities)])


def majority_class(classes, labels):
    """The most common class of a training part: the label of a test file that cannot be read."""
    return classes[int(np.bincount(labels).argmax())]


# ----------------------------------------------------------------------------------------------
# Flags: what every trainer takes, each with one meaning, all checked before any work starts

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
                   "lr", "seconds"]
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RESUME_FLAGS = ("resume", "device", "workers", "time_limit")  # what may change on --resume


def add_common_args(parser, *, data_default, data_help, epochs=20, batch_size=32, lr=1e-3):
    d = parser.add_argument_group("data")
    d.add_argument("--data", default=data_default, help=f"{data_help} (default %(default)s)")
    d.add_argument("--split", metavar="NAME|FILE", help="gtzan-filtered (GTZAN's artist-filtered "
                   "split: the honest GTZAN figure) or a split file to use instead of the shared "
                   "random one (DATA/split.json); clips it does not list are left out")
    d.add_argument("--folds", type=bounded(int, minimum=2), metavar="K",
                   help="stratified K-fold cross-validation at clip level (mean and std reported)")
    d.add_argument("--workers", type=bounded(int, minimum=1), default=default_workers(),
                   help="processes that decode data: audio when predicting or extracting, images "
                        "per batch above --cache-mb; 1 = this process (default: the %(default)s cores)")
    o = parser.add_argument_group("optimization")
    o.add_argument("--epochs", type=bounded(int, minimum=1), default=epochs,
                   help="maximum epochs (default %(default)s)")
    o.add_argument("--batch-size", type=bounded(int, minimum=1), default=batch_size,
                   help="global batch size, split across torchrun ranks (default %(default)s)")
    o.add_argument("--lr", type=bounded(float, above=0), default=lr,
                   help="Adam learning rate (default %(default)s)")
    o.add_argument("--weight-decay", type=bounded(float, minimum=0), default=0.0,
                   help="Adam weight decay (default 0)")
    o.add_argument("--schedule", choices=SCHEDULES, default="plateau",
                   help="plateau: lr x0.1 when the validation loss stalls, early stopping, the "
                        "best epoch's weights (the study's); cosine: lr from --lr to 0 over "
                        "--epochs, every epoch trained, the last weights (default %(default)s)")
    o.add_argument("--patience", type=bounded(int, minimum=1), default=5,
                   help="plateau: early stopping after this many epochs without a better "
                        "validation balanced accuracy (default %(default)s)")
    o.add_argument("--min-epochs", type=bounded(int, minimum=0), default=0,
                   help="plateau: epochs to train before early stopping may stop (default 0)")
    o.add_argument("--mixup", type=bounded(float, minimum=0), default=0.0,
                   help="mixup: train on mixes of pairs, weights ~ Beta(a, a); 0 = off (default)")
    r = parser.add_argument_group("run")
    r.add_argument("--out", default="runs", help="runs folder (default %(default)s)")
    r.add_argument("--name", help="run name: the folder OUT/NAME (default script-model-time)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run of this name")
    r.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run that was killed, interrupted or stopped by --time-limit, "
                        "from its checkpoint, with its recorded arguments (only --device of the "
                        "same kind, --workers and --time-limit may be given)")
    r.add_argument("--time-limit", type=duration, metavar="DURATION",
                   help="stop training cleanly before this much time has passed since the start "
                        "(90s, 45m, 11h30m): checkpoint, report and predictions of the model so "
                        "far; --resume continues it")
    r.add_argument("--seed", type=int, default=0, help="seed for split, init and order (default 0)")
    r.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    add_submission_args(parser.add_argument_group("prediction and Kaggle"), predict_flag=True)


def add_image_args(group, img_size_help, img_size_minimum):
    """The flags of the trainers that read spectrogram images."""
    group.add_argument("--img-size", type=bounded(int, minimum=img_size_minimum), help=img_size_help)
    group.add_argument("--augment", nargs="?", const="rotate", default="none", choices=list(AUGMENTATIONS),
                       help="training images only: rotate is the study's RandomRotation(15) "
                            "(--augment alone), specaugment masks and shifts (default none)")
    group.add_argument("--cache-mb", type=bounded(int, minimum=0), default=4096,
                       help="decode all images into memory up to this size, else per batch "
                            "(default %(default)s)")


def add_submission_args(group, predict_flag=False):
    if predict_flag:
        group.add_argument("--predict", metavar="DIR", help="after training, predict the audio "
                           "files in DIR and write RUN/submission.csv")
    group.add_argument("--id-col", default="id", help="submission id column (default id: the "
                       "file name)")
    group.add_argument("--label-col", default="class", help="submission label column (default "
                       "class)")
    group.add_argument("--sample-submission", metavar="CSV", help="a Kaggle sample_submission.csv: "
                       "its column names, ids and order shape submission.csv")
    group.add_argument("--submit", metavar="COMPETITION", help="send submission.csv to this Kaggle "
                       "competition (the message names the run, for compare.py --kaggle)")
    group.add_argument("-m", "--message", help="submission message (default: the run name)")
    group.add_argument("--dry-run", action="store_true", help="show what --submit would send")


def parse_run_args(parser, argv, data_is_file=False, data_flag="--data", check_model=None,
                   paths=True):
    """A trainer's arguments, all checked before any work starts: the flags (check_flags, and
    the trainer's own check_model(args)), then the paths (paths=False: flags only, as a kernel
    recipe is checked when built). With --resume RUN_DIR, the run's recorded ones instead."""
    args = parser.parse_args(argv)
    check_torchvision()
    if args.resume and paths:
        args = resumed_args(parser, args)
    check_flags(parser, args)
    if check_model:
        check_model(args)
    if paths:
        check_paths(args, data_is_file, data_flag)
    return args


def refuse_unused(parser, args, flags, why):
    """A flag given (not at its default) that the chosen model or schedule does not use is one
    line saying so, never silently ignored."""
    for flag in flags:
        if getattr(args, flag) != parser.get_default(flag):
            raise SuiteError(f"--{flag.replace('_', '-')}: {why}")


def check_flags(parser, args):
    """Combinations of flags that cannot work, whatever the data: one line naming the flag."""
    if args.schedule == "cosine":
        refuse_unused(parser, args, ("patience", "min_epochs"), "no early stopping with "
                      "--schedule cosine (every epoch trained, the last kept); add --schedule "
                      "plateau to stop early")
    if args.split and args.folds:
        raise SuiteError("--split and --folds: give one (the folds make their own splits)")
    if args.predict and args.folds:
        raise SuiteError("--predict with --folds: train without --folds, or predict with one "
                         "fold's model: python predict.py RUN/foldK/model.pt DIR")
    for flag, value in (("--sample-submission", args.sample_submission), ("--submit", args.submit)):
        if value and not args.predict:
            raise SuiteError(f"{flag} needs --predict DIR (the submission is its predictions)")
    if args.name and not RUN_NAME.fullmatch(args.name):
        raise SuiteError(f"--name {args.name!r}: letters, digits, '.', '_' and '-' only (it "
                         "names a folder under --out)")


def resumed_args(parser, args):
    """--resume RUN_DIR: the arguments the run recorded in its config.json (only those of
    RESUME_FLAGS may be given again). A finished run: nothing to do, said before any work."""
    run_dir = Path(args.resume)
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
        recorded = config["args"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SuiteError(f"--resume {run_dir}: not a run folder of this suite (no readable "
                         "config.json)") from None
    if config.get("script") != parser.prog:
        raise SuiteError(f"--resume {run_dir}: a run of {config.get('script')}, not {parser.prog}")
    defaults = vars(parser.parse_args([]))
    given = [k for k, v in vars(args).items() if k not in RESUME_FLAGS and v != defaults.get(k)]
    if given:
        raise SuiteError(f"--resume continues {run_dir} with its recorded arguments; leave out "
                         + ", ".join(f"--{k.replace('_', '-')}" for k in given))
    if run_finished(run_dir):
        raise NothingToDo(f"{run_dir}: finished before; nothing to do (predict with: python "
                          f"predict.py {run_dir} AUDIO_DIR)")
    return argparse.Namespace(**{
        **defaults, **{k: v for k, v in recorded.items() if k in defaults},
        "out": str(run_dir.parent), "name": run_dir.name, "overwrite": False,
        **{k: getattr(args, k) for k in RESUME_FLAGS}})


def is_run_folder(folder):
    folder = Path(folder)
    return folder.is_dir() and (not any(folder.iterdir()) or any(
        (folder / name).exists() for name in ("config.json", "metrics.json", "checkpoint.pt")))


def check_paths(args, data_is_file, data_flag):
    """Every path the flags name, before any work: one line naming the flag."""
    data = Path(args.data)
    if data_is_file and data.is_dir():
        raise SuiteError(f"{data_flag} {data}: a folder, not a file; give the CSV file")
    if not (data.is_file() if data_is_file else data.is_dir()):
        raise SuiteError(f"{data_flag} {data}: no such {'file' if data_is_file else 'folder'}")
    if args.split:
        if not split_file(args.split).is_file():
            raise SuiteError(f"--split {args.split}: no such file (or a named split: "
                             f"{', '.join(NAMED_SPLITS)})")
        read_split(split_file(args.split))
    if args.predict:
        try:
            list_audio(args.predict)
        except SuiteError as e:
            raise SuiteError(f"--predict {e}") from None
    if args.sample_submission:
        check_sample_submission(args.sample_submission, list_audio(args.predict))
    check_output_folder(args.out, "--out")
    if args.name and not args.resume:
        run_dir = Path(args.out) / args.name
        if run_dir.exists() and not args.overwrite:
            resume = "" if run_finished(run_dir) else f", continue it with --resume {run_dir}"
            raise SuiteError(f"{run_dir} exists{' (a finished run)' if not resume else ''}: "
                             f"choose another --name{resume}, or replace it with --overwrite")
        if run_dir.exists() and not is_run_folder(run_dir):
            raise SuiteError(f"--overwrite: {run_dir} is not a run folder of this suite; not "
                             "replacing it")
    if args.device != "auto":
        pick_device(args.device)
    if args.submit and not args.dry_run:
        kaggle_api()  # credentials now, not after hours of training
# ----------------------------------------------------------------------------------------------
# Run folder: config.json, history.csv, metrics.json, predictions.csv, report.txt, curves.png,
# confusion.png, model.pt (and checkpoint.pt while training). A trainer's run:
#
#     with start_run(args, argv, "train_cnn.py", model_name, splits=..., device=...) as run:
#         for part in run.parts():                      # the split, or each fold not finished yet
#             model = build_model(spec)
#             result = fit(model, train, val, checkpoint=part.checkpoint, ...)
#             tested = test_model(model, test, ...)
#             report = test_report(part, model_name, classes, tested, result, ...)
#             save(part, model, spec, report, train=train)  # model.pt, then the report's files
#             if not result.complete: break                 # stopped by the time limit
#         summarize_folds(run)
#
# A part is finished when it has its model and metrics.json and no checkpoint.pt; --resume
# carries on with the parts that are not.

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


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


MODEL_FILES = ("model.pt", "model.joblib")  # a network, or a scikit-learn baseline


def save_model(path, model, spec, classes, **extra):
    """A plain dict that torch.load(..., weights_only=True) reads back: spec rebuilds the model
    (build_model), spec["preprocess"] says how audio becomes its input."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    checkpoint = {"spec": spec, "classes": list(classes), "state_dict": state, **extra}
    atomic_write(path, lambda f: torch.save(checkpoint, f), mode="wb")


def load_model(path, device="cpu"):
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such model file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(checkpoint["spec"])
        model.load_state_dict(checkpoint["state_dict"])
        n_outputs, classes = checkpoint["spec"]["n_classes"], checkpoint["classes"]
    except SuiteError:
        raise
    except Exception as e:  # torch.load raises many kinds on a foreign or damaged file
        raise SuiteError(f"{path}: not a model.pt of this suite ({type(e).__name__})") from None
    if len(classes) != n_outputs:
        raise SuiteError(f"{path}: lists {len(classes)} classes for {n_outputs} outputs; the "
                         "file is damaged or was edited")
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


def plot_curves(path, history, metrics):
    """Loss and accuracy by epoch, titled with the clips validation was measured on."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.3))
    fig.suptitle(f"{metrics['model']}: validation on {metrics['n_val']} clips, "
                 f"{metrics.get('split') or 'split not recorded'}", fontsize=10)
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    save_figure(path, fig)


def plot_confusion(path, metrics, classes):
    """The test confusion matrix, titled with the balanced accuracy, the number of test clips and
    the split they came from."""
    plt = pyplot()
    cm = np.array(metrics["confusion"])
    title = (f"{metrics['model']}: balanced accuracy {metrics['test_balanced_accuracy']:.3f}\n"
             f"{metrics['n_test']} test clips, {metrics.get('split') or 'split not recorded'}")
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


def write_history(path, history):
    write_csv(path, HISTORY_COLUMNS, [[h[c] for c in HISTORY_COLUMNS] for h in history])


def write_results(part_dir, metrics, report):
    """Everything of a part's folder but config.json and the model; metrics.json last: it says
    the part was tested (rank 0 only)."""
    write_history(part_dir / "history.csv", report.history)
    write_predictions(part_dir / "predictions.csv", metrics["classes"], *report.predictions)
    atomic_write(part_dir / "report.txt", lambda f: f.write(report.text))
    if report.history:
        plot_curves(part_dir / "curves.png", report.history, metrics)
    plot_confusion(part_dir / "confusion.png", metrics, metrics["classes"])
    write_json(part_dir / "metrics.json", metrics)


def model_in(folder):
    """The model file a run folder (or fold) holds, or None."""
    return next((Path(folder) / n for n in MODEL_FILES if (Path(folder) / n).is_file()), None)


def part_finished(folder):
    """A part (a run, or one fold) whose model and report are written and whose training is over
    (no checkpoint left): the order save() writes them in makes this true only at the end."""
    folder = Path(folder)
    return ((folder / "metrics.json").is_file() and not (folder / "checkpoint.pt").exists()
            and model_in(folder) is not None)


def run_finished(run_dir):
    """A finished run: its one part finished, or its folds summarized."""
    return part_finished(run_dir) or (Path(run_dir) / "summary.json").is_file()


@dataclass
class RunProgress:
    """How far a run folder is, read from its small files (config.json, checkpoint.json written
    with every checkpoint, metrics.json at the end): what resuming it starts from."""
    finished: bool
    parts: int         # 1, or the number of folds
    parts_done: int    # parts tested with complete training
    epochs_done: int   # of the part in progress (of the last part when all are done)
    epochs: int        # --epochs

    @property
    def rank(self):
        """Orders runs of the same flags: the one further on is greater."""
        return (self.finished, self.parts_done, self.epochs_done)

    def __str__(self):
        if self.finished:
            return "finished"
        where = f"epoch {self.epochs_done} of {self.epochs}"
        return where if self.parts == 1 else f"fold {self.parts_done + 1} of {self.parts}, {where}"


def run_progress(run_dir):
    """RunProgress of a run folder, or None when it is not one (no readable config.json)."""
    run_dir = Path(run_dir)
    try:
        args = json.loads((run_dir / "config.json").read_text())["args"]
        parts, epochs = int(args.get("folds") or 1), int(args["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

    def read(path):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def done(folder):  # tested after complete training, its checkpoint gone
        metrics = read(folder / "metrics.json")
        return bool(metrics) and metrics.get("complete", True) \
            and not (folder / "checkpoint.json").exists()
    folders = [run_dir] if parts == 1 else [run_dir / f"fold{k}" for k in range(1, parts + 1)]
    parts_done = sum(map(done, folders))
    current = next((f for f in folders if not done(f)), folders[-1])
    epochs_done = read(current / "checkpoint.json").get(
        "epochs_done", read(current / "metrics.json").get("epochs_run", 0))
    return RunProgress(parts_done == parts, parts, parts_done, int(epochs_done), epochs)


@dataclass
class Run:
    """A training command's run folder: claimed (or reopened with --resume) with its
    config.json, the parts to train in it (the split, or the folds), its processes."""
    args: argparse.Namespace
    script: str
    dir: Path
    dist: Dist
    splits: list              # (part name: "" or "foldK", split)
    clip_ids: list            # of the items, to index the splits
    deadline: float = None    # --time-limit: time.time() at which training must have stopped
    replaced: Path = None     # --overwrite: the old run, kept aside until this one has results

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        """Success: every rank waits for the others, leaves the process group, and the replaced
        run goes. Failure before the first checkpoint: nothing is left behind (a replaced run
        comes back); after it: a line says how to go on."""
        if kind is None:
            self.dist.finish()
            self.forget_replaced()
            return False
        if not self.dist.main:
            return False
        saved = any(self.dir.rglob("checkpoint.pt")) or any(self.dir.rglob("metrics.json"))
        if not saved and not self.args.resume:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.replaced:
                self.replaced.rename(self.dir)
        if saved:
            self.forget_replaced()
        if any(self.dir.rglob("checkpoint.pt")) and not isinstance(error, BadCheckpoint):
            print(f"the run stopped; continue it with: python {self.script} --resume {self.dir}",
                  file=sys.stderr)
        return False

    def forget_replaced(self):
        if self.dist.main and self.replaced and self.replaced.exists():
            shutil.rmtree(self.replaced)

    @property
    def model_file(self):
        return model_in(self.dir)

    def parts(self):
        """The parts to train: the split, or the folds; with --resume, those not finished
        before."""
        for name, split in self.splits:
            folder = self.dir / name
            if part_finished(folder):  # --resume: finished before
                metrics = json.loads((folder / "metrics.json").read_text())
                self.dist.log(f"{folder}: finished before (balanced accuracy "
                              f"{metrics['test_balanced_accuracy']:.3f})")
                continue
            part = Part(self, folder, split, split_indices(split, self.clip_ids), name)
            self.dist.log(f"{name or 'split'}: {sum(map(len, part.indices.values()))} items: "
                          + ", ".join(f"{len(part.indices[p])} {p}" for p in ("train", "val", "test")))
            yield part


@dataclass
class Part:
    """One split of a run: the shared split (its folder is the run's) or fold K (RUN/foldK)."""
    run: Run
    dir: Path
    split: dict
    indices: dict   # train/val/test -> item indices
    name: str       # "" or "foldK"

    @property
    def checkpoint(self):
        return self.dir / "checkpoint.pt"


def claim_run_folder(out, name, overwrite):
    """Make OUT/NAME for this run, atomically: of two runs started at once under one name, one
    gets the folder and the other a one-line error before it trains. --overwrite moves the old
    run aside (it comes back if the new one fails before its first checkpoint)."""
    run_dir, replaced = Path(out) / name, None
    if overwrite and run_dir.exists():
        replaced = run_dir.with_name(f".{name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):  # another run moved it first
            run_dir.rename(replaced)
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise SuiteError(f"{run_dir} was just made by another run; choose another --name") from None
    return run_dir, replaced


def start_run(args, argv, script, model_name, *, classes, splits, clip_ids, device, dist,
              started):
    """The run's folder, claimed (or reopened with --resume, its split unchanged), and its
    config.json. started: the time.time() --time-limit counts from."""
    hashes = [split_hash(s) for _, s in splits]
    replaced = None
    if args.resume:
        run_dir = Path(args.resume)
        recorded = json.loads((run_dir / "config.json").read_text()).get("split_hashes")
        if recorded and recorded != hashes:
            raise SuiteError(f"--resume {run_dir}: the data or its split changed since the run "
                             "started; start a new run")
    elif dist.main:
        name = args.name
        if name:
            run_dir, replaced = claim_run_folder(args.out, name, args.overwrite)
        else:
            stamp = f"{script.removesuffix('.py').removeprefix('train_')}-{model_name}-{datetime.now():%Y%m%d-%H%M%S}"
            for name in (stamp, *(f"{stamp}-{i}" for i in range(2, 1000))):
                with contextlib.suppress(SuiteError):
                    run_dir, replaced = claim_run_folder(args.out, name, False)
                    break
    if not args.resume:
        run_dir = Path(args.out) / dist.gather(run_dir.name if dist.main else None)[0]
    deadline = started + args.time_limit if args.time_limit else None
    run = Run(args, script, run_dir, dist, splits, list(clip_ids), deadline, replaced)
    if dist.main:
        if not args.resume:
            command = " ".join([script, *(sys.argv[1:] if argv is None else argv)])
            write_json(run_dir / "config.json", {
                "script": script, "model": model_name, "command": command,
                "args": jsonable({**vars(args), "name": run_dir.name}),
                "versions": library_versions(), "world_size": dist.world,
                "split": split_label(args, splits[0][1]),
                "split_hash": hashes[0] if len(hashes) == 1 else "k-fold",
                "split_hashes": hashes, "split_seed": splits[0][1].get("seed")})
        print(f"{script} {model_name}: {len(classes)} classes, device {device}"
              + (f", {dist.world} processes" if dist.active else "") + f" -> {run_dir}")
    return run


@dataclass
class Tested:
    logits: np.ndarray    # per test item (segments: per segment)
    seconds: float        # the model's time on them
    probabilities: np.ndarray = None  # per clip, when the model has its own (else softmax)


def test_model(model, test_set, *, device, batch_size, dist=Dist()):
    """The model's logits on the test part (each rank its share, gathered), and their time."""
    autocast, _ = amp_tools(device)
    loader = make_loader(test_set, batch_size, False, 0, 0, device, dist)
    start = time.time()
    logits = predict_logits(model.to(device), loader, autocast, device, dist=dist)
    return Tested(logits, time.time() - start)


def clip_counts(part):
    """Clips per class in a part (classes present only)."""
    labels = dict(zip(part.clip_ids, part.labels.tolist()))
    return np.unique(list(labels.values()), return_counts=True)[1]


def small_part_note(per_class):
    """Why a part's figure means little when it is small (under 20 clips, or under 3 clips of a
    class), or None: the size of one clip in balanced accuracy."""
    n_clips, smallest = int(per_class.sum()), int(per_class.min())
    if n_clips >= 20 and smallest >= 3:
        return None
    return (f"{n_clips} clips, {smallest} in the smallest class: one clip moves balanced accuracy "
            f"by up to {1 / (len(per_class) * smallest):.3f}; --folds K tests every clip once")


@dataclass
class Report:
    metrics: dict       # metrics.json
    text: str           # scikit-learn's classification report
    predictions: tuple  # (clip ids, true labels, probabilities): predictions.csv
    history: list       # a dict per epoch trained (none for a scikit-learn estimator)


def test_report(part, model_name, classes, tested, result, *, train, val, test,
                prepare_seconds=0.0, notes=None):
    """The part's figures from the model's predictions on its test clips (scikit-learn, clip
    level), with what the run was: its split and sizes, epochs and times, whether training
    completed (result None: a scikit-learn estimator, fitted in prepare_seconds)."""
    args = part.run.args
    history = result.history if result else []
    best_epoch = result.best_epoch if result else 0
    metrics, text, predictions = test_metrics(model_name, classes, tested.logits, test,
                                              tested.probabilities)
    seconds = [h["seconds"] for h in history] or [0.0]
    metrics.update({
        "split": split_label(args, part.split), "n_train": len(set(train.clip_ids)),
        "n_val": len(set(val.clip_ids)), "epochs_run": len(history), "best_epoch": best_epoch,
        "train_seconds": prepare_seconds + seconds[-1],
        "seconds_to_best": prepare_seconds + seconds[max(best_epoch, 1) - 1],
        "seconds_to_best_val": prepare_seconds + seconds[best_validation_epoch(history) - 1],
        "epochs": getattr(args, "epochs", None),
        "predict_seconds_per_clip": tested.seconds / metrics["n_test"],
        "split_hash": split_hash(part.split), "data": str(args.data),
        "run": part.run.dir.name + (f"/{part.name}" if part.name else ""),
        "complete": result.complete if result else True,
        "small_test": small_part_note(clip_counts(test)), "small_val": small_part_note(clip_counts(val)),
        **({"amp_skipped_steps": result.skipped_steps} if result else {}), **(notes or {})})
    if part.name:
        metrics.update({"group": part.run.dir.name, "fold": int(part.name[4:]), "folds": args.folds})
    return Report(metrics, text, predictions, history)


def save(part, model, spec, report, *, train):
    """Write the part's model (model.pt, or model.joblib for a scikit-learn estimator, with the
    fallback class for unreadable audio and the caveats a prediction repeats), then its report
    (metrics.json last: the part was tested), then drop the checkpoint once training completed
    (else --resume goes on from it); and say so. Rank 0 only."""
    run, metrics = part.run, report.metrics
    classes = metrics["classes"]
    if not run.dist.main:
        return
    extra = {"run": str(part.dir), "fallback_class": majority_class(classes, train.labels),
             "caveats": caveats(run.args.data, metrics)}
    if isinstance(model, nn.Module):
        save_model(part.dir / "model.pt", model, spec, classes, best_epoch=metrics["best_epoch"],
                   **extra)
    else:
        import joblib
        saved = {"estimator": model, "spec": spec, "classes": classes, **extra}
        atomic_write(part.dir / "model.joblib", lambda f: joblib.dump(saved, f), mode="wb")
    write_results(part.dir, metrics, report)
    if metrics["complete"]:  # the model file has the weights; checkpoint.json first, as
        # run_progress reads it (killed in between, --resume tests the model again: no harm)
        part.checkpoint.with_suffix(".json").unlink(missing_ok=True)
        part.checkpoint.unlink(missing_ok=True)
    print(f"test: balanced accuracy {metrics['test_balanced_accuracy']:.3f}, accuracy "
          f"{metrics['test_accuracy']:.3f}, macro F1 {metrics['test_macro_f1']:.3f} on "
          f"{metrics['n_test']} clips ({metrics['split']}) -> {part.dir}")
    print(report.text.rstrip("\n"))
    print(confusion_text(metrics["confusion"], classes))
    for part_name in ("test", "val"):
        if metrics[f"small_{part_name}"]:
            print(f"note: a small {part_name} part: {metrics[f'small_{part_name}']}")
    if not metrics["complete"]:
        print(f"note: stopped at the time limit after epoch {metrics['epochs_run']} of "
              f"{metrics['epochs']}; continue with: python {run.script} --resume {run.dir}")


def best_validation_epoch(history):
    """The first epoch of the best validation balanced accuracy (1 without history): where a run
    converged, whichever epoch's weights it keeps (a cosine run keeps its last)."""
    scores = [h["val_balanced_acc"] for h in history]
    return scores.index(max(scores)) + 1 if scores else 1


def confusion_text(confusion, classes):
    """The confusion matrix as text: a row per true class, a column per predicted one."""
    width = max(4, *(len(c) for c in classes), *(len(str(n)) for row in confusion for n in row))
    head = "true \\ predicted".ljust(width + 2)
    lines = [head + " ".join(c[:width].rjust(width) for c in classes)]
    lines += [c[:width].ljust(width + 2) + " ".join(str(n).rjust(width) for n in row)
              for c, row in zip(classes, confusion)]
    return "\n".join(lines)


def synthetic_data(data):
    """Whether training data came from data_conversion.py --make-demo (its README.txt says
    SYNTHETIC): audio itself, images through their conversion.json, a table through its record."""
    data = Path(data)
    record = feature_record(data) if data.is_file() else None
    if data.is_dir() and (data / CONVERSION_FILE).is_file():
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((data / CONVERSION_FILE).read_text())
    source = Path((record or {}).get("source") or data)
    return any((folder / "README.txt").is_file()
               and (folder / "README.txt").read_text(errors="replace").startswith("SYNTHETIC")
               for folder in (source, source.parent))


def caveats(data, notes):
    """What a prediction with this model should say first: its data or weights mean little."""
    said = []
    if synthetic_data(data):
        said.append("was trained on SYNTHETIC demo data: its labels say nothing about music")
    if notes.get("weights") == "none":
        said.append("has a backbone with random weights (--weights none): no pretraining")
    return said


def tested_parts(run_dir):
    """A run's folders with test figures: itself, or its folds in order."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        return [run_dir]
    return sorted((p.parent for p in run_dir.glob("fold*/metrics.json")),
                  key=lambda p: int(p.name[4:]))


def summarize_folds(run):
    """--folds K: mean and sample standard deviation (ddof=1: K is small) over the folds, into
    RUN/summary.json, once every fold is finished (read from their metrics.json)."""
    if not run.args.folds or not run.dist.main:
        return None
    folders = [run.dir / name for name, _ in run.splits]
    if not all(part_finished(f) for f in folders):
        return None
    results = [json.loads((f / "metrics.json").read_text()) for f in folders]
    bal = np.array([m["test_balanced_accuracy"] for m in results])
    acc = np.array([m["test_accuracy"] for m in results])
    summary = {"model": results[0]["model"], "folds": len(results), "split": split_label(run.args),
               "balanced_accuracy_mean": float(bal.mean()), "balanced_accuracy_std": float(bal.std(ddof=1)),
               "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)),
               "per_fold_balanced_accuracy": bal.tolist()}
    write_json(run.dir / "summary.json", summary)
    print(f"{len(results)}-fold: balanced accuracy {summary['balanced_accuracy_mean']:.3f} +- "
          f"{summary['balanced_accuracy_std']:.3f}, accuracy {summary['accuracy_mean']:.3f} +- "
          f"{summary['accuracy_std']:.3f} -> {run.dir}/summary.json")
    return summary


# ----------------------------------------------------------------------------------------------
# Submissions: what the trainers' flag checks and predict.py share

def estimator_scores(estimator, x):
    """A scikit-learn classifier's decision scores as (n, classes), standing in for logits."""
    scores = np.asarray(estimator.decision_function(x), np.float32)
    return np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores


def check_sample_submission(path, files):
    """read_sample_submission(path), refused in one line when none of its ids is one of the test
    files (the wrong sample, or the wrong folder): its rows would all get one fallback class."""
    id_col, label_col, ids = read_sample_submission(path)
    names = {normalize_id(f.name) for f in files}
    if not names & {normalize_id(i) for i in ids}:
        raise SuiteError(f"--sample-submission {path}: none of its {len(ids)} ids is a file of "
                         f"{Path(files[0]).parent} (e.g. {ids[0]!r} and {files[0].name!r}): the "
                         "wrong sample or the wrong folder")
    return id_col, label_col, ids


def read_sample_submission(path):
    """(id column, label column, ids) of a Kaggle sample_submission.csv."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header, *rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
        raise SuiteError(f"--sample-submission {path}: not a readable CSV ({type(e).__name__})") from None
    ids = [r[0] for r in rows if r]
    if len(header) < 2 or not ids:
        raise SuiteError(f"--sample-submission {path}: expected a header (id, label columns) and "
                         "a row per test file")
    return header[0], header[1], ids


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
    # kernels_status/kernels_output turn a 401/403 into a ValueError guessing at a wrong slug;
    # the HTTP answer it replaced says what happened
    replaced = error.__context__
    if getattr(error, "response", None) is None and isinstance(replaced, requests.HTTPError):
        error = replaced
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403) and action == "authentication":
        reason = (f"Kaggle rejected the credentials ({status}): the token is invalid or expired; "
                  "create a new one at https://www.kaggle.com/settings/api")
    elif status is not None:
        reason = f"Kaggle answered {status} {response.reason or ''}".rstrip()
        with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):  # its JSON error
            reason += f" ({response.json()['message']})"
        if status == 429 or (status == 400 and "allowance" in reason.lower()):
            reason += ": the daily submission limit is reached; it resets at midnight UTC"
        elif status in (401, 403):
            reason += ": check that this account may do this (joined the competition, accepted "
            reason += "its rules) and that the token is valid"
        elif status == 404:
            reason += ": check the name (competition slug, USER/KERNEL-SLUG) and that this "
            reason += "account can see it"
        elif status >= 500:
            reason += ": Kaggle's side; try again later"
    elif isinstance(error, (requests.ConnectionError, requests.Timeout)):
        reason = "could not reach Kaggle (no network?)" + (
            "; a Kaggle kernel needs its internet setting on for this"
            if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") else "")  # set in Kaggle's sessions
    else:
        reason = f"{type(error).__name__}: {error}"
    return SuiteError(kaggle_redacted(f"{action} failed: {reason}"), code=2)


def kaggle_redacted(text):
    """text without the API token, in case a message or a printed reason carries it."""
    from kagglesdk.kaggle_env import get_access_token_from_env
    token = get_access_token_from_env()[0]
    return text.replace(token, "***") if token else text


def kaggle_call(action, fn, *args, printed=None, **kwargs):
    """fn(*args, **kwargs) with its printing captured and any failure turned into one line.
    What the package printed is appended to the list `printed`, if given: it reports some
    refusals (a failed upload) only by printing the reason."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            return fn(*args, **kwargs)
    except SuiteError:
        raise
    except (Exception, SystemExit) as e:
        raise kaggle_error(action, e) from None
    finally:
        if printed is not None:
            printed.append(captured.getvalue())


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
    printed = []
    result = kaggle_call(f"submission of {csv_path} to {competition}", api.competition_submit,
                         str(csv_path), message, competition, quiet=True, printed=printed)
    return kaggle_submitted(api, competition, result, str(csv_path), "".join(printed))


def kaggle_submitted(api, competition, result, what, printed=""):
    """A submission's answer checked and told: its ref and the submissions left today, or one
    line with the reason the package only printed (it answers a failed upload with a message)."""
    answer = getattr(result, "message", "") or ""
    if answer == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE or not getattr(result, "ref", None):
        reason = " ".join(printed.split())[:300] or "the file upload was not accepted"
        raise SuiteError(kaggle_redacted(f"Kaggle refused the submission of {what} to "
                                         f"{competition}: {answer or 'no submission was created'}"
                                         f" ({reason})"), code=2)
    left = kaggle_submissions_left(api, competition)
    print(f"submitted {what} to {competition}: ref {result.ref}"
          + (f", {left} submissions left today" if left is not None else ""))
    return result


def kaggle_submissions_left(api, competition):
    """Submissions left today as `kaggle competitions submit` tells them (GetSubmissionLimits'
    num_allowed_now), or None when Kaggle does not say: never a failure after submitting."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return api.competition_get_submission_limits(competition).num_allowed_now
    except Exception:
        return None


def names_run(message, run_name):
    """Whether a submission message names the run as a whole word ('cnn-a v2' names cnn-a,
    not cnn-a2 or cnn): how compare.py --kaggle finds a run's score."""
    return re.search(rf"(?<![\w.-]){re.escape(run_name)}(?![\w.-])", message or "") is not None


def submission_message(message, run_name):
    """The user's message (default: the run name), with the run name added when it lacks it."""
    if not message:
        return run_name
    return message if names_run(message, run_name) else f"{message} [{run_name}]"
