"""Prediction from a saved model.pt and submission to Kaggle (through the Kaggle twin)."""
import csv
import json

import pytest

import audio
import data
import data_conversion
import predict
import train_cnn
from conftest import write_tone


@pytest.fixture
def trained(tiny_audio, tmp_path):
    images = tmp_path / "img"
    assert data_conversion.cli([str(tiny_audio), str(images), "--size", "32",
                                 "--segment-seconds", "0.5", "--workers", "1"]) == 0
    assert train_cnn.cli(["--data", str(images), "--img-size", "16", "--epochs", "3",
                           "--out", str(tmp_path / "runs"), "--name", "r"]) == 0
    return tmp_path / "runs" / "r" / "model.pt"


@pytest.fixture
def test_dir(tmp_path):
    d = tmp_path / "test"
    write_tone(d / "0001.wav", 210)
    write_tone(d / "0002.wav", 2050, seconds=1.2)
    (d / "0003.wav").write_bytes(b"not audio at all")
    return d


def test_predict_writes_submission_and_lists_bad_files(trained, test_dir, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert predict.cli([str(trained), str(test_dir), "--output", str(out),
                         "--workers", "1", "--id-col", "file", "--label-col", "genre"]) == 0
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["file", "genre"]
    assert [r[0] for r in rows[1:]] == ["0001.wav", "0002.wav", "0003.wav"]  # every test file
    model, saved = predict.load_model(trained)
    assert rows[3][1] == saved["fallback_class"]  # unreadable: the fallback class
    assert "0003.wav" in capsys.readouterr().err
    assert "0003.wav" in (tmp_path / "sub_errors.csv").read_text()
    # the record of the run's last prediction stays with the run, wherever the CSV went
    record = json.loads((trained.parent / "prediction.json").read_text())
    assert record["files"] == 3 and record["unreadable"] == 1


def test_all_readable_says_nothing_of_unreadable_files(trained, tmp_path, capsys):
    write_tone(tmp_path / "ok" / "1.wav", 210)
    assert predict.cli([str(trained), str(tmp_path / "ok"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "unreadable" not in out
    record = json.loads((trained.parent / "prediction.json").read_text())
    assert record["files"] == 1 and record["unreadable"] == 0 and record["seconds_per_clip"] > 0
    assert f"{record['seconds_per_clip']:.3f} s per clip" in out  # what compare.py shows


def test_the_run_folder_stands_for_its_model(trained, test_dir, capsys):
    assert predict.cli([str(trained.parent), str(test_dir), "--workers", "1"]) == 0
    assert (trained.parent / "submission.csv").is_file()


def test_a_model_of_the_synthetic_demo_says_so_when_it_labels_music(tmp_path, capsys):
    """A model trained on the demo data (not music) labels audio with a note saying so."""
    data_conversion.make_demo(tmp_path / "demo", clips_per_genre=3, seconds=1.0)
    assert data_conversion.cli([str(tmp_path / "demo"), str(tmp_path / "img"), "--size", "16",
                                 "--workers", "1"]) == 0
    assert train_cnn.cli(["--data", str(tmp_path / "img"), "--img-size", "16", "--epochs", "1",
                           "--out", str(tmp_path / "runs"), "--name", "d"]) == 0
    write_tone(tmp_path / "music" / "1.wav", 440)
    capsys.readouterr()
    assert predict.cli([str(tmp_path / "runs" / "d"), str(tmp_path / "music"), "--workers", "1"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note")]
    assert notes == ["note: this model was trained on SYNTHETIC demo data: its labels say nothing "
                     "about music"]


def test_prediction_uses_training_preprocessing(trained, tiny_audio):
    """The audio -> segments -> image path of prediction gives the logits of the training images."""
    import numpy as np
    import torch
    model, ckpt = predict.load_model(trained)
    pre = ckpt["spec"]["preprocess"]
    assert pre == {"type": "image", "size": 32, "sr": audio.SR, "segment_seconds": 0.5,
                   "cmap": "magma", "mel": 0, "img_size": 16, "channels": "rgb"}
    path = tiny_audio / "metal" / "metal.00001.wav"
    _, inputs, error, _ = predict.model_inputs((path, pre))
    images_dir = trained.parents[2] / "img" / "metal"
    decoded = torch.stack([data.decode_image(p, 16) for p in sorted(images_dir.glob("metal.00001__s*.png"))])
    assert error is None and np.array_equal(inputs, decoded.numpy())


def test_predict_submit_dry_run_and_twin(trained, test_dir, kaggle_twin, capsys):
    """predict --submit sends the CSV it wrote through the real kaggle client (to the twin);
    --dry-run sends nothing."""
    base = [str(trained), str(test_dir), "--workers", "1", "--submit", "comp"]
    assert predict.cli(base + ["--dry-run"]) == 0
    assert "dry run: would submit" in capsys.readouterr().out and not kaggle_twin.requests
    assert predict.cli(base + ["-m", "first try"]) == 0
    sent = kaggle_twin.submissions[0]
    assert sent["content"] == (trained.parent / "submission.csv").read_bytes().decode()
    assert sent["competition"] == "comp" and sent["description"].startswith("first try")


def test_refused_submission_exit_2_keeps_csv(trained, test_dir, kaggle_twin, capsys):
    kaggle_twin.refuse_upload = True
    assert predict.cli([str(trained), str(test_dir), "--workers", "1", "--submit", "c"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "refused" in errors[0] and "Traceback" not in err
    assert (trained.parent / "submission.csv").exists()


def test_no_credentials_exit_2(trained, test_dir, no_kaggle_credentials, capsys):
    assert predict.cli([str(trained), str(test_dir), "--workers", "1", "--submit", "c"]) == 2
    assert "Kaggle credentials not found" in capsys.readouterr().err


def test_trainer_predict_flag(tiny_audio, test_dir, tmp_path):
    images = tmp_path / "img2"
    assert data_conversion.cli([str(tiny_audio), str(images), "--size", "16", "--workers", "1"]) == 0
    assert train_cnn.cli(["--data", str(images), "--img-size", "16", "--epochs", "1", "--out",
                           str(tmp_path / "runs"), "--name", "p", "--predict", str(test_dir)]) == 0
    assert len(list(csv.reader(open(tmp_path / "runs" / "p" / "submission.csv")))) == 4


def test_bad_model_file(tmp_path, test_dir, capsys):
    (tmp_path / "model.pt").write_bytes(b"junk")
    assert predict.cli([str(tmp_path / "model.pt"), str(test_dir)]) == 1
    assert "not a model.pt" in capsys.readouterr().err


def test_prediction_repeats_mel_levels_preprocessing(tiny_audio, tmp_path):
    """A SpecNet on 0.5-s log-mel segments read as levels: prediction's input from the audio
    equals the decoded training PNGs."""
    import numpy as np
    import torch
    images = tmp_path / "mel"
    assert data_conversion.cli([str(tiny_audio), str(images), "--size", "0", "--mel", "32",
                                 "--segment-seconds", "0.5", "--workers", "1"]) == 0
    assert train_cnn.cli(["--data", str(images), "--model", "specnet", "--epochs", "1",
                           "--out", str(tmp_path / "runs"), "--name", "m"]) == 0
    _, ckpt = predict.load_model(tmp_path / "runs" / "m" / "model.pt")
    pre = ckpt["spec"]["preprocess"]
    assert (pre["mel"], pre["channels"], pre["img_size"]) == (32, "levels", 0)
    path = tiny_audio / "pop" / "pop.00002.wav"
    _, inputs, error, _ = predict.model_inputs((path, pre))
    decoded = torch.stack([data.decode_image(p, 0, "levels")
                           for p in sorted((images / "pop").glob("pop.00002__s*.png"))])
    assert error is None and np.array_equal(inputs, decoded.numpy())


def test_a_model_stopped_by_the_time_limit_says_so_where_it_predicts(tiny_audio, test_dir,
                                                                     tmp_path, capsys):
    """A run stopped by --time-limit (metrics complete: false) predicts with a note saying the
    model did not finish training; once resumed to the end, it no longer says so."""
    import time
    images = tmp_path / "img"
    assert data_conversion.cli([str(tiny_audio), str(images), "--size", "16", "--workers",
                                 "1"]) == 0
    run = tmp_path / "runs" / "r"
    assert train_cnn.cli(["--data", str(images), "--epochs", "2", "--out", str(tmp_path / "runs"),
                           "--name", "r", "--time-limit", "1h"], started=time.time() - 7200) == 0
    capsys.readouterr()
    assert predict.cli([str(run), str(test_dir), "--workers", "1"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "did not finish" in line]
    assert notes == ["note: this model did not finish training: stopped at the time limit after "
                     "epoch 0 of 2 (continue the run with --resume)"]
    assert train_cnn.cli(["--resume", str(run)]) == 0
    capsys.readouterr()
    assert predict.cli([str(run), str(test_dir), "--workers", "1"]) == 0
    assert "did not finish" not in capsys.readouterr().err
