"""The shared core of the music-genre suite: what every script needs, whatever it does.

Errors and the one-line user error, argument helpers, progress lines, files written whole or not
at all, the cache folder, and the process pool for audio work. No torch at import (nor in
audio.py), so data_conversion.py, which never trains, starts without it.

The rest of the shared code lives in modules named by what they hold, in the order the data
flows; an import never runs back up it (README, Layout):
    audio.py          listing and decoding audio, spectrograms, audio features (no torch)
    conversion.py     audio folders -> image folders and feature tables, in workers (no torch)
    data.py           image datasets, batch augmentation, splits
    models.py         every network, build_model, pretrained weights and their checks
    training.py       device, processes, batches, fit, checkpoints, evaluation and metrics
    reports.py        a part's test report: figures, plots, caveats
    runs.py           trainer flags, the run folder (written and read), summaries
    kaggle_client.py  the authenticated Kaggle client
    uncertainty.py    95 % intervals of test figures and K-fold means, paired tests (no torch)
"""

import argparse
import contextlib
import csv
import errno
import functools
import json
import math
import os
import re
import sys
import time
from pathlib import Path

# ----------------------------------------------------------------------------------------------
# Errors and command lines: a user's mistake is one line on stderr and an exit code, never a
# traceback (1 for bad input, 2 for Kaggle credentials and refusals, 130 for Ctrl-C)


class SuiteError(Exception):
    """A user's mistake or bad input: printed as one line, never as a traceback."""

    def __init__(self, message, code=1, status=None, answer=""):
        super().__init__(message)
        self.code = code
        self.status = status   # a failed HTTP call's status (kaggle_client.kaggle_error)
        self.answer = answer   # and the message the server gave with it


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


def refuse_unused(parser, args, flags, why):
    """A flag given (not at its default) that the chosen model, schedule or task does not use is one
    line saying so, never silently ignored."""
    for flag in flags:
        if getattr(args, flag) != parser.get_default(flag):
            raise SuiteError(f"--{flag.replace('_', '-')}: {why}")


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
    """Write via a temp file in the same folder and rename, so a crash never leaves half a file.
    Through a symlink the target is written (the link stays); what is not a regular file (a
    device, a pipe, a folder) is never renamed over."""
    path = real_file(path, "")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            write_fn(f)
        os.replace(tmp, path)
    except Exception as e:
        if disk_full(e):  # not a bug nor bad input: one line; the old file (if any) stays whole
            raise SuiteError(f"{path.parent}: the disk is full (writing {path.name}); free some "
                             "space and run the command again") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def disk_full(error):
    """Whether `error` comes of a full disk or quota: an OSError ENOSPC/EDQUOT, raised or the
    cause of what was (torch's writer raises a RuntimeError while handling it)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def write_json(path, obj):
    atomic_write(path, lambda f: json.dump(obj, f, indent=2))


def write_csv(path, header, rows):
    def write(f):
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    atomic_write(path, write)


def real_file(path, what):
    """The file that writing `path` should replace: itself, or a symlink's target; one line
    naming `what` when that is something other than a regular file."""
    path = Path(path)
    try:
        target = path.resolve() if path.is_symlink() else path
    except (OSError, RuntimeError):  # a loop of links
        raise SuiteError(f"{what} {path}: a symlink that leads nowhere".lstrip()) from None
    if target.exists() and not target.is_file():
        kind = "a folder" if target.is_dir() else "not a regular file (a device or a pipe?)"
        raise SuiteError(f"{what} {path}: {kind}; not replacing it, give a file name".lstrip())
    return target


def check_output_file(path, what):
    """Fail now, in one line naming the flag, unless `path` can be written as a regular file
    (through a symlink: its target). Returns the file to write."""
    target = real_file(path, what)
    check_output_folder(target.parent, what)
    return target


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


def usable_cache(kind, folder=None, flag=None):
    """The cache folder to use, checked before any work. A folder the user named (`flag`) must
    be writable (one line, exit 1); the suite's own cache that cannot be written (read-only, a
    file, a read-only home) is left out with one line, as it costs time, never results.
    Returns the folder, or None: no cache."""
    if folder:
        return check_output_folder(folder, flag)
    folder = cache_dir(kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        reason = None if writable(folder) else "not writable"
    except OSError as e:
        reason = e.strerror or type(e).__name__
    if reason:
        print(f"note: the cache {folder} cannot be used ({reason}); going on without it (set "
              "$SUITE_CACHE to a writable folder to keep this work for the next run)",
              file=sys.stderr)
        return None
    return folder


# ----------------------------------------------------------------------------------------------
# Processes: worker pools for audio (decoding and features run in processes, one thread each)

def file_failure(error):
    """Why one file of a pool's work failed, for its warning (and errors.csv): our BadAudio's
    reason, else the exception's type and text, so that a decoder's crash on one file does not
    stop the others. Any other SuiteError (a full disk) is not the file's fault: it is raised."""
    if isinstance(error, BadAudio):
        return error.reason
    if isinstance(error, SuiteError):
        raise error
    return f"{type(error).__name__}: {error}"


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
