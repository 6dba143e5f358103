"""Conversion: a folder of audio -> a folder of spectrogram PNGs (the study's images, or log-mel)
or a table of audio features, in worker processes. An image folder's settings are its identity
(conversion.json), one conversion at a time holds it (a lock taken over from a killed one), bad
files go to errors.csv; a feature table's rows are cached per clip and a table this source did
not extract is never replaced without overwrite. No torch.

Used by data_conversion.py (the command), compare.py's demo and the kernels.
"""
import contextlib
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

import audio
import common


def save_spectrogram_png(path, levels, cmap="magma"):
    """An indexed-colour PNG whose palette is the colormap and whose index is the dB level: it
    decodes to exactly the RGB image (every viewer, PIL's .convert("RGB"), torchvision), and
    its index array is the level itself (--input levels). 2.3x smaller and 4x faster to write
    than 24-bit RGB."""
    from PIL import Image
    image = Image.frombytes("P", levels.shape[::-1], np.ascontiguousarray(levels).tobytes())
    image.putpalette(audio.colormap_lut(cmap).tobytes())
    common.atomic_write(path, lambda f: image.save(f, format="PNG", compress_level=1), mode="wb")


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


def check_one_image_each(jobs):
    """song.mp3 and song.flac of one class would both write song.png: one line naming them."""
    by_image = {}
    for path, out_dir, _ in jobs:
        by_image.setdefault((out_dir, path.stem), []).append(path)
    same = next((paths for paths in by_image.values() if len(paths) > 1), None)
    if same:
        raise common.SuiteError(f"{same[0].parent}: {', '.join(p.name for p in same)} would make "
                                f"one image {same[0].stem}.png; keep one of them or rename the "
                                "others")


def check_segments(segment_seconds, paths):
    """Segments longer than every clip (by the files' headers) make no image at all: one line now,
    not a warning per file and then an error."""
    if not segment_seconds:
        return
    import soundfile
    durations = []
    for path in paths:
        with contextlib.suppress(Exception):
            info = soundfile.info(str(path))
            durations.append(info.frames / info.samplerate)
    if durations and max(durations) < segment_seconds:
        raise common.SuiteError(f"--segment-seconds {segment_seconds:g}: longer than every clip "
                                f"(the longest is {max(durations):.1f} s); use a shorter segment, "
                                "or 0 for whole clips")


def conversion_outputs(path, out_dir, sr, segment_seconds):
    """PNG paths a clip will produce, or None when it cannot be known without decoding."""
    count = expected_segment_count(path, sr, segment_seconds)
    if count is None:
        return None
    if not segment_seconds:
        return [out_dir / f"{path.stem}.png"]
    return [out_dir / f"{audio.segment_name(path.stem, i)}.png" for i in range(count)]


def convert_clip(job):
    """Worker: one audio file -> PNG(s). Returns (path, n_written, n_skipped, error or None)."""
    path, out_dir, settings = job
    outputs = conversion_outputs(path, out_dir, settings["sr"], settings["segment_seconds"])
    if outputs and all(o.exists() and o.stat().st_mtime >= path.stat().st_mtime for o in outputs):
        return path, 0, len(outputs), None
    try:
        images = audio.clip_images(path, settings)
        for i, levels in enumerate(images):
            name = audio.segment_name(path.stem, i) if settings["segment_seconds"] else path.stem
            save_spectrogram_png(out_dir / f"{name}.png", levels, settings["cmap"])
        return path, len(images), 0, None
    except Exception as e:  # a full disk is no bad clip: file_failure raises it
        return path, 0, 0, common.file_failure(e)


def check_mel(mel, sr):
    """Every mel band must get at least one STFT bin: an impossible --mel is one line."""
    import warnings

    def empty(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns of empty filters: we say it once
            return int((audio.mel_filters(sr, n).max(axis=1) == 0).sum())
    if mel and empty(mel):
        low, high = 1, mel  # the most bands with none empty, by bisection
        while high - low > 1:
            low, high = ((low + high) // 2, high) if not empty((low + high) // 2) else (low, (low + high) // 2)
        raise common.SuiteError(f"--mel {mel}: {empty(mel)} of the {mel} mel bands would be empty "
                                f"(the {audio.N_FFT}-sample STFT has {audio.N_FFT // 2 + 1} "
                                f"frequency bins at --sr {sr}); use at most {low}, e.g. 128")


@contextlib.contextmanager
def conversion_lock(out):
    """One conversion at a time into a folder: a second one started meanwhile is refused in one
    line (OUT/.converting holds the owner's pid; one left by a killed run is taken over). A
    folder made here and left empty by a refusal goes again."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".converting"
    mine = out / f".converting.{os.getpid()}"
    mine.write_text(str(os.getpid()))  # linked into place whole: a lock never lacks its owner
    try:
        for _ in range(2):
            try:
                os.link(mine, lock)
                break
            except FileExistsError:
                try:
                    owner = int(lock.read_text())
                except (OSError, ValueError):  # gone meanwhile, or not ours: no owner
                    owner = None
                if owner and process_alive(owner):
                    raise common.SuiteError(
                        f"{out}: another conversion (process {owner}) is writing into it; wait "
                        f"for it, or convert elsewhere (if none runs, delete {lock})") from None
                print(f"note: {lock} was left by a conversion that was killed (process "
                      f"{owner or '?'}); taking it over", file=sys.stderr)
                lock.unlink(missing_ok=True)
        else:
            raise common.SuiteError(f"{out}: another conversion took it over meanwhile; convert "
                                    "elsewhere")
        mine.unlink()
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
    finally:
        mine.unlink(missing_ok=True)
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def process_alive(pid):
    """Whether process `pid` runs (POSIX; elsewhere taken as running: the lock then stays)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's
        return True
    return True


def claim_image_folder(out, settings, src, overwrite=False):
    """Make `out` the home of images with these settings, or refuse in one line: images made
    with other settings (or of unknown settings) are replaced only with --overwrite, and a
    folder holding other files is never used."""
    recorded = out / audio.CONVERSION_FILE
    images = list(out.rglob("*.png"))
    foreign = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".png"
               and not p.name.startswith(".")  # interrupted writes (.x.png.123.tmp), the lock
               and p.name not in ("errors.csv", "split.json", audio.CONVERSION_FILE)]
    if foreign:
        raise common.SuiteError(f"{out}: holds files that are not images of this suite (e.g. "
                                f"{foreign[0].name}); convert into a new or empty folder")
    if images:
        before = audio.read_conversion(out) if recorded.exists() else None
        if before == settings:
            return  # the same identity: convert what is missing or stale
        if not overwrite:
            changed = "unknown settings, no " + audio.CONVERSION_FILE if before is None else ", ".join(
                f"--{k.replace('_', '-')} {before[k]} -> {settings[k]}"
                for k in settings if before[k] != settings[k])
            raise common.SuiteError(f"{out} holds images made with other settings ({changed}); "
                                    "convert into another folder, or add --overwrite to redo them all")
        for png in images:  # --overwrite: another identity, every image is redone
            png.unlink()
    common.write_json(recorded, {**settings, "source": str(Path(src).resolve())})


def convert_folder(src, out, settings, workers=1, labels_csv=None, labeled=True,
                   overwrite=False, deadline=None):
    """Convert a labeled tree (or a flat folder with labeled=False) to OUT/<genre>/<name>.png.

    Bad files: a warning line each, a row in OUT/errors.csv, the rest converted.
    Returns (converted files, skipped up-to-date files, errors) and raises when nothing converted.
    """
    settings = {**audio.CONVERSION_DEFAULTS, **settings}
    audio.colormap_lut(settings["cmap"])  # fail fast on a bad name
    check_mel(settings["mel"], settings["sr"])
    out = Path(out).resolve()
    if labeled:
        items = audio.list_labeled_audio(src, labels_csv)
        jobs = [(p, out / label, settings) for p, label in items]
    else:
        jobs = [(p, out, settings) for p in audio.list_audio(src)]
    source = Path(src).resolve()
    if out == source or source in out.parents:
        raise common.SuiteError(f"{out}: inside the input folder {source}; write the images elsewhere")
    check_one_image_each(jobs)
    check_segments(settings["segment_seconds"], [job[0] for job in jobs])
    common.check_output_folder(out, "output folder")
    with conversion_lock(out):
        claim_image_folder(out, settings, src, overwrite)
        for tmp in out.rglob(".*.tmp"):  # left by an interrupted run
            tmp.unlink(missing_ok=True)
        converted, skipped, errors = 0, 0, []
        try:
            for path, n_written, n_skipped, error in common.parallel_map(
                    convert_clip, jobs, workers, "convert", deadline=deadline):
                if error:
                    print(f"warning: skipped {path}: {error}", file=sys.stderr)
                    errors.append((str(path), error))
                converted += n_written > 0
                skipped += n_skipped > 0
        except BaseException:  # a full disk, Ctrl-C: the workers are gone; so are their temp files
            for tmp in out.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            raise
        common.write_csv(out / "errors.csv", ["file", "reason"], sorted(errors))
    if converted + skipped == 0:
        raise common.SuiteError(f"nothing converted: all {len(jobs)} files failed (see {out}/errors.csv)")
    return converted, skipped, errors


# ----------------------------------------------------------------------------------------------
# Features: audio -> one row per clip, the public GTZAN table's columns (train_mlp.py reads it)

def file_stamp(path):
    st = Path(path).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def feature_cache(path, feature_set, cache):
    """A clip's cached row: per file (its absolute path) and feature set, under `cache`."""
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:20]
    return Path(cache) / feature_set / f"{key}.json"


def cached_row(path, feature_set, cache):
    """The clip's cached row when the file has not changed since, else None (a damaged entry is
    recomputed; no cache: None)."""
    try:
        cached = json.loads(feature_cache(path, feature_set, cache).read_text())
        return cached["features"] if cached["stamp"] == file_stamp(path) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def feature_job(job):
    """Worker: (path, label, feature_set, cache or None) -> (path, label, row or None, error)."""
    path, label, feature_set, cache = job
    try:
        row = audio.audio_features(path, feature_set)
    except Exception as e:
        return path, label, None, common.file_failure(e)
    if cache:
        common.write_json(feature_cache(path, feature_set, cache),
                          {"path": str(path), "stamp": file_stamp(path), "features": row})
    return path, label, row, None


def check_feature_table(out_csv, src, feature_set, overwrite):
    """Refuse, in one line, to replace a table this source did not extract with this feature set
    (the public table, another folder's, a hand-made one) unless --overwrite."""
    out_csv = Path(out_csv)
    if out_csv.suffix != ".csv":
        raise common.SuiteError(f"--features {out_csv}: give the .csv file to write")
    source = Path(src).resolve()
    if source == out_csv.resolve().parent or source in out_csv.resolve().parents:
        raise common.SuiteError(f"--features {out_csv}: inside the audio folder {src}; write it "
                                "elsewhere")
    if out_csv.is_dir():
        raise common.SuiteError(f"--features {out_csv}: a folder; give the .csv file to write")
    common.check_output_folder(out_csv.parent, "--features")
    record = audio.feature_record(out_csv)
    ours = record and record.get("source") == str(source) and record["feature_set"] == feature_set
    for path in (out_csv, out_csv.with_suffix(".json")):
        if path.exists() and not ours and not overwrite:
            what = (f"a table of {count_rows(path)} rows" if path == out_csv else "a file") + (
                f" extracted from {record['source']} ({record['feature_set']})" if record
                else " not extracted from this folder")
            raise common.SuiteError(f"--features {out_csv}: {path.name} exists and holds {what}; "
                                    "write to another file, or replace it with --overwrite")


def count_rows(csv_path):
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            return max(0, sum(1 for _ in f) - 1)
    except (OSError, UnicodeDecodeError):
        return "?"


def extract_features(src, out_csv, feature_set="standard", workers=1, labels_csv=None,
                     deadline=None):
    """Labeled audio -> a CSV like the public GTZAN table (filename, features..., label), its
    errors beside it (OUT_errors.csv) and what made it (OUT.json). Rows of unchanged clips come
    from the cache. Returns (rows written, rows computed, errors)."""
    out_csv = Path(out_csv)
    rows, jobs, errors = {}, [], []
    clips = audio.list_labeled_audio(src, labels_csv)
    cache = common.usable_cache("features")
    for path, label in clips:
        row = cached_row(path, feature_set, cache) if cache else None
        if row is None:
            jobs.append((path, label, feature_set, cache))
        else:
            rows[path] = (label, row)
    for path, label, row, error in common.parallel_map(feature_job, jobs, workers, "features",
                                                       warm=common.FEATURE_MODULES,
                                                       deadline=deadline):
        if error:
            print(f"warning: skipped {path}: {error}", file=sys.stderr)
            errors.append((str(path), error))
        else:
            rows[path] = (label, row)
    if not rows:
        raise common.SuiteError(f"nothing extracted: all {len(jobs)} files failed")
    columns = audio.FEATURE_SETS[feature_set]
    common.write_csv(out_csv, ["filename", *columns, "label"],
                     [[p.name, *(row[c] for c in columns), label]
                      for p, (label, row) in sorted(rows.items())])
    common.write_csv(out_csv.with_name(out_csv.stem + "_errors.csv"), ["file", "reason"],
                     sorted(errors))
    common.write_json(out_csv.with_suffix(".json"), {"source": str(Path(src).resolve()),
                                                     "feature_set": feature_set, "rows": len(rows)})
    return len(rows), len(jobs) - len(errors), errors
