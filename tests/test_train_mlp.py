import csv
import json

import numpy as np
import pytest
import torch

import audio
import data_conversion
import predict
import train_mlp
from conftest import SHARED_GTZAN, write_tone

PUBLIC_CSV = SHARED_GTZAN / "features_30_sec.csv"


def synthetic_csv(path, n_per_class=12, classes=("rock", "jazz", "pop"), nan=False, seed=0, shift=4):
    """A features table shaped like ours: filename, numeric columns, label; classes separable
    (shift: how far apart, in standard deviations)."""
    rng = np.random.default_rng(seed)
    columns = ["length", "f1", "f2", "f3", "f4"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", *columns, "label"])
        for k, c in enumerate(classes):
            for i in range(n_per_class):
                values = rng.normal(0, 1, len(columns))
                values[1 + k] += shift
                if nan and i == 0 and k == 0:
                    values[2] = np.nan
                w.writerow([f"{c}.{i:05d}.wav", *values, c])
    return path


def run(*argv):
    return train_mlp.cli([str(a) for a in argv])


def test_mlp_trains_with_scaler_and_pca_fitted_on_train_only(tmp_path):
    data = synthetic_csv(tmp_path / "f.csv")
    assert run("--features", data, "--epochs", "30", "--out", tmp_path, "--name", "m",
               "--hidden", "32:tanh,32:relu") == 0
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["test_balanced_accuracy"] >= 0.66 and m["model"] == "mlp-ce"
    model, ckpt = predict.load_model(tmp_path / "m" / "model.pt")
    x, columns, clip_ids, _ = train_mlp.read_features_csv(data)
    split = json.loads((tmp_path / "split.json").read_text())
    train_rows = x[[i for i, c in enumerate(clip_ids) if c in set(split["train"])]]
    assert np.allclose(model.mean.numpy(), train_rows.mean(0), atol=1e-5)
    assert not np.allclose(model.mean.numpy(), x.mean(0), atol=1e-3)
    assert ckpt["spec"]["preprocess"]["columns"] == columns == ["length", "f1", "f2", "f3", "f4"]
    assert ckpt["spec"]["n_components"] == m["pca_components"] <= 5
    # the model's preprocessing is scikit-learn's scaler then PCA (--pca 0.95), both fitted on
    # the training rows
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(train_rows)
    pca = PCA(0.95, random_state=0).fit(scaler.transform(train_rows))
    with torch.no_grad():
        ours = model.preprocess(torch.from_numpy(x)).numpy()
    assert ours.shape == (len(x), pca.n_components_)
    assert np.allclose(ours, pca.transform(scaler.transform(x)), atol=1e-4)


@pytest.mark.parametrize("loss", ["ce", "hinge", "kl"])
def test_the_chosen_loss_is_what_training_minimizes(loss, tmp_path):
    """With a learning rate too small to move the weights, epoch 1's training loss is the
    chosen loss of the saved model on the training rows."""
    data = synthetic_csv(tmp_path / "f.csv")
    assert run("--features", data, "--epochs", "1", "--lr", "1e-12", "--loss", loss,
               "--smoothing", "0.1", "--out", tmp_path, "--name", loss) == 0
    model, _ = predict.load_model(tmp_path / loss / "model.pt")
    x, _, clip_ids, labels = train_mlp.read_features_csv(data)
    train = set(json.loads((tmp_path / "split.json").read_text())["train"])
    rows = [i for i, c in enumerate(clip_ids) if c in train]
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(labels[i]) for i in rows])
    with torch.no_grad():
        expected = train_mlp.make_criterion(loss, 3, 0.1)(model(torch.from_numpy(x[rows])), y).item()
    with open(tmp_path / loss / "history.csv") as f:
        recorded = float(next(csv.DictReader(f))["train_loss"])
    assert recorded == pytest.approx(expected, rel=1e-4)
    assert json.loads((tmp_path / loss / "metrics.json").read_text())["model"] == f"mlp-{loss}"


def test_three_second_table_keeps_a_clips_rows_together(tmp_path):
    """GTZAN's features_3_sec.csv has rows blues.00000.0.wav ... .9.wav: one clip, one part."""
    path = tmp_path / "f3.csv"
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "a", "b", "label"])
        for k, genre in enumerate(("rock", "jazz", "pop")):
            for clip in range(6):
                for segment in range(10):
                    w.writerow([f"{genre}.{clip:05d}.{segment}.wav", *(rng.normal(size=2) + k), genre])
    assert run("--features", path, "--baseline", "logreg", "--out", tmp_path, "--name", "s") == 0
    split = json.loads((tmp_path / "split.json").read_text())
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(
        f"{g}.{c:05d}" for g in ("rock", "jazz", "pop") for c in range(6))
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["n_test"] == len(split["test"]) and m["n_test_segments"] == 10 * m["n_test"]


def test_each_loss_is_its_formula():
    """Written out on 6 rows of 4 classes, smoothing s = 0.2: ce is (1 - s) * the negative log
    likelihood + s * the mean over classes of -log p; hinge is the multi-class margin loss
    (sum over wrong classes j of max(0, 1 - x_y + x_j), over the classes); kl is KL(smoothed
    one-hot || softmax), batch mean."""
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y, rows, s = torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6), 0.2
    log_p = torch.log_softmax(logits, 1)
    ce = ((1 - s) * -log_p[rows, y] - s * log_p.mean(1)).mean()
    margins = (1 - logits[rows, y][:, None] + logits).clamp(min=0)
    margins[rows, y] = 0
    hinge = (margins.sum(1) / 4).mean()
    target = torch.full((6, 4), s / 4)
    target[rows, y] = 1 - s + s / 4
    kl = (target * (target.log() - log_p)).sum(1).mean()
    for name, expected in (("ce", ce), ("hinge", hinge), ("kl", kl)):
        loss = train_mlp.make_criterion(name, 4, s)(logits, y)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6), name


def test_kl_to_one_hot_equals_cross_entropy():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    kl = train_mlp.make_criterion("kl", 4)(logits, y)
    assert torch.allclose(kl, torch.nn.functional.cross_entropy(logits, y))
    smooth = train_mlp.make_criterion("kl", 4, smoothing=0.2)(logits, y)
    assert not torch.allclose(smooth, kl)


def test_svm_baseline_same_split_and_run_folder(tmp_path):
    data = synthetic_csv(tmp_path / "f.csv")
    assert run("--features", data, "--baseline", "svm", "--out", tmp_path, "--name", "svm") == 0
    assert run("--features", data, "--epochs", "2", "--out", tmp_path, "--name", "mlp") == 0
    svm, mlp = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("svm", "mlp"))
    assert svm["model"] == "svm" and svm["split_hash"] == mlp["split_hash"]
    assert svm["test_balanced_accuracy"] >= 0.66 and (tmp_path / "svm" / "model.joblib").exists()


def test_a_reused_split_is_reported_with_the_seed_it_was_made_with(tmp_path):
    data = synthetic_csv(tmp_path / "f.csv")
    common_args = ["--features", data, "--baseline", "logreg", "--out", tmp_path]
    assert run(*common_args, "--name", "s0") == 0
    assert run(*common_args, "--name", "s7", "--seed", "7") == 0  # reuses split.json (seed 0)
    for name in ("s0", "s7"):
        for record in ("metrics.json", "config.json"):
            assert json.loads((tmp_path / name / record).read_text())["split"] == "random 80/10/10 (seed 0)"


def test_folds_summary_for_baseline(tmp_path, capsys):
    """Each fold's figures with their 95 % intervals over its test clips (accuracy: exactly
    Clopper-Pearson's); the summary with the t interval of the mean over folds; both printed."""
    from scipy import stats
    data = synthetic_csv(tmp_path / "f.csv", shift=1)  # some clips wrong, more in some folds
    assert run("--features", data, "--baseline", "logreg", "--folds", "3", "--out", tmp_path, "--name", "k") == 0
    summary = json.loads((tmp_path / "k" / "summary.json").read_text())
    assert summary["folds"] == 3 and 0 <= summary["balanced_accuracy_std"] < 0.5
    per_fold = summary["per_fold_balanced_accuracy"]  # 36 clips, each tested once
    low, high = stats.t.interval(0.95, 2, loc=np.mean(per_fold), scale=stats.sem(per_fold))
    exact = stats.binomtest(round(np.mean(per_fold) * 36), 36).proportion_ci(0.95, method="exact")
    assert summary["balanced_accuracy_ci"] == pytest.approx([max(min(low, exact.low), 0),
                                                             min(max(high, exact.high), 1)])
    assert "t interval" in summary["ci_method"]
    out = capsys.readouterr().out
    for fold in (1, 2, 3):
        m = json.loads((tmp_path / "k" / f"fold{fold}" / "metrics.json").read_text())
        right = round(m["test_accuracy"] * m["n_test"])
        exact = stats.binomtest(right, m["n_test"]).proportion_ci(0.95, method="exact")
        assert m["test_accuracy_ci"] == pytest.approx([exact.low, exact.high])
        low, high = m["test_balanced_accuracy_ci"]
        assert low <= m["test_balanced_accuracy"] <= high and high - low > 0.05
        assert "bootstrap" in m["ci_method"]["test_balanced_accuracy_ci"]
        assert f"balanced accuracy {m['test_balanced_accuracy']:.3f} (95% CI {low:.3f}..{high:.3f})" in out
    assert f"95% CI of the mean {summary['balanced_accuracy_ci'][0]:.3f}.." in out


@pytest.mark.skipif(not PUBLIC_CSV.exists(), reason="../shared/gtzan not present")
def test_public_csv_accepted_unchanged_and_read_only_folder_untouched(tmp_path):
    before = sorted(p.name for p in PUBLIC_CSV.parent.iterdir())
    assert run("--features", PUBLIC_CSV, "--baseline", "logreg", "--out", tmp_path, "--name", "p") == 0
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert m["n_train"] + m["n_val"] + m["n_test"] == 1000 and m["test_balanced_accuracy"] > 0.5
    assert sorted(p.name for p in PUBLIC_CSV.parent.iterdir()) == before


@pytest.mark.parametrize("case,message", [
    ("nan", "NaN"), ("no_label", "missing column(s) label"), ("label_col", "missing column(s) genre"),
    ("missing", "--features"), ("hidden", "width:activation")])
def test_bad_csv_one_line(case, message, tmp_path, capsys):
    data = synthetic_csv(tmp_path / "f.csv", nan=case == "nan")
    extra = []
    if case == "no_label":
        data.write_text(data.read_text().replace(",label", ",genre", 1))
    if case == "label_col":
        extra = ["--label-column", "genre"]
    if case == "missing":
        data = tmp_path / "nope.csv"
    if case == "hidden":
        extra = ["--hidden", "64:swishy"]
    assert run("--features", data, "--out", tmp_path, *extra) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def demo_features(tmp_path_factory):
    """Features of 10 synthetic genres x 8 clips (the demo's), and a flat test folder of one new
    clip per genre (another seed) plus an unreadable file."""
    root = tmp_path_factory.mktemp("demo")
    assert data_conversion.make_demo(root / "audio", clips_per_genre=8, seconds=3.0) == 80
    assert data_conversion.make_demo(root / "new", clips_per_genre=1, seconds=3.0, seed=1) == 10
    (root / "test").mkdir()
    for clip in (root / "new").glob("*/*.wav"):
        clip.rename(root / "test" / clip.name)
    (root / "test" / "bad.wav").write_bytes(b"")
    assert data_conversion.cli([str(root / "audio"), "--features", str(root / "f.csv"),
                                 "--workers", "2"]) == 0
    return root / "f.csv", root / "test"


@pytest.mark.parametrize("model", [["--epochs", "60", "--hidden", "64:relu"],
                                   ["--baseline", "logreg"]])
def test_predict_from_audio_labels_new_clips_right(model, demo_features, tmp_path):
    """MLP and a scikit-learn baseline predict new audio: the new demo clips get their genre
    (9 of 10 at least; a constant answer gets 1), and the unreadable file still gets a row (the
    fallback class), so Kaggle accepts the file."""
    features, test_dir = demo_features
    assert run("--features", features, "--pca", "0", "--out", tmp_path, "--name", "p",
               "--predict", test_dir, "--workers", "1", *model) == 0
    with open(tmp_path / "p" / "submission.csv") as f:
        rows = list(csv.reader(f))
    labels = dict(rows[1:])
    assert rows[0] == ["id", "class"] and len(labels) == 11
    right = [name for name, label in labels.items() if name.split(".")[0] == label]
    assert len(right) >= 9, labels
    assert labels["bad.wav"] in data_conversion.GENRES
    assert "bad.wav" in (tmp_path / "p" / "submission_errors.csv").read_text()


def test_prediction_gives_the_features_in_the_models_column_order(tmp_path):
    """From an audio file, prediction's input is the file's features in the columns the model
    was trained on, in their order (here the table's first six, reversed)."""
    path = write_tone(tmp_path / "a.wav", 440)
    columns = audio.FEATURE_COLUMNS[5::-1]
    _, row, error, _ = predict.model_inputs((path, {"type": "features", "columns": columns}))
    features = audio.audio_features(path)
    assert error is None and row.tolist() == [[np.float32(features[c]).item() for c in columns]]


def test_missing_and_foreign_feature_columns_are_named(tmp_path, capsys):
    """A table extracted here without one of its columns trains on the rest and says so; columns
    no audio file gives are named too, and the model then refuses to predict from audio."""
    data = tmp_path / "f.csv"
    columns = audio.FEATURE_COLUMNS[:-1]  # mfcc20_var missing
    rng = np.random.default_rng(0)
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", *columns, "label"])
        for i in range(18):
            w.writerow([f"{'ab'[i % 2]}.{i:05d}.wav", *rng.normal(i % 2, 1, len(columns)), "ab"[i % 2]])
    assert train_mlp.cli(["--features", str(data), "--baseline", "logreg", "--out",
                           str(tmp_path / "runs"), "--name", "m"]) == 0
    err = capsys.readouterr().err
    assert "1 standard feature column(s) missing (e.g. mfcc20_var)" in err
    (tmp_path / "other").mkdir()
    foreign = synthetic_csv(tmp_path / "other" / "g.csv")  # its own folder: its own split
    assert train_mlp.cli(["--features", str(foreign), "--baseline", "logreg", "--out",
                           str(tmp_path / "runs"), "--name", "g"]) == 0
    assert "are not standard features (e.g. f1)" in capsys.readouterr().err
    write_tone(tmp_path / "test" / "1.wav", 300)
    assert predict.cli([str(tmp_path / "runs" / "g" / "model.joblib"), str(tmp_path / "test")]) == 1
    assert "cannot predict from audio" in capsys.readouterr().err


def test_run_folders_made_before_the_split_of_common_resume_and_load(tmp_path, monkeypatch):
    """Run folders written by the suite before common.py was split into modules (commit
    28c0280, tests/fixtures/before-split): an MLP run killed in epoch 3 resumes to the end,
    and an SVM baseline's model.joblib (pickled scikit-learn objects) still loads and scores."""
    import shutil
    from pathlib import Path

    import joblib

    import models
    shutil.copytree(Path(__file__).parent / "fixtures" / "before-split", tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)  # the runs recorded their data as the relative features.csv
    assert json.loads(Path("mlp/checkpoint.json").read_text())["epochs_done"] == 1  # the best so far
    assert train_mlp.cli(["--resume", "mlp"]) == 0
    metrics = json.loads(Path("mlp/metrics.json").read_text())
    assert metrics["complete"] and metrics["epochs_run"] == 6
    saved = joblib.load("svm/model.joblib")
    x, _, _, labels = train_mlp.read_features_csv("features.csv")
    scores = models.estimator_scores(saved["estimator"], x)
    assert scores.shape == (len(x), 3) and (np.array(saved["classes"])[scores.argmax(1)] == labels).mean() > 0.9
