"""User mistakes and bad input, table-driven: each case is one command line that must end with
one line naming the culprit on stderr, the right exit code, no traceback, and nothing already
there lost or changed. A new case is one line in CASES.

The world every case runs in (built once): audio, images converted from it, a features table,
a finished run with its model.pt, a folder made read-only, and files that are wrong in the ways
users get them wrong.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import audio
import common
import compare
import data_conversion
import predict
import runs
import train_cnn
import train_mlp
import train_transfer
from conftest import ctrl_c_after, make_images, write_tone

SCRIPTS = {"convert": data_conversion.cli, "cnn": train_cnn.cli, "transfer": train_transfer.cli,
           "mlp": train_mlp.cli, "compare": compare.cli, "predict": predict.cli}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    audio = w / "audio"
    for g, base in (("blues", 200.0), ("metal", 2000.0), ("pop", 800.0)):
        for i in range(3):
            write_tone(audio / g / f"{g}.{i:05d}.wav", base * (1 + 0.1 * i), noise=0.01, seed=i)
    assert data_conversion.cli([str(audio), str(w / "images"), "--size", "16", "--workers", "1"]) == 0
    assert data_conversion.cli([str(audio), str(w / "mel"), "--size", "0", "--mel", "16",
                                 "--segment-seconds", "0.7", "--workers", "1"]) == 0  # 16 x 31
    assert data_conversion.cli([str(audio), "--features", str(w / "features.csv"),
                           "--workers", "1"]) == 0
    assert train_cnn.cli(["--data", str(w / "images"), "--epochs", "1", "--out", str(w / "runs"),
                           "--name", "r1", "--workers", "1"]) == 0
    shutil.copytree(w / "runs" / "r1", w / "runs" / "r2")  # a run killed before its end
    (w / "runs" / "r2" / "checkpoint.pt").write_bytes(b"")
    (w / "runs" / "r2" / "metrics.json").unlink()  # killed before its test: not finished
    write_tone(w / "test" / "0001.wav", 300)
    (w / "empty").mkdir()
    (w / "readonly").mkdir()
    (w / "readonly").chmod(0o555)
    (w / "flat").mkdir()
    write_tone(w / "flat" / "1.wav", 300)
    write_tone(w / "flat" / "2.wav", 3000)
    (w / "dup_labels.csv").write_text("id,label\n1,slow\n2,fast\n001,fast\n")
    (w / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (w / "not_a_split.json").write_text("[1, 2")
    split = json.loads((w / "images" / "split.json").read_text())
    (w / "two_parts.json").write_text(json.dumps({**split, "val": split["val"] + split["test"][:1]}))
    saved = torch.load(w / "runs" / "r1" / "model.pt", weights_only=True)
    torch.save({**saved, "classes": saved["classes"] + ["rock"]}, w / "four_classes.pt")
    (w / "junk.pt").write_bytes(b"junk")
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), w / "resnet.pth")
    one_class = (w / "features.csv").read_text().replace(",metal\n", ",blues\n").replace(",pop\n", ",blues\n")
    (w / "one_class.csv").write_text(one_class)
    write_tone(w / "short" / "rock" / "tiny.wav", 300, seconds=0.04)
    write_tone(w / "short" / "jazz" / "tiny2.wav", 300, seconds=0.04)
    (w / "sample.csv").write_bytes(b"\x00\x01")
    shutil.copytree(w / "runs" / "r1", w / "runs_copy" / "r1")
    (w / "a_file").write_text("x")
    (w / "special").mkdir()
    model = (w / "runs" / "r1" / "model.pt").read_bytes()
    (w / "cut.pt").write_bytes(model[:len(model) // 2])  # a copy cut short
    assert train_mlp.cli(["--features", str(w / "features.csv"), "--baseline", "svm", "--out",
                           str(w / "svm_runs"), "--name", "svm"]) == 0
    joblib_bytes = (w / "svm_runs" / "svm" / "model.joblib").read_bytes()
    (w / "cut.joblib").write_bytes(joblib_bytes[:len(joblib_bytes) // 2])
    write_tone(w / "samestem" / "blues" / "song.wav", 300)
    write_tone(w / "samestem" / "blues" / "song.flac", 400)  # both would be blues/song.png
    write_tone(w / "samestem" / "pop" / "other.wav", 500)
    (w / "demo_pub").mkdir()
    shutil.copy(w / "features.csv", w / "demo_pub" / "features.csv")  # not the demo's table
    os.mkfifo(w / "special" / "pipe")  # not a regular file, as a device node is not
    (w / "other_sample.csv").write_text("id,label\nabc,pop\ndef,rock\n")
    (w / "folds" / "fold1").mkdir(parents=True)
    shutil.copy(w / "runs" / "r1" / "model.pt", w / "folds" / "fold1" / "model.pt")
    return w


def snapshot(root):
    """Every file with its size and time, every folder by name."""
    return sorted((str(p.relative_to(root)), *((p.stat().st_size, p.stat().st_mtime_ns)
                                                if p.is_file() else ()))
                  for p in root.rglob("*") if "__pycache__" not in p.parts)


# (id, script, arguments with {w} for the world folder, exit code, words the error line holds)
CASES = [
    # conversion
    ("convert-missing-src", "convert", "{w}/nope {w}/out", 1, "nope"),
    ("convert-other-size", "convert", "{w}/audio {w}/images --size 32", 1, "--size 16 -> 32"),
    ("convert-add-segments", "convert", "{w}/audio {w}/images --size 16 --segment-seconds 0.5", 1, "--segment-seconds"),
    ("convert-into-input", "convert", "{w}/audio {w}/audio/images", 1, "inside the input folder"),
    ("convert-read-only-out", "convert", "{w}/audio {w}/readonly/out", 1, "not writable"),
    ("convert-out-is-file", "convert", "{w}/audio {w}/a_file", 1, "is a file"),
    ("convert-labels-missing", "convert", "{w}/flat {w}/o --labels {w}/nope.csv", 1, "--labels"),
    ("convert-labels-binary", "convert", "{w}/flat {w}/o --labels {w}/binary.bin", 1, "--labels"),
    ("convert-labels-twice", "convert", "{w}/flat {w}/o --labels {w}/dup_labels.csv", 1, "two labels"),
    ("convert-bad-cmap", "convert", "{w}/audio {w}/o --cmap nope", 1, "--cmap"),
    ("convert-sr-0", "convert", "{w}/audio {w}/o --sr 0", 1, "--sr"),
    ("convert-negative-size", "convert", "{w}/audio {w}/o --size -4", 1, "--size"),
    ("convert-mel-more-than-bins", "convert", "{w}/audio {w}/o --mel 5000", 1, "--mel 5000"),
    ("demo-into-other-folder", "convert", "--make-demo {w}/audio", 1, "not a demo folder"),
    ("convert-same-stem", "convert", "{w}/samestem {w}/o", 1, "song.flac, song.wav would make one image song.png"),
    ("convert-csv-as-source", "convert", "{w}/features.csv {w}/o", 1, "a file, not a folder"),
    ("convert-labels-on-genre-tree", "convert", "{w}/audio {w}/o --labels {w}/dup_labels.csv", 1, "leave out --labels"),
    ("convert-segments-longer-than-clips", "convert", "{w}/audio {w}/o --segment-seconds 60", 1, "longer than every clip"),
    ("demo-zero-clips", "convert", "--make-demo {w}/d --clips-per-genre 0", 1, "--clips-per-genre"),
    ("unknown-flag", "convert", "{w}/audio {w}/o --sise 32", 1, "--sise"),
    # training: ranges
    ("epochs-0", "cnn", "--data {w}/images --epochs 0", 1, "--epochs"),
    ("lr-negative", "cnn", "--data {w}/images --lr -1", 1, "--lr"),
    ("batch-size-0", "cnn", "--data {w}/images --batch-size 0", 1, "--batch-size"),
    ("batch-size-negative", "cnn", "--data {w}/images --batch-size -4", 1, "--batch-size"),
    ("folds-1", "cnn", "--data {w}/images --folds 1", 1, "--folds"),
    ("folds-negative", "cnn", "--data {w}/images --folds -3", 1, "--folds"),
    ("folds-too-many", "cnn", "--data {w}/images --folds 5 --out {w}/runs", 1, "--folds 5"),
    ("patience-0", "cnn", "--data {w}/images --patience 0", 1, "--patience"),
    ("schedule-unknown", "cnn", "--data {w}/images --schedule step", 1, "--schedule"),
    ("cosine-with-patience", "mlp", "--features {w}/features.csv --schedule cosine --patience 3", 1,
     "--patience: no early stopping with --schedule cosine"),
    ("specnet-with-min-epochs", "cnn", "--data {w}/images --model specnet --min-epochs 5", 1,
     "--min-epochs: no early stopping with --schedule cosine"),
    ("workers-0", "cnn", "--data {w}/images --workers 0", 1, "--workers"),
    ("img-size-0-convolneunet", "cnn", "--data {w}/images --img-size 0", 1, "--img-size 0"),
    ("img-size-negative", "cnn", "--data {w}/images --img-size -4", 1, "--img-size"),
    ("img-size-not-multiple-of-8", "cnn", "--data {w}/images --img-size 20", 1, "multiple of 8"),
    ("specnet-img-size-7", "cnn", "--data {w}/images --model specnet --img-size 7", 1, "--img-size 7"),
    ("specnet-img-size-12", "cnn", "--data {w}/images --model specnet --img-size 12", 1, "16 px"),
    ("convolneunet-on-non-square", "cnn", "--data {w}/mel", 1, "(16x31, no --img-size)"),
    ("transfer-img-size-8", "transfer", "--data {w}/images --weights none --img-size 8", 1, "--img-size 8"),
    ("transfer-unknown-arch", "transfer", "--data {w}/images --arch vgg17", 1, "vgg17"),
    ("transfer-weights-missing", "transfer", "--data {w}/images --arch resnet18 --weights {w}/nope.pth", 1, "--weights"),
    ("transfer-weights-junk", "transfer", "--data {w}/images --arch resnet18 --weights {w}/junk.pt", 1, "--weights"),
    ("head-dropout-1", "transfer", "--data {w}/images --head-dropout 1", 1, "--head-dropout"),
    ("cnn14-on-images", "transfer", "--data {w}/images --arch cnn14 --weights none --out {w}/runs", 1, "spectrogram images"),
    ("cnn14-weights-of-resnet", "transfer", "--data {w}/audio --arch cnn14 --weights {w}/resnet.pth --out {w}/runs", 1, "resnet.pth is not CNN14"),
    ("cnn14-weights-junk", "transfer", "--data {w}/audio --arch cnn14 --weights {w}/junk.pt --out {w}/runs", 1, "junk.pt"),
    ("cnn14-imagenet", "transfer", "--data {w}/audio --arch cnn14 --weights imagenet", 1, "AudioSet"),
    ("vgg16-panns", "transfer", "--data {w}/images --arch vgg16 --weights panns", 1, "ImageNet"),
    ("cnn14-rotate", "transfer", "--data {w}/audio --arch cnn14 --augment rotate", 1, "--augment rotate"),
    ("cnn14-frozen-specaugment", "transfer", "--data {w}/audio --arch cnn14 --augment specaugment", 1, "--finetune"),
    ("cnn14-clip-seconds-0", "transfer", "--data {w}/audio --arch cnn14 --clip-seconds 0", 1, "--clip-seconds"),
    ("images-labels", "transfer", "--data {w}/images --labels {w}/dup_labels.csv", 1, "--labels"),
    ("images-clip-seconds", "transfer", "--data {w}/images --clip-seconds 5", 1, "--clip-seconds"),
    ("cnn14-img-size", "transfer", "--data {w}/audio --arch cnn14 --img-size 64", 1, "--img-size: cnn14 reads audio"),
    ("cache-dir-in-a-file", "transfer", "--data {w}/images --arch resnet18 --weights none --cache-dir {w}/a_file/c", 1, "--cache-dir"),
    ("finetune-cache-dir", "transfer", "--data {w}/images --finetune --cache-dir {w}/c", 1, "nothing is cached"),
    ("baseline-with-hidden", "mlp", "--features {w}/features.csv --baseline svm --hidden 64:relu", 1, "--hidden: the svm baseline does not use it"),
    ("baseline-with-epochs", "mlp", "--features {w}/features.csv --baseline logreg --epochs 5", 1, "--epochs"),
    ("svm-c-without-svm", "mlp", "--features {w}/features.csv --svm-c 3", 1, "--svm-c"),
    ("pca-1.5", "mlp", "--features {w}/features.csv --pca 1.5", 1, "--pca"),
    ("hidden-width-0", "mlp", "--features {w}/features.csv --hidden 0:relu", 1, "--hidden"),
    ("hidden-bad-activation", "mlp", "--features {w}/features.csv --hidden 8:swish", 1, "--hidden"),
    ("one-class-svm", "mlp", "--features {w}/one_class.csv --baseline svm --out {w}/runs", 1, "one class"),
    ("one-class-mlp", "mlp", "--features {w}/one_class.csv --out {w}/runs", 1, "one class"),
    ("features-binary", "mlp", "--features {w}/binary.bin --out {w}/runs", 1, "binary.bin"),
    ("drop-unknown-column", "mlp", "--features {w}/features.csv --drop-columns nope --out {w}/runs", 1, "--drop-columns"),
    ("extract-into-audio", "convert", "{w}/audio --features {w}/audio/f.csv", 1, "inside the audio folder"),
    ("extract-not-csv", "convert", "{w}/audio --features {w}/f.txt", 1, "--features"),
    ("extract-labels-missing", "convert", "{w}/flat --features {w}/f.csv --labels {w}/nope.csv", 1, "--labels"),
    ("extract-over-public-table", "convert", "{w}/audio --features {w}/one_class.csv", 1, "--overwrite"),
    ("extract-with-out-folder", "convert", "{w}/audio {w}/o --features {w}/f.csv", 1, "--features"),
    ("extract-with-image-size", "convert", "{w}/audio --features {w}/f.csv --size 64", 1, "--size: a setting of the images"),
    ("extract-with-mel", "convert", "{w}/audio --features {w}/f.csv --mel 64", 1, "--mel: a setting of the images"),
    ("feature-set-for-images", "convert", "{w}/audio {w}/o --feature-set extended", 1, "--feature-set: needs --features"),
    ("extract-moved", "mlp", "--extract {w}/audio --features {w}/f.csv", 1, "data_conversion.py"),
    # training: paths, checked before the work
    ("data-missing", "cnn", "--data {w}/nope", 1, "--data"),
    ("data-is-audio", "cnn", "--data {w}/audio --out {w}/runs", 1, "audio, not images"),
    ("data-file-for-folder", "cnn", "--data {w}/features.csv", 1, "features.csv: a file, not a folder; give the folder of images"),
    ("features-missing", "mlp", "--features {w}/nope.csv", 1, "--features"),
    ("features-is-folder", "mlp", "--features {w}/audio --out {w}/runs", 1, "a folder, not a file"),
    ("split-missing", "cnn", "--data {w}/images --split {w}/nope.json", 1, "--split"),
    ("split-not-json", "cnn", "--data {w}/images --split {w}/not_a_split.json", 1, "not a split file"),
    ("split-clip-twice", "cnn", "--data {w}/images --split {w}/two_parts.json", 1, "in two parts"),
    ("split-and-folds", "cnn", "--data {w}/images --split {w}/two_parts.json --folds 3", 1, "--folds"),
    ("predict-missing", "cnn", "--data {w}/images --out {w}/runs --predict {w}/nope", 1, "--predict"),
    ("predict-empty", "cnn", "--data {w}/images --out {w}/runs --predict {w}/empty", 1, "--predict"),
    ("predict-with-folds", "cnn", "--data {w}/images --folds 3 --predict {w}/test", 1, "--folds"),
    ("submit-without-predict", "cnn", "--data {w}/images --submit comp", 1, "--predict"),
    ("sample-without-predict", "cnn", "--data {w}/images --sample-submission {w}/sample.csv", 1, "--predict"),
    ("sample-not-csv", "cnn", "--data {w}/images --predict {w}/test --sample-submission {w}/sample.csv", 1, "--sample-submission"),
    ("out-read-only", "cnn", "--data {w}/images --out {w}/readonly", 1, "not writable"),
    ("out-is-file", "cnn", "--data {w}/images --out {w}/a_file", 1, "is a file"),
    ("name-exists", "cnn", "--data {w}/images --out {w}/runs --name r2", 1, "continue it with --resume"),
    ("name-exists-finished", "cnn", "--data {w}/images --out {w}/runs --name r1", 1, "(a finished run)"),
    ("name-with-slash", "cnn", "--data {w}/images --name ../x", 1, "--name"),
    ("overwrite-non-run", "cnn", "--data {w}/images --out {w} --name audio --overwrite", 1, "not a run folder"),
    ("device-unknown", "cnn", "--data {w}/images --device tpu", 1, "--device"),
    ("resume-missing", "cnn", "--resume {w}/runs/nope", 1, "--resume"),
    ("resume-other-script", "mlp", "--resume {w}/runs/r1", 1, "train_cnn.py"),
    ("resume-with-flags", "cnn", "--resume {w}/runs/r1 --lr 0.5", 1, "--lr"),
    ("resume-damaged-checkpoint", "cnn", "--resume {w}/runs/r2", 1, "checkpoint.pt is damaged"),
    ("sample-ids-not-the-files", "cnn", "--data {w}/images --predict {w}/test --sample-submission {w}/other_sample.csv", 1, "none of its 2 ids"),
    ("split-unknown-name", "cnn", "--data {w}/images --split gtzan-unfiltered", 1, "gtzan-filtered"),
    ("submit-no-credentials", "cnn", "--data {w}/images --out {w}/runs --predict {w}/test --submit comp", 2, "credentials"),
    # prediction from a saved model
    ("predict-model-missing", "predict", "{w}/nope.pt {w}/test", 1, "nope.pt"),
    ("predict-genre-tree", "predict", "{w}/runs/r1/model.pt {w}/audio", 1, "sub-folders hold some"),
    ("predict-swapped", "predict", "{w}/test {w}/runs/r1/model.pt", 1, "the other way round"),
    ("predict-folds-folder", "predict", "{w}/folds {w}/test", 1, "a K-fold run"),
    ("predict-sample-ids-not-the-files", "predict", "{w}/runs/r1 {w}/test --sample-submission {w}/other_sample.csv", 1, "the wrong sample or the wrong folder"),
    ("predict-model-junk", "predict", "{w}/junk.pt {w}/test", 1, "junk.pt"),
    ("predict-model-cut-short", "predict", "{w}/cut.pt {w}/test", 1, "cut.pt: damaged or cut short"),
    ("predict-joblib-cut-short", "predict", "{w}/cut.joblib {w}/test", 1, "cut.joblib: damaged or cut short"),
    ("predict-classes-outputs", "predict", "{w}/four_classes.pt {w}/test", 1, "4 classes for 3 outputs"),
    ("predict-audio-missing", "predict", "{w}/runs/r1/model.pt {w}/nope", 1, "nope"),
    ("predict-output-read-only", "predict", "{w}/runs/r1/model.pt {w}/test --output {w}/readonly/s.csv", 1, "not writable"),
    ("predict-output-pipe", "predict", "{w}/runs/r1/model.pt {w}/test --output {w}/special/pipe", 1, "not a regular file"),
    ("predict-output-folder", "predict", "{w}/runs/r1/model.pt {w}/test --output {w}/empty", 1, "a folder"),
    ("predict-workers-0", "predict", "{w}/runs/r1/model.pt {w}/test --workers 0", 1, "--workers"),
    ("predict-no-credentials", "predict", "{w}/runs/r1/model.pt {w}/test --submit comp", 2, "credentials"),
    # comparison
    ("compare-runs-missing", "compare", "--runs {w}/nope", 1, "--runs"),
    ("compare-no-metrics", "compare", "--runs {w}/empty", 1, "no metrics.json"),
    ("compare-out-read-only", "compare", "--runs {w}/runs --out {w}/readonly/r", 1, "not writable"),
    ("compare-out-not-report", "compare", "--runs {w}/runs --out {w}/audio", 1, "not a report"),
    ("compare-kaggle-no-credentials", "compare", "--runs {w}/runs --out {w}/report --kaggle comp", 2, "credentials"),
    ("demo-over-a-features-table", "compare", "--demo --demo-dir {w}/demo_pub", 1, "not made by the demo"),
    ("ensemble-name-of-a-run", "compare", "--runs {w}/runs --out {w}/report --ensemble r1 r1 --ensemble-name r1", 1, "--ensemble-name r1: a run"),
    ("demo-epochs-without-demo", "compare", "--runs {w}/runs --out {w}/report --demo-epochs 2", 1, "--demo-epochs"),
    ("demo-dir-read-only", "compare", "--demo --demo-dir {w}/readonly", 1, "not writable"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, world, no_kaggle_credentials, capsys, monkeypatch):
    name, script, argv, code, words = case
    monkeypatch.chdir(world / "empty")  # relative defaults (runs/, report/) land in a known place
    before = snapshot(world)
    result = SCRIPTS[script](argv.format(w=world).split())
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert result == code, err
    assert len(errors) == 1 and words in errors[0], err
    assert "Traceback" not in err
    assert snapshot(world) == before  # nothing lost, changed or left behind


def test_a_damaged_checkpoint_is_one_line_that_does_not_offer_resume_again(world, tmp_path,
                                                                        capsys):
    run = tmp_path / "runs" / "r"
    with ctrl_c_after("epoch   1"):
        assert train_cnn.cli(["--data", str(world / "images"), "--epochs", "3", "--out",
                               str(tmp_path / "runs"), "--name", "r"]) == 130
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a copy cut short
    capsys.readouterr()
    assert train_cnn.cli(["--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(checkpoint) in err and "--overwrite" in err
    assert "continue it with" not in err and "Traceback" not in err


def test_resume_after_the_data_changed_says_to_restore_it(world, tmp_path, capsys):
    """A genre folder deleted since the run started: --resume says to put the data back or start
    anew, never to pass --split or delete split.json (which --resume cannot take)."""
    data = tmp_path / "images"
    shutil.copytree(world / "images", data)
    with ctrl_c_after("epoch   1"):
        assert train_cnn.cli(["--data", str(data), "--epochs", "3", "--out",
                               str(tmp_path / "runs"), "--name", "r"]) == 130
    shutil.rmtree(data / "pop")
    capsys.readouterr()
    assert train_cnn.cli(["--resume", str(tmp_path / "runs" / "r")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "the data changed since the run started" in err[0]
    assert "--split" not in err[0] and "delete" not in err[0]


def test_a_broken_torch_and_torchvision_pair_is_one_line_before_any_work(world, tmp_path):
    """torchvision that cannot load with this torch (two indexes mixed): each command that needs
    it says so in one line before any work, and says to reinstall both from one index."""
    import subprocess
    import sys

    from conftest import ROOT
    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "MPLBACKEND": "Agg"}
    for command in (["train_cnn.py", "--data", str(world / "images"), "--out", str(tmp_path / "r")],
                    ["predict.py", str(world / "runs" / "r1"), str(world / "test")],
                    ["compare.py", "--demo", "--demo-dir", str(tmp_path / "demo")]):
        result = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "torchvision::nms" in result.stderr and "reinstall both" in result.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "demo").exists()


def test_read_only_data_keeps_its_split_elsewhere(world, tmp_path):
    """A data folder that is not ours to write (read-only; as root too): the split goes under the
    runs folder, the data folder is untouched, no traceback."""
    data = tmp_path / "data"
    shutil.copytree(world / "images", data)
    (data / "split.json").unlink()
    data.chmod(0o555)
    before = snapshot(data)
    assert train_cnn.cli(["--data", str(data), "--epochs", "1", "--out", str(tmp_path / "runs"),
                           "--name", "r", "--workers", "1"]) == 0
    assert snapshot(data) == before
    assert len(list((tmp_path / "runs" / "splits").glob("data-*.json"))) == 1


def test_overwrite_replaces_the_whole_run(world, tmp_path):
    """--overwrite: the old run folder goes, so no file of it (its submission.csv) lies beside
    the new model."""
    shutil.copytree(world / "runs" / "r1", tmp_path / "runs" / "r1")
    (tmp_path / "runs" / "r1" / "submission.csv").write_text("id,class\nold.wav,pop\n")
    assert train_cnn.cli(["--data", str(world / "images"), "--epochs", "1", "--out",
                           str(tmp_path / "runs"), "--name", "r1", "--overwrite", "--workers", "1"]) == 0
    assert not (tmp_path / "runs" / "r1" / "submission.csv").exists()
    assert (tmp_path / "runs" / "r1" / "model.pt").exists()


def test_failed_run_leaves_no_folder(tmp_path, capsys):
    """A run that cannot start (two clips a class: no test clip) makes no folder."""
    data = make_images(tmp_path / "img", n_per_class=2)
    assert train_cnn.cli(["--data", str(data), "--img-size", "16", "--out", str(tmp_path / "runs"),
                           "--name", "r"]) == 1
    assert "at least 3 clips" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.parametrize("at_epoch", [1, 3])
def test_ctrl_c_keeps_only_what_can_resume(at_epoch, tiny_images, tmp_path, capsys):
    """Ctrl-C in epoch 1 (no checkpoint yet): exit 130 and no run folder left holding only
    config.json. In epoch 3: the folder and its checkpoint stay, and the line says how to go on."""
    run = tmp_path / "runs" / "r"
    with ctrl_c_after("split:" if at_epoch == 1 else f"epoch {at_epoch - 1:3d}"):
        assert train_cnn.cli(["--data", str(tiny_images), "--img-size", "16", "--epochs", "5",
                               "--out", str(tmp_path / "runs"), "--name", "r"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if at_epoch == 1:
        assert not run.exists()
    else:
        assert (run / "checkpoint.pt").exists() and f"--resume {run}" in err


def damage(png):
    """Zero a PNG's image data but keep its checksums right: it passes PIL's verify() and
    fails only when decoded."""
    import struct
    import zlib
    data = bytearray(png.read_bytes())
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at:at + 4])[0]
    data[at + 8:at + 8 + length] = bytes(length)
    data[at + 8 + length:at + 12 + length] = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(length)))
    png.write_bytes(bytes(data))


@pytest.mark.parametrize("cache_mb,how", [("4096", "cut"), ("0", "cut"), ("0", "data")])
def test_damaged_png_is_named_and_training_goes_on(cache_mb, how, world, tmp_path, capfd):
    """In memory, or decoded per batch by 2 loader workers (found up front when cut short; only
    when decoded when its data is damaged under good checksums): the image is named in a
    warning and training goes on, no traceback."""
    data = tmp_path / "img"
    shutil.copytree(world / "images", data)
    png = data / "pop" / "pop.00000.png"
    if how == "cut":
        png.write_bytes(png.read_bytes()[:60])
    else:
        damage(png)
    assert train_cnn.cli(["--data", str(data), "--epochs", "1", "--cache-mb", cache_mb,
                           "--workers", "2", "--out", str(tmp_path / "runs"), "--name", "r",
                           "--split", str(world / "images" / "split.json")]) == 0
    err = capfd.readouterr().err  # loader workers write to the file descriptor
    assert "pop.00000.png" in err and "Traceback" not in err


def test_unlabeled_image_folder_keeps_its_identity(world, tmp_path, capsys):
    out = tmp_path / "test-images"
    assert data_conversion.cli([str(world / "flat"), str(out), "--unlabeled", "--size", "16",
                                 "--workers", "1"]) == 0
    assert data_conversion.cli([str(world / "flat"), str(out), "--unlabeled", "--size", "32",
                                 "--workers", "1"]) == 1
    assert "--size 16 -> 32" in capsys.readouterr().err


def test_overwrite_that_fails_gives_the_old_run_back(world, tmp_path, capsys):
    """--overwrite, then Ctrl-C before the new run has a checkpoint: the old run is back, whole."""
    shutil.copytree(world / "runs" / "r1", tmp_path / "runs" / "r1")
    before = snapshot(tmp_path / "runs")
    with ctrl_c_after("split:"):
        assert train_cnn.cli(["--data", str(world / "images"), "--epochs", "1", "--out",
                               str(tmp_path / "runs"), "--name", "r1", "--overwrite"]) == 130
    assert snapshot(tmp_path / "runs") == before


def test_resume_on_another_kind_of_device_is_one_line(world, tmp_path, capsys):
    """A checkpoint made on CUDA (AMP) resumed on the CPU would not give the same run."""
    run = tmp_path / "runs" / "r"
    with ctrl_c_after("epoch   1"):
        assert train_cnn.cli(["--data", str(world / "images"), "--epochs", "3", "--out",
                               str(tmp_path / "runs"), "--name", "r"]) == 130
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**state, "device_type": "cuda"}, run / "checkpoint.pt")
    capsys.readouterr()
    assert train_cnn.cli(["--resume", str(run)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "--device cuda" in errors[0] and "Traceback" not in err


def test_text_column_is_named_not_silently_dropped(world, tmp_path, capsys):
    path = tmp_path / "f.csv"
    lines = (world / "features.csv").read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",mood"] + [line + ",calm" for line in lines[1:]]) + "\n")
    assert train_mlp.cli(["--features", str(path), "--baseline", "logreg", "--out",
                           str(tmp_path / "runs")]) == 0
    assert "mood" in capsys.readouterr().err


def test_split_file_with_unknown_clips_says_so(world, tmp_path, capsys):
    split = json.loads((world / "images" / "split.json").read_text())
    path = tmp_path / "s.json"
    path.write_text(json.dumps({**split, "train": split["train"] + ["rock.09999"]}))
    assert train_cnn.cli(["--data", str(world / "images"), "--epochs", "1", "--split", str(path),
                           "--out", str(tmp_path / "runs")]) == 0
    assert "1 of its" in capsys.readouterr().err


def test_default_image_size_is_the_datas(world, tmp_path):
    """The images are 16 px: ConvolNeuNet is built for 16 px, not upscaled into 512 px."""
    assert train_cnn.cli(["--data", str(world / "images"), "--epochs", "1", "--out",
                           str(tmp_path), "--name", "r"]) == 0
    _, saved = predict.load_model(tmp_path / "r" / "model.pt")
    assert saved["spec"]["img_size"] == 16


def test_time_to_converge_counts_training_only(world, tmp_path):
    """MLP: seconds to the best epoch are the training seconds up to it (history), not imports
    or fitting the scaler."""
    assert train_mlp.cli(["--features", str(world / "features.csv"), "--epochs", "3", "--out",
                           str(tmp_path), "--name", "m"]) == 0
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    import csv
    with open(tmp_path / "m" / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert m["seconds_to_best"] == pytest.approx(float(history[m["best_epoch"] - 1]["seconds"]))


def test_predict_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        predict.cli(["--help"])
    text = capsys.readouterr().out
    for option in ("--output", "--device", "--workers", "--id-col", "--label-col",
                   "--sample-submission", "--submit", "--message", "--dry-run"):
        lines = text.split(option, 1)[1].splitlines()  # the help text follows the option
        assert len(" ".join(lines[:2]).split()) >= 3, option


def test_compare_marks_random_backbones(tmp_path, capsys):
    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "model": "vgg16", "weights": "none", "test_balanced_accuracy": 0.2, "test_accuracy": 0.2,
        "test_macro_f1": 0.1, "split_hash": "s", "run": "t"}))
    assert compare.cli(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "r")]) == 0
    assert "vgg16 (random weights)" in capsys.readouterr().out


@pytest.mark.slow
def test_the_demo_writes_its_cache_inside_its_folder(tmp_path, monkeypatch):
    """README: the demo writes nothing outside --demo-dir, the suite's cache included."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("SUITE_CACHE", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        monkeypatch.delenv(var, raising=False)
    demo = tmp_path / "d"
    assert compare.cli(["--demo", "--demo-dir", str(demo), "--demo-clips", "3", "--demo-epochs",
                         "1", "--demo-weights", "none"]) == 0
    assert not (tmp_path / "home").exists(), list((tmp_path / "home").rglob("*"))[:5]
    assert list((demo / ".cache" / "features").rglob("*.json"))
    # run again, it refreshes its own features table (made by it), never refused
    assert compare.cli(["--demo", "--demo-dir", str(demo), "--demo-clips", "3", "--demo-epochs",
                         "1", "--demo-weights", "none"]) == 0


@pytest.mark.slow
def test_ctrl_c_in_the_demo_exits_130(tmp_path):
    """SIGINT while the demo trains: exit code 130, one line, no traceback."""
    import signal
    import subprocess
    import sys

    from conftest import ROOT
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    demo = subprocess.Popen([sys.executable, str(ROOT / "compare.py"), "--demo", "--demo-dir",
                             str(tmp_path / "d"), "--demo-clips", "3"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in demo.stdout:
        if "=== 3/6" in line:
            demo.send_signal(signal.SIGINT)
            break
    _, err = demo.communicate(timeout=120)
    assert demo.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err


def test_short_clip_is_bad_input_for_images_and_features(tmp_path):
    """0.04 s is less than one STFT frame: both converters reject it, with the same reason."""
    path = write_tone(tmp_path / "tiny.wav", 300, seconds=0.04)
    with pytest.raises(common.BadAudio, match="shorter than one 2048-sample frame"):
        audio.load_audio(path)
    with pytest.raises(common.BadAudio, match="shorter than one 2048-sample frame"):
        audio.audio_features(path)
    assert np.isfinite(audio.load_audio(write_tone(tmp_path / "ok.wav", 300, seconds=0.1))).all()


def test_nothing_converted_is_an_error_with_the_reasons_listed(world, tmp_path, capsys):
    assert data_conversion.cli([str(world / "short"), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "nothing converted" in err and "Traceback" not in err
    assert (tmp_path / "o" / "errors.csv").read_text().count("shorter than one") == 2
    # nothing was made with those settings: other settings may use the folder
    assert data_conversion.cli([str(world / "audio"), str(tmp_path / "o"), "--size", "8"]) == 0


def test_levels_of_rgb_images_is_one_line(tmp_path, capsys):
    data = make_images(tmp_path / "rgb")
    assert train_cnn.cli(["--data", str(data), "--model", "specnet", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--input rgb" in err and err.count("\n") == 1


def test_a_run_folder_is_claimed_once(tmp_path):
    """The claim is the folder's creation: a second claim of the name fails in one line."""
    runs.claim_run_folder(tmp_path, "r", overwrite=False)
    with pytest.raises(common.SuiteError, match="just made by another run"):
        runs.claim_run_folder(tmp_path, "r", overwrite=False)


def test_a_run_folder_whose_lock_cannot_be_written_is_one_line(world, tmp_path, capsys):
    """--resume of a run whose RUN/.training cannot be opened (here a folder in its place; a
    read-only run folder likewise): one line, no traceback."""
    run = tmp_path / "r2"
    shutil.copytree(world / "runs" / "r2", run)
    (run / ".training").mkdir()
    assert train_cnn.cli(["--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write in it" in err and "Traceback" not in err


def test_predict_writes_through_a_symlink_to_its_target(world, tmp_path):
    """--output a symlink: the target gets the CSV, written whole there; the link stays a link."""
    target = tmp_path / "real" / "s.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert predict.cli([str(world / "runs" / "r1"), str(world / "test"), "--output", str(link),
                         "--workers", "1"]) == 0
    assert link.is_symlink() and target.read_text().startswith("id,class\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["s.csv"]


def test_atomic_write_never_replaces_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(common.SuiteError, match="not a regular file"):
        common.write_json(tmp_path / "pipe", {})
    assert (tmp_path / "pipe").is_fifo()


def test_a_cache_that_cannot_be_written_is_one_note_and_the_work_goes_on(world, tmp_path,
                                                                        monkeypatch, capsys):
    """$SUITE_CACHE a file (or read-only, or a read-only home): feature extraction in worker
    processes and a frozen backbone's run go on without the cache, saying so in one line."""
    (tmp_path / "not_a_folder").write_text("x")
    monkeypatch.setenv("SUITE_CACHE", str(tmp_path / "not_a_folder"))
    out = tmp_path / "f.csv"
    assert data_conversion.cli([str(world / "audio"), "--features", str(out), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("note: the cache") == 1 and "Traceback" not in err
    assert len(out.read_text().splitlines()) == 10
    assert train_transfer.cli(["--data", str(world / "images"), "--arch", "resnet18", "--weights",
                                "none", "--epochs", "1", "--out", str(tmp_path / "runs"),
                                "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("note: the cache") == 1 and "Traceback" not in err


class FullDisk:
    """A file on a disk that has filled up: each write raises ENOSPC, as the OS does."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        import errno
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_the_last_one_stays(
        world, tmp_path, monkeypatch, capsys):
    """The disk fills after epoch 1's checkpoint: epoch 2's save is one line naming the folder,
    exit 1, no temp file, and epoch 1's checkpoint is whole (the run can go on from it)."""
    from conftest import on_line
    real_save = torch.save

    def fill_disk():
        monkeypatch.setattr(torch, "save", lambda obj, f, **kw: real_save(obj, FullDisk(f), **kw))
    run = tmp_path / "runs" / "r"
    with on_line("epoch   1", fill_disk):
        assert train_cnn.cli(["--data", str(world / "images"), "--epochs", "3", "--schedule",
                               "cosine", "--out", str(tmp_path / "runs"), "--name", "r",
                               "--workers", "1"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and f"{run}: the disk is full" in errors[0], err
    assert "Traceback" not in err and not list(run.rglob("*.tmp"))
    assert len(torch.load(run / "checkpoint.pt", weights_only=False)["history"]) == 1


def test_a_full_disk_during_conversion_stops_it_in_one_line(world, tmp_path, monkeypatch,
                                                            capsys):
    """A full disk is no bad clip: the conversion (in worker processes) stops with one line
    naming the folder, exit 1, no errors.csv of 'bad clips', no temp files."""
    from PIL import Image
    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, f, *a, **kw: real_save(
        self, FullDisk(f), *a, **kw))
    out = tmp_path / "img"
    assert data_conversion.cli([str(world / "audio"), str(out), "--size", "16",
                                 "--workers", "2"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and str(out) in errors[0], err
    assert "warning: skipped" not in err and "Traceback" not in err
    assert not (out / "errors.csv").exists() and not list(out.rglob("*.tmp"))


def test_a_clip_under_a_second_genre_is_refused_with_or_without_split_json(world, tmp_path,
                                                                           capsys):
    data = tmp_path / "images"
    shutil.copytree(world / "images", data)
    assert (data / "split.json").exists()
    shutil.copy(data / "blues" / "blues.00000.png", data / "metal" / "blues.00000.png")
    for split in ("kept", "deleted"):
        if split == "deleted":
            (data / "split.json").unlink()
        assert train_cnn.cli(["--data", str(data), "--epochs", "1", "--out",
                               str(tmp_path / "runs"), "--workers", "1"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "blues.00000 appears under two labels" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_class_folder_without_images_is_said(world, tmp_path, capsys):
    import data
    images = tmp_path / "images"
    shutil.copytree(world / "images", images)
    (images / "rock").mkdir()
    assert data.load_image_data(images, 16).classes == ["blues", "metal", "pop"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without PNG images left out (rock)" in err


def test_overwrite_or_resume_of_a_run_that_is_training_is_refused(world, tmp_path, capsys):
    """While a run trains (it holds RUN/.training), --overwrite and --resume of it are refused in
    one line each, before any work: the folder never mixes two runs."""
    from conftest import on_line
    out = tmp_path / "runs"
    base = ["--data", str(world / "images"), "--out", str(out), "--workers", "1"]
    answers = []

    def beside_it():
        answers.append(train_cnn.cli(base + ["--name", "ow", "--overwrite", "--epochs", "1"]))
        answers.append(train_cnn.cli(["--resume", str(out / "ow")]))
    with on_line("epoch   1", beside_it):
        assert train_cnn.cli(base + ["--name", "ow", "--epochs", "2"]) == 0
    assert answers == [1, 1]
    err = capsys.readouterr().err
    assert err.count("a run is training in it now (process") == 2 and "Traceback" not in err
    assert json.loads((out / "ow" / "config.json").read_text())["args"]["epochs"] == 2
    assert not (out / ".ow.replaced").exists() and not (out / "ow" / ".training").exists()
    # once it has ended, the folder is free again
    assert train_cnn.cli(base + ["--name", "ow", "--overwrite", "--epochs", "1"]) == 0


@pytest.mark.slow
def test_two_runs_of_one_name_at_once_one_wins(world, tmp_path):
    """Started together under one --out/--name: one trains, the other is refused in one line
    before training; the folder holds the winner's run."""
    import subprocess
    import sys

    from conftest import ROOT
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    runs = [subprocess.Popen([sys.executable, str(ROOT / "train_cnn.py"), "--data",
                              str(world / "images"), "--epochs", "2", "--lr", lr, "--out",
                              str(tmp_path), "--name", "same", "--workers", "1"],
                             env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for lr in ("0.001", "0.01")]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in runs]
    assert sorted(code for *_, code in results) == [0, 1]
    loser = next(err for _, err, code in results if code == 1)
    assert loser.count("\n") == 1 and "same" in loser and "Traceback" not in loser
    winner_lr = ("0.001", "0.01")[[code for *_, code in results].index(0)]
    config = json.loads((tmp_path / "same" / "config.json").read_text())
    assert str(config["args"]["lr"]) == str(float(winner_lr))
    assert (tmp_path / "same" / "metrics.json").exists()


def test_two_conversions_into_one_folder_at_once_one_is_refused(world, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "img"
    out.mkdir()
    (out / ".converting").write_text(str(os.getpid()))  # a conversion under way (this process)
    done = subprocess.run([sys.executable, str(ROOT / "data_conversion.py"), str(world / "audio"),
                           str(out), "--size", "16"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert f"another conversion (process {os.getpid()})" in done.stderr
    assert not list(out.rglob("*.png"))
    (out / ".converting").write_text("999999999")  # left by a killed conversion: taken over
    assert data_conversion.cli([str(world / "audio"), str(out), "--size", "16", "--workers", "1"]) == 0
    assert len(list(out.rglob("*.png"))) == 9 and not (out / ".converting").exists()


@pytest.mark.slow
def test_ctrl_c_during_conversion_is_one_line(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while 2 worker
    processes convert: exit 130, `interrupted`, and no worker prints its own
    `Process ForkPoolWorker-2:`."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    for i in range(40):
        write_tone(tmp_path / "audio" / ("a" if i % 2 else "b") / f"{i}.wav", 300 + i, seconds=8)
    out = tmp_path / "img"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    conversion = subprocess.Popen([sys.executable, str(ROOT / "data_conversion.py"),
                                   str(tmp_path / "audio"), str(out), "--workers", "2"], env=env,
                                  text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True)
    while not list(out.rglob("*.png")) and conversion.poll() is None:
        time.sleep(0.05)
    os.killpg(conversion.pid, signal.SIGINT)
    _, err = conversion.communicate(timeout=120)
    assert conversion.returncode == 130, err[-2000:]
    assert err.strip() == "interrupted"
