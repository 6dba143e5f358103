import csv
import json

import numpy as np
import pytest
import torch

import common
import train_mlp
from conftest import SHARED_GTZAN, write_tone

PUBLIC_CSV = SHARED_GTZAN / "features_30_sec.csv"


def synthetic_csv(path, n_per_class=12, classes=("rock", "jazz", "pop"), nan=False, seed=0):
    """A features table shaped like ours: filename, numeric columns, label; classes separable."""
    rng = np.random.default_rng(seed)
    columns = ["length", "f1", "f2", "f3", "f4"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", *columns, "label"])
        for k, c in enumerate(classes):
            for i in range(n_per_class):
                values = rng.normal(0, 1, len(columns))
                values[1 + k] += 4
                if nan and i == 0 and k == 0:
                    values[2] = np.nan
                w.writerow([f"{c}.{i:05d}.wav", *values, c])
    return path


def run(*argv):
    return train_mlp.main([str(a) for a in argv])


def test_extract_writes_gtzan_columns_caches_and_skips_bad(tiny_audio, tmp_path, capsys, monkeypatch):
    (tiny_audio / "pop" / "broken.wav").write_bytes(b"RIFF garbage")
    out = tmp_path / "f.csv"
    assert run("--extract", tiny_audio, "--out", out, "--workers", "2") == 0
    with open(out) as f:
        header, *rows = list(csv.reader(f))
    assert header == ["filename", *common.FEATURE_COLUMNS, "label"] and len(rows) == 9
    assert "broken.wav" in capsys.readouterr().err
    assert "broken.wav" in (tmp_path / "f_errors.csv").read_text()
    # a rerun reads every good clip from the cache: extraction is never called for them
    calls = []

    def counting(path, *a):
        calls.append(path)
        raise common.BadAudio(f"{path}: still broken")
    monkeypatch.setattr(common, "audio_features", counting)
    assert run("--extract", tiny_audio, "--out", out, "--workers", "1") == 0
    assert [p.name for p in calls] == ["broken.wav"]
    with open(out) as f:
        assert list(csv.reader(f))[1:] == rows


@pytest.mark.skipif(not PUBLIC_CSV.exists(), reason="../shared/gtzan not present")
def test_extraction_agrees_with_public_csv():
    with open(PUBLIC_CSV) as f:
        public = {r["filename"]: r for r in csv.DictReader(f)}
    for name in ("blues.00001.wav", "metal.00003.wav"):
        ours = common.audio_features(SHARED_GTZAN / "genres" / name.split(".")[0] / name)
        theirs = public[name]
        for column, value in ours.items():
            expected = float(theirs[column])
            if column in ("harmony_mean", "perceptr_mean"):  # means near zero
                assert abs(value - expected) < 1e-4, column
            else:
                assert value == pytest.approx(expected, rel=0.01), column


def test_mlp_trains_with_scaler_and_pca_fitted_on_train_only(tmp_path):
    data = synthetic_csv(tmp_path / "f.csv")
    assert run("--features", data, "--epochs", "30", "--out", tmp_path, "--name", "m",
               "--hidden", "32:tanh,32:relu") == 0
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["test_balanced_accuracy"] >= 0.66 and m["model"] == "mlp-ce"
    model, ckpt = common.load_model(tmp_path / "m" / "model.pt")
    x, columns, clip_ids, _ = common.read_features_csv(data)
    split = json.loads((tmp_path / "split.json").read_text())
    train_rows = x[[i for i, c in enumerate(clip_ids) if c in set(split["train"])]]
    assert np.allclose(model.mean.numpy(), train_rows.mean(0), atol=1e-5)
    assert not np.allclose(model.mean.numpy(), x.mean(0), atol=1e-3)
    assert ckpt["spec"]["preprocess"]["columns"] == columns == ["length", "f1", "f2", "f3", "f4"]
    assert ckpt["spec"]["n_components"] == m["pca_components"] <= 5


@pytest.mark.parametrize("loss", ["hinge", "kl"])
def test_other_losses_run(loss, tmp_path):
    data = synthetic_csv(tmp_path / "f.csv")
    assert run("--features", data, "--epochs", "3", "--loss", loss, "--out", tmp_path, "--name", loss) == 0
    assert json.loads((tmp_path / loss / "metrics.json").read_text())["model"] == f"mlp-{loss}"


def test_kl_to_one_hot_equals_cross_entropy():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    kl = common.make_criterion("kl", 4)(logits, y)
    assert torch.allclose(kl, torch.nn.functional.cross_entropy(logits, y))
    smooth = common.make_criterion("kl", 4, smoothing=0.2)(logits, y)
    assert not torch.allclose(smooth, kl)


def test_svm_baseline_same_split_and_run_folder(tmp_path):
    data = synthetic_csv(tmp_path / "f.csv")
    assert run("--features", data, "--baseline", "svm", "--out", tmp_path, "--name", "svm") == 0
    assert run("--features", data, "--epochs", "2", "--out", tmp_path, "--name", "mlp") == 0
    svm, mlp = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("svm", "mlp"))
    assert svm["model"] == "svm" and svm["split_hash"] == mlp["split_hash"]
    assert svm["test_balanced_accuracy"] >= 0.66 and (tmp_path / "svm" / "model.joblib").exists()


def test_folds_summary_for_baseline(tmp_path):
    data = synthetic_csv(tmp_path / "f.csv")
    assert run("--features", data, "--baseline", "logreg", "--folds", "3", "--out", tmp_path, "--name", "k") == 0
    summary = json.loads((tmp_path / "k" / "summary.json").read_text())
    assert summary["folds"] == 3 and 0 <= summary["balanced_accuracy_std"] < 0.5


@pytest.mark.skipif(not PUBLIC_CSV.exists(), reason="../shared/gtzan not present")
def test_public_csv_accepted_unchanged_and_read_only_folder_untouched(tmp_path):
    before = sorted(p.name for p in PUBLIC_CSV.parent.iterdir())
    assert run("--features", PUBLIC_CSV, "--baseline", "logreg", "--out", tmp_path, "--name", "p") == 0
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert m["n_train"] + m["n_val"] + m["n_test"] == 1000 and m["test_balanced_accuracy"] > 0.5
    assert sorted(p.name for p in PUBLIC_CSV.parent.iterdir()) == before


@pytest.mark.parametrize("case,message", [
    ("nan", "NaN"), ("no_label", "missing column(s) label"), ("label_col", "missing column(s) genre"),
    ("missing", "no such features CSV"), ("hidden", "width:activation")])
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


def test_predict_from_audio_with_mlp(tiny_audio, tmp_path):
    feats = tmp_path / "f.csv"
    assert run("--extract", tiny_audio, "--out", feats, "--workers", "1") == 0
    test_dir = tmp_path / "test"
    write_tone(test_dir / "a.wav", 2100)
    write_tone(test_dir / "b.wav", 210)
    (test_dir / "bad.wav").write_bytes(b"")
    assert run("--features", feats, "--epochs", "5", "--hidden", "16:relu", "--out", tmp_path,
               "--name", "p", "--predict", test_dir, "--workers", "1") == 0
    with open(tmp_path / "p" / "submission.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "class"] and [r[0] for r in rows[1:]] == ["a.wav", "b.wav"]
    assert all(r[1] in ("blues", "metal", "pop") for r in rows[1:])


def test_extended_feature_set_adds_columns(tiny_audio, tmp_path):
    out = tmp_path / "ext.csv"
    assert run("--extract", tiny_audio, "--out", out, "--feature-set", "extended", "--workers", "1") == 0
    with open(out) as f:
        header, first, *_ = list(csv.reader(f))
    assert header == ["filename", *common.FEATURE_COLUMNS, *common.EXTENDED_COLUMNS, "label"]
    assert all(np.isfinite(float(v)) for v in first[1:-1])
