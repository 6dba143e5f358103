import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

import common
import train_cnn
from conftest import make_images


def loop_args(**kw):
    base = dict(lr=1e-3, epochs=20, batch_size=8, seed=0, patience=5, workers=0)
    return SimpleNamespace(**{**base, **kw})


def tiny_sets(n=24, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, d, generator=g) + 2 * torch.nn.functional.one_hot(y, d).float()
    ds = common.ArrayDataset(x, y.numpy(), [f"c{i}" for i in range(n)])
    return ds.subset(range(0, n, 2)), ds.subset(range(1, n, 2))


def test_plateau_lowers_lr_after_3_flat_epochs_and_stops_after_5():
    train, val = tiny_sets()
    model = torch.nn.Linear(6, 3)
    history, best = common.fit(model, train, val, torch.nn.CrossEntropyLoss(),
                               loop_args(lr=1e-12), torch.device("cpu"), log=lambda *_: None)
    assert best == 1 and len(history) == 6  # epoch 1 best, 5 epochs without improvement
    assert [h["lr"] for h in history] == pytest.approx([1e-12] * 5 + [1e-13])


def test_early_stopping_restores_best_weights(monkeypatch):
    train, val = tiny_sets()
    model = torch.nn.Linear(6, 3)
    scripted = iter([0.2, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.9])
    snapshots = []
    real_evaluate = common.evaluate

    def fake_evaluate(net, *a, **k):
        out = real_evaluate(net, *a, **k)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {**out, "balanced_acc": next(scripted)}
    monkeypatch.setattr(common, "evaluate", fake_evaluate)
    history, best = common.fit(model, train, val, torch.nn.CrossEntropyLoss(), loop_args(lr=0.1),
                               torch.device("cpu"), log=lambda *_: None)
    assert best == 2 and len(history) == 7
    assert not torch.equal(snapshots[1]["weight"], snapshots[-1]["weight"])
    assert torch.equal(model.weight, snapshots[1]["weight"])


def test_same_seed_same_history(tiny_images, tmp_path):
    histories = []
    for name in ("a", "b"):
        assert train_cnn.main(["--data", str(tiny_images), "--img-size", "16", "--epochs", "3",
                               "--out", str(tmp_path), "--name", name]) == 0
        with open(tmp_path / name / "history.csv") as f:
            histories.append([{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)])
    assert histories[0] == histories[1] and len(histories[0]) == 3


def test_run_folder_complete_and_metrics_match_sklearn(tiny_images, tmp_path):
    assert train_cnn.main(["--data", str(tiny_images), "--img-size", "16", "--epochs", "4",
                           "--lr", "3e-3", "--out", str(tmp_path), "--name", "r"]) == 0
    run = tmp_path / "r"
    for f in ("config.json", "history.csv", "metrics.json", "curves.png", "confusion.png",
              "report.txt", "model.pt"):
        assert (run / f).stat().st_size > 0, f
    m = json.loads((run / "metrics.json").read_text())
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    true, pred = [r["true"] for r in rows], [r["predicted"] for r in rows]
    assert m["test_accuracy"] == accuracy_score(true, pred)
    assert m["test_balanced_accuracy"] == balanced_accuracy_score(true, pred)
    assert m["n_test"] == len(rows) == 3 and m["n_train"] + m["n_val"] + m["n_test"] == 18
    assert np.array(m["confusion"]).sum() == 3 and m["kaggle_score"] is None
    assert 1 <= m["best_epoch"] <= m["epochs_run"] <= 4 and m["predict_seconds_per_clip"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["img_size"] == 16 and config["split_hash"] == m["split_hash"]
    assert "torch" in config["versions"]


def test_clip_vote_averages_segment_logits():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 1, 1])
    clips, clip_logits, clip_labels = common.clip_vote(logits, labels, ["x", "x", "x", "y", "y"])
    # x: mean (0.667, 0.833) -> class 1 although 1 of 3 segments says 0; y: (0.5, 1.5) -> 1
    assert clips == ["x", "y"] and clip_logits.argmax(1).tolist() == [1, 1]
    assert np.allclose(clip_logits[0], [2 / 3, 2.5 / 3]) and clip_labels.tolist() == [0, 1]
    s = common.clip_scores(logits, labels, ["x", "x", "x", "y", "y"])
    assert s["accuracy"] == 0.5 and s["balanced_accuracy"] == 0.5


def test_segments_scored_per_clip(tmp_path):
    data = make_images(tmp_path / "seg", n_per_class=5, segments=3)
    assert train_cnn.main(["--data", str(data), "--img-size", "16", "--epochs", "2",
                           "--out", str(tmp_path), "--name", "s"]) == 0
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["n_test"] == 3 and m["n_test_segments"] == 9
    assert "segment_test_balanced_accuracy" in m


def test_reloaded_model_predicts_identically(tiny_images, tmp_path):
    assert train_cnn.main(["--data", str(tiny_images), "--img-size", "16", "--epochs", "2",
                           "--out", str(tmp_path), "--name", "m"]) == 0
    model, ckpt = common.load_model(tmp_path / "m" / "model.pt")
    assert ckpt["spec"]["kind"] == "cnn" and ckpt["classes"] == ["a", "b", "c"]
    torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    x = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    fresh = common.build_model(ckpt["spec"])
    fresh.load_state_dict(ckpt["state_dict"])
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_folds_write_each_fold_and_summary(tiny_images, tmp_path):
    assert train_cnn.main(["--data", str(tiny_images), "--img-size", "16", "--epochs", "1",
                           "--folds", "3", "--out", str(tmp_path), "--name", "k"]) == 0
    summary = json.loads((tmp_path / "k" / "summary.json").read_text())
    assert summary["folds"] == 3 and len(summary["per_fold_balanced_accuracy"]) == 3
    assert summary["balanced_accuracy_mean"] == pytest.approx(np.mean(summary["per_fold_balanced_accuracy"]))
    tests = [json.loads((tmp_path / "k" / f"fold{i}" / "metrics.json").read_text()) for i in (1, 2, 3)]
    assert sum(t["n_test"] for t in tests) == 18


def test_cnn_learns_separable_images(tmp_path):
    data = make_images(tmp_path / "sep", n_per_class=10)
    assert train_cnn.main(["--data", str(data), "--img-size", "16", "--epochs", "15",
                           "--lr", "3e-3", "--out", str(tmp_path), "--name", "l"]) == 0
    m = json.loads((tmp_path / "l" / "metrics.json").read_text())
    assert m["test_balanced_accuracy"] >= 0.66


@pytest.mark.parametrize("argv,message", [
    (["--data", "/nonexistent"], "no such folder"),
    (["--img-size", "20"], "multiple of 8"),
    (["--device", "cuda:0"], "CUDA is not available"),
])
def test_bad_input(argv, message, tiny_images, tmp_path, capsys):
    args = ["--data", str(tiny_images), "--out", str(tmp_path), "--epochs", "1", "--img-size", "16"]
    if torch.cuda.is_available() and "cuda:0" in argv:
        pytest.skip("has CUDA")
    assert train_cnn.main(args + argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mixup_trains_on_mixed_pairs():
    train, val = tiny_sets()
    runs = []
    for mixup in (0.0, 0.4):
        torch.manual_seed(0)
        common.seed_everything(0)
        model = torch.nn.Linear(6, 3)
        history, _ = common.fit(model, train, val, torch.nn.CrossEntropyLoss(),
                                loop_args(epochs=3, patience=10, mixup=mixup), torch.device("cpu"),
                                log=lambda *_: None)
        runs.append([h["train_loss"] for h in history])
    assert runs[0] != runs[1] and all(np.isfinite(runs[1]))


def test_lazy_loading_above_memory_budget_gives_same_run(tiny_images, tmp_path, capsys):
    histories = []
    for name, budget in (("memory", "4096"), ("lazy", "0")):
        assert train_cnn.main(["--data", str(tiny_images), "--img-size", "16", "--epochs", "2",
                               "--cache-mb", budget, "--out", str(tmp_path), "--name", name]) == 0
        with open(tmp_path / name / "history.csv") as f:
            histories.append([{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)])
    assert "decoding per batch instead" in capsys.readouterr().err
    assert histories[0] == histories[1]
