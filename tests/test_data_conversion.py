import contextlib
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import audio
import common
import conversion
import data_conversion
from conftest import SHARED_GTZAN, write_tone


def run(args, capsys):
    code = data_conversion.cli([str(a) for a in args])
    return code, capsys.readouterr()


def test_converts_tree_to_mirrored_pngs_with_study_orientation(tiny_audio, tmp_path, capsys):
    out = tmp_path / "img"
    code, cap = run([tiny_audio, out, "--size", "64", "--workers", "1"], capsys)
    assert code == 0
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted(p.relative_to(tiny_audio).with_suffix(".png").as_posix()
                          for p in tiny_audio.rglob("*.wav"))
    with Image.open(out / "blues" / "blues.00000.png") as png:
        assert png.mode == "P"  # indexed colour, the colormap as palette
        img = np.asarray(png.convert("RGB"))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    # a 200 Hz tone lights the bottom rows (low frequencies at the bottom), not the top
    brightness = img.astype(float).sum(axis=(1, 2))
    assert brightness.argmax() >= 60 and brightness[-4:].mean() > brightness[:4].mean() + 1000
    # every pixel is a colour of the magma table
    lut = {tuple(c) for c in audio.colormap_lut("magma")}
    assert all(tuple(px) in lut for px in img.reshape(-1, 3)[::97])
    assert json.loads((out / "conversion.json").read_text())["size"] == 64


def test_native_size_keeps_stft_shape(tiny_audio, tmp_path, capsys):
    out = tmp_path / "img"
    assert run([tiny_audio, out, "--size", "0", "--workers", "1"], capsys)[0] == 0
    img = np.asarray(Image.open(out / "pop" / "pop.00000.png").convert("RGB"))
    frames = 1 + audio.SR // audio.HOP
    assert img.shape == (1 + audio.N_FFT // 2, frames, 3)


def test_image_matches_specshow_rendering(tmp_path):
    """Same picture as the study's librosa.display.specshow (magma, origin lower), give or take
    resampling: mean absolute difference small compared with 255."""
    import matplotlib
    matplotlib.use("Agg")
    import librosa.display
    import matplotlib.pyplot as plt
    path = write_tone(tmp_path / "x.wav", 1000, seconds=3, noise=0.05)
    y = audio.load_audio(path)
    ours = np.take(audio.colormap_lut("magma"), audio.spectrogram_levels(y, 128), axis=0).astype(float)
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.axis("off")
    librosa.display.specshow(audio.spectrogram_db(y), sr=audio.SR, hop_length=audio.HOP, ax=ax)
    fig.savefig(tmp_path / "s.png")
    plt.close(fig)
    theirs = np.asarray(Image.open(tmp_path / "s.png").convert("RGB")).astype(float)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).mean() < 20


def test_segments_named_and_counted(tmp_path, capsys):
    src = tmp_path / "a"
    write_tone(src / "rock" / "rock.00000.wav", seconds=7.5)
    code, _ = run([src, tmp_path / "o", "--size", "32", "--segment-seconds", "3", "--workers", "1"], capsys)
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "o" / "rock").glob("*.png"))
    assert names == ["rock.00000__s00.png", "rock.00000__s01.png"]
    assert {audio.clip_id_of(n) for n in names} == {"rock.00000"}


def test_bad_files_are_warned_recorded_and_skipped(tiny_audio, tmp_path, capsys):
    (tiny_audio / "blues" / "empty.wav").write_bytes(b"")
    (tiny_audio / "blues" / "noise.wav").write_bytes(os.urandom(5000))
    import soundfile
    soundfile.write(tiny_audio / "metal" / "silent.wav", np.zeros(22050, np.float32), 22050)
    write_tone(tiny_audio / "pop" / "stereo44k.wav", 500, sr=44100, channels=2)
    write_tone(tiny_audio / "pop" / "short.wav", 500, seconds=0.5)
    out = tmp_path / "img"
    code, cap = run([tiny_audio, out, "--size", "32", "--segment-seconds", "1", "--workers", "2"], capsys)
    assert code == 0
    warnings = [line for line in cap.err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 4
    for name in ("empty.wav", "noise.wav", "silent.wav", "short.wav"):
        assert sum(name in w for w in warnings) == 1
    rows = (out / "errors.csv").read_text().splitlines()
    assert rows[0] == "file,reason" and len(rows) == 5
    assert "silent" in next(r for r in rows if "silent.wav" in r)
    assert "shorter than one" in next(r for r in rows if "short.wav" in r)
    assert (out / "pop" / "stereo44k__s00.png").exists()  # stereo 44.1 kHz: mixed to mono, works
    assert len(list(out.rglob("*.png"))) == 10


def test_stereo_is_mixed_to_mono_and_resampled(tmp_path):
    y = audio.load_audio(write_tone(tmp_path / "s.wav", 500, seconds=1, sr=44100, channels=2))
    assert y.ndim == 1 and len(y) == audio.SR and np.isclose(np.abs(y).max(), 1.0)


@pytest.mark.parametrize("case", ["missing", "empty", "genre_without_audio", "all_bad"])
def test_bad_input_one_line_nonzero_exit(case, tmp_path, capsys):
    src = tmp_path / "src"
    if case != "missing":
        src.mkdir()
    if case == "genre_without_audio":
        write_tone(src / "jazz" / "j.wav")
        (src / "rock").mkdir()
        (src / "rock" / "notes.txt").write_text("x")
    if case == "all_bad":
        (src / "jazz").mkdir()
        (src / "jazz" / "a.wav").write_bytes(b"")
    code, cap = run([src, tmp_path / "out"], capsys)
    assert code == 1
    errors = [line for line in cap.err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in cap.err
    if case == "genre_without_audio":
        assert "rock" in errors[0] and not (tmp_path / "out").exists()


def test_rerun_skips_up_to_date_and_finishes_interrupted(tiny_audio, tmp_path, capsys):
    out = tmp_path / "img"
    assert run([tiny_audio, out, "--size", "16", "--workers", "1"], capsys)[0] == 0
    # an interrupted run: one output never written, a temp file left behind
    (out / "metal" / "metal.00001.png").unlink()
    stale = out / "metal" / ".metal.00001.png.999.tmp"
    stale.write_bytes(b"\x89PNG half")
    code, cap = run([tiny_audio, out, "--size", "16", "--workers", "1"], capsys)
    assert code == 0 and "1 clips converted, 8 up to date" in cap.out
    assert not stale.exists()
    Image.open(out / "metal" / "metal.00001.png").verify()


def test_crash_while_writing_leaves_no_partial_png(tmp_path, monkeypatch):
    def broken_save(self, f, *a, **k):
        f.write(b"\x89PNG partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        conversion.save_spectrogram_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_demo_is_deterministic_and_classes_differ(tmp_path, capsys):
    import librosa
    for d in ("a", "b"):
        assert run(["--make-demo", tmp_path / d, "--clips-per-genre", "2", "--seconds", "2"], capsys)[0] == 0
    files = sorted((tmp_path / "a").rglob("*.wav"))
    assert len(files) == 20 and "SYNTHETIC" in (tmp_path / "a" / "README.txt").read_text()
    assert all(f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes() for f in files)
    centroid = {}
    for g in ("classical", "metal", "hiphop"):
        y, sr = librosa.load(tmp_path / "a" / g / f"{g}.00000.wav", sr=None)
        centroid[g] = librosa.feature.spectral_centroid(y=y, sr=sr).mean()
    assert centroid["metal"] > 1.5 * centroid["hiphop"]  # noisy and bright vs bass-heavy


def test_labels_csv_with_zero_padded_ids(tmp_path, capsys):
    flat = tmp_path / "train"
    write_tone(flat / "00001.wav", 300)
    write_tone(flat / "00002.wav", 3000)
    write_tone(flat / "00003.wav", 900)
    (tmp_path / "train.csv").write_text("id,genre\n1,slow\n2,fast\n")
    code, cap = run([flat, tmp_path / "o", "--labels", tmp_path / "train.csv", "--size", "16",
                     "--workers", "1"], capsys)
    assert code == 0 and "1 files have no label" in cap.err
    assert sorted(p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.png")) == \
        ["fast/00002.png", "slow/00001.png"]


@pytest.mark.skipif(not SHARED_GTZAN.exists(), reason="../shared/gtzan not present")
def test_real_gtzan_clip(tmp_path, capsys):
    src = tmp_path / "g"
    (src / "jazz").mkdir(parents=True)
    (src / "jazz" / "jazz.00000.wav").symlink_to(SHARED_GTZAN / "genres" / "jazz" / "jazz.00000.wav")
    code, _ = run([src, tmp_path / "o", "--segment-seconds", "3", "--size", "64", "--workers", "1"], capsys)
    assert code == 0
    assert len(list((tmp_path / "o" / "jazz").glob("*.png"))) == 10


def test_spectrogram_db_equals_librosa_amplitude_to_db(tmp_path):
    import librosa
    y = audio.load_audio(write_tone(tmp_path / "t.wav", 700, seconds=2, noise=0.01))
    expected = librosa.amplitude_to_db(np.abs(librosa.stft(y, n_fft=2048, hop_length=512)),
                                       ref=np.max, top_db=80)
    ours = audio.spectrogram_db(y)
    assert ours.shape == expected.shape and np.abs(ours - expected).max() < 1e-4
    assert ours.max() == 0 and ours.min() == -80


def test_mel_levels_are_librosas_log_mel(tmp_path, capsys):
    """--mel N: N log-mel rows (librosa.power_to_db of its melspectrogram, ref max, 80 dB), low
    frequencies at the bottom; the PNG's palette index is the level, its colours the colormap's."""
    import librosa
    path = write_tone(tmp_path / "a" / "pop" / "pop.00000.wav", 300, seconds=2, noise=0.01)
    assert run([tmp_path / "a", tmp_path / "o", "--size", "0", "--mel", "64", "--workers", "1"], capsys)[0] == 0
    with Image.open(tmp_path / "o" / "pop" / "pop.00000.png") as png:
        assert png.mode == "P"
        levels = np.asarray(png)
        rgb = np.asarray(png.convert("RGB"))
    y = audio.load_audio(path)
    mel = librosa.feature.melspectrogram(y=y, sr=audio.SR, n_fft=2048, hop_length=512, n_mels=64)
    db = librosa.power_to_db(mel, ref=np.max, top_db=80)
    expected = np.clip((db + 80) * 255 / 80 + 0.5, 0, 255).astype(np.uint8)[::-1]
    assert levels.shape == (64, 1 + 2 * audio.SR // 512)
    assert np.abs(levels.astype(int) - expected).max() <= 1
    assert levels[-8:].mean() > levels[:8].mean() + 50  # 300 Hz: the bottom rows are loud
    assert np.array_equal(rgb, audio.colormap_lut("magma")[levels])
    assert json.loads((tmp_path / "o" / "conversion.json").read_text())["mel"] == 64


def test_conversion_settings_are_the_folders_identity(tiny_audio, tmp_path, capsys):
    out = tmp_path / "img"
    assert run([tiny_audio, out, "--size", "16", "--workers", "1"], capsys)[0] == 0
    code, cap = run([tiny_audio, out, "--size", "32", "--workers", "1"], capsys)
    assert code == 1 and "--size 16 -> 32" in cap.err
    assert Image.open(out / "pop" / "pop.00000.png").size == (16, 16)  # nothing redone
    code, cap = run([tiny_audio, out, "--size", "32", "--overwrite", "--workers", "1"], capsys)
    assert code == 0 and "9 clips converted" in cap.out
    assert Image.open(out / "pop" / "pop.00000.png").size == (32, 32)
    assert json.loads((out / "conversion.json").read_text())["size"] == 32


# ----------------------------------------------------------------------------------------------
# Features: audio -> the public GTZAN table's columns

PUBLIC_CSV = SHARED_GTZAN / "features_30_sec.csv"


def table(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_extract_writes_gtzan_columns_caches_and_skips_bad(tiny_audio, tmp_path, capsys):
    """The table has the public table's columns, a bad file is warned and recorded; a rerun takes
    every unchanged clip from the cache (its entry untouched) and extracts a changed one again."""
    (tiny_audio / "pop" / "broken.wav").write_bytes(b"RIFF garbage")
    out = tmp_path / "f.csv"
    code, io = run([tiny_audio, "--features", out, "--workers", "2"], capsys)
    header, *rows = table(out)
    assert code == 0 and header == ["filename", *audio.FEATURE_COLUMNS, "label"] and len(rows) == 9
    assert "broken.wav" in io.err and "broken.wav" in (tmp_path / "f_errors.csv").read_text()
    assert "(9 extracted, 0 unchanged" in io.out
    entries = {p: p.stat().st_mtime_ns for p in common.cache_dir("features").rglob("*.json")}
    assert len(entries) == 9  # one per good clip, none for the broken one

    code, io = run([tiny_audio, "--features", out, "--workers", "1"], capsys)
    assert code == 0 and "(0 extracted, 9 unchanged" in io.out and table(out)[1:] == rows
    write_tone(tiny_audio / "pop" / "pop.00001.wav", 3000)  # a changed clip: extracted again
    code, io = run([tiny_audio, "--features", out, "--workers", "1"], capsys)
    assert code == 0 and "(1 extracted, 8 unchanged" in io.out
    changed = [r[0] for r, n in zip(rows, table(out)[1:]) if r != n]
    assert changed == ["pop.00001.wav"]
    touched = [p for p, t in entries.items() if p.stat().st_mtime_ns != t]
    assert len(touched) == 1 and "pop.00001.wav" in touched[0].read_text()


def test_a_damaged_cache_entry_is_recomputed(tiny_audio, tmp_path, capsys):
    out = tmp_path / "f.csv"
    assert run([tiny_audio, "--features", out, "--workers", "1"], capsys)[0] == 0
    rows = table(out)
    entry = sorted(common.cache_dir("features").rglob("*.json"))[0]
    entry.write_text(entry.read_text()[:40])  # cut short, as by a full disk
    code, io = run([tiny_audio, "--features", out, "--workers", "1"], capsys)
    assert code == 0 and "(1 extracted, 8 unchanged" in io.out and table(out) == rows


@pytest.mark.parametrize("existing", ["public", "other-source", "other-set"])
def test_extraction_never_replaces_a_table_it_did_not_make(existing, tiny_audio, tmp_path, capsys):
    """A table that holds something else (the public table, another folder's features, another
    feature set) is refused in one line, untouched; --overwrite replaces it."""
    out = tmp_path / "features.csv"
    if existing == "public":
        out.write_text("filename,length,label\n" + "".join(f"x.{i}.wav,1,blues\n" for i in range(1000)))
    else:
        other = tiny_audio if existing == "other-set" else write_tone(
            tmp_path / "other" / "rock" / "r.wav", 300).parent.parent
        assert run([other, "--features", out, "--workers", "1"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    feature_set = ["--feature-set", "extended"] if existing == "other-set" else []
    code, io = run([tiny_audio, "--features", out, *feature_set], capsys)
    assert code == 1 and io.err.count("\n") == 1 and "--overwrite" in io.err
    assert ("1000 rows" in io.err) if existing == "public" else ("extracted from" in io.err)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert run([tiny_audio, "--features", out, *feature_set, "--overwrite"], capsys)[0] == 0
    assert len(table(out)) == 10


def test_train_mlp_extract_is_gone_in_one_line(tmp_path, capsys):
    import train_mlp
    assert train_mlp.cli(["--extract", "audio", "--features", str(tmp_path / "f.csv")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data_conversion.py audio --features" in err


@pytest.mark.skipif(not PUBLIC_CSV.exists(), reason="../shared/gtzan not present")
def test_extraction_agrees_with_public_csv():
    with open(PUBLIC_CSV) as f:
        public = {r["filename"]: r for r in csv.DictReader(f)}
    for name in ("blues.00001.wav", "metal.00003.wav"):
        ours = audio.audio_features(SHARED_GTZAN / "genres" / name.split(".")[0] / name)
        theirs = public[name]
        for column, value in ours.items():
            expected = float(theirs[column])
            if column in ("harmony_mean", "perceptr_mean"):  # means near zero
                assert abs(value - expected) < 1e-4, column
            else:
                assert value == pytest.approx(expected, rel=0.01), column


def test_hpss_median_filter_is_scipys_exactly():
    from scipy.ndimage import median_filter
    rng = np.random.default_rng(0)
    for frames in (3, 5, 16, 40):  # a clip has 5 frames or more; windows wider than the row too
        x = rng.random((30, frames)).astype(np.float32)
        assert np.array_equal(audio._median_filter_rows(x, 31),
                              median_filter(x, size=(1, 31), mode="reflect")), frames


def librosa_row(y, sr):
    """The public table's way: each feature from the waveform with its own librosa call (reflect
    padding and the old HPSS tail, as librosa < 0.10 did), HPSS with scipy's n-D median filter."""
    import librosa
    features = {"chroma_stft": librosa.feature.chroma_stft(y=y, sr=sr, pad_mode="reflect"),
                "rms": librosa.feature.rms(y=y, pad_mode="reflect"),
                "spectral_centroid": librosa.feature.spectral_centroid(y=y, sr=sr, pad_mode="reflect"),
                "spectral_bandwidth": librosa.feature.spectral_bandwidth(y=y, sr=sr, pad_mode="reflect"),
                "rolloff": librosa.feature.spectral_rolloff(y=y, sr=sr, pad_mode="reflect"),
                "zero_crossing_rate": librosa.feature.zero_crossing_rate(y)}
    stft = librosa.stft(y, pad_mode="reflect")
    for name, part in zip(("harmony", "perceptr"), librosa.decompose.hpss(stft)):
        features[name] = librosa.util.fix_length(librosa.istft(part, dtype=y.dtype), size=len(y))
    for i, row in enumerate(librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, pad_mode="reflect"), 1):
        features[f"mfcc{i}"] = row
    onset_env = librosa.onset.onset_strength(y=y, sr=sr, aggregate=np.median, pad_mode="reflect")
    row = {"length": len(y), "tempo": librosa.feature.tempo(onset_envelope=onset_env, sr=sr)[0]}
    for name, x in features.items():
        row[f"{name}_mean"], row[f"{name}_var"] = np.mean(x), np.var(x)
    return row


def test_features_equal_librosa_feature_by_feature():
    """clip_features' shortcuts (one STFT, HPSS medians through scipy's 1-D filter, the percussive
    part as y - harmonic) leave every column as librosa computes it, to 1e-5 of its scale."""
    sr = 22050
    rng = np.random.default_rng(0)
    t = np.arange(int(3.3 * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * 55 * t)                        # bass at the lowest bins
         + 0.2 * np.sin(2 * np.pi * (300 + 400 * t) * t)         # a sweep
         + 0.1 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0.7)  # noise bursts
         + 0.5 * (np.arange(t.size) % (sr // 4) < 50))           # clicks
    y = y.astype(np.float32)
    ours, theirs = audio.clip_features(y, sr), librosa_row(y, sr)
    assert list(ours) == audio.FEATURE_COLUMNS
    for column, value in ours.items():
        # a mean's scale is its spread (the mean of a waveform is near zero)
        scale = np.sqrt(theirs[column[:-4] + "var"]) if column.endswith("_mean") else 0
        assert abs(value - theirs[column]) <= 1e-5 * max(abs(theirs[column]), scale), column
    extended = audio.clip_features(y, sr, "extended")
    assert {c: extended[c] for c in audio.FEATURE_COLUMNS} == ours


def test_extended_feature_set_adds_columns(tiny_audio, tmp_path, capsys):
    out = tmp_path / "ext.csv"
    assert run([tiny_audio, "--features", out, "--feature-set", "extended", "--workers", "1"], capsys)[0] == 0
    with open(out) as f:
        header, first, *_ = list(csv.reader(f))
    assert header == ["filename", *audio.FEATURE_COLUMNS, *audio.EXTENDED_COLUMNS, "label"]
    assert all(np.isfinite(float(v)) for v in first[1:-1])




def children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def alive(pid):
    """Running (a zombie no one reaps, as a container's first process may leave it, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc and death signal")
def test_kill_9_leaves_no_worker_behind_and_the_next_run_takes_the_lock_over(tmp_path):
    """kill -9 of a conversion: its workers end at once and quietly (no BrokenPipeError
    tracebacks), and the lock it left is taken over by the next conversion with one line."""
    import signal
    import subprocess
    for g in ("blues", "metal", "pop"):
        for i in range(10):
            write_tone(tmp_path / "audio" / g / f"{g}.{i:05d}.wav", 200 * (i + 1), seconds=30)
    command = [sys.executable, str(Path(data_conversion.__file__)), str(tmp_path / "audio"),
               str(tmp_path / "out"), "--size", "64", "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    for _ in range(600):  # until the workers are at work (an image written)
        workers = children(process.pid)
        if len(workers) == 2 and any((tmp_path / "out").rglob("*.png")):
            break
        time.sleep(0.05)
    assert len(workers) == 2, "the conversion did not start its workers"
    process.send_signal(signal.SIGKILL)
    err = process.communicate(timeout=30)[1]  # the pipe closes as the workers exit...
    for _ in range(600):  # ...but an exiting process closes its files before it is gone
        if not any(alive(w) for w in workers):
            break
        time.sleep(0.05)
    assert not any(alive(w) for w in workers)
    assert "Traceback" not in err and (tmp_path / "out" / ".converting").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    notes = [line for line in again.stderr.splitlines() if "taking it over" in line]
    assert len(notes) == 1 and f"process {process.pid}" in notes[0]
    assert not (tmp_path / "out" / ".converting").exists()


def test_a_files_failure_is_its_reason_but_a_full_disk_stops_the_work():
    """What the pools (conversion, features, prediction, CNN14's windows) record for a file that
    failed: our reason, or a decoder's exception by name; a SuiteError that is no fault of the
    file (a full disk) goes up and stops the work."""
    assert common.file_failure(common.BadAudio(Path("a.wav"), "silent")) == "silent"
    assert common.file_failure(ValueError("bad header")) == "ValueError: bad header"
    with pytest.raises(common.SuiteError, match="disk"):
        common.file_failure(common.SuiteError("the disk is full"))
