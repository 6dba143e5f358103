import json
import shutil

import numpy as np
import pytest

import compare
import reports


def fake_run(runs, name, bal, split="s1", group=None, fold=None, data="d"):
    folder = runs / (group or name) / (f"fold{fold}" if fold else "")
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"model": name.split("-")[0], "test_balanced_accuracy": bal, "test_accuracy": bal + 0.01,
               "test_macro_f1": bal - 0.01, "epochs_run": 7, "best_epoch": 4, "seconds_to_best": 12.5,
               "seconds_to_best_val": 9.5,
               "predict_seconds_per_clip": 0.004, "kaggle_score": None, "split_hash": split,
               "data": data, "run": name}
    if group:
        metrics.update({"group": group, "fold": fold, "folds": 3})
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_table_charts_and_fold_groups(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "cnn-a", 0.5)
    fake_run(runs, "vgg16-b", 0.8)
    for fold, bal in ((1, 0.6), (2, 0.7), (3, 0.8)):
        fake_run(runs, "mlp-k", bal, group="mlp-k", fold=fold, split=f"f{fold}")
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    assert len(lines) == 3  # the folds are one row (in a table of their own: other clips)
    assert lines[0].startswith("| vgg16-b") and "0.800" in lines[0]
    fold_row = next(line for line in lines if "3-fold" in line)
    assert "0.700 ± 0.100" in fold_row  # sample standard deviation (ddof=1)
    assert "4.00" in lines[0]  # 0.004 s per clip shown as ms
    assert "| 9.50 |" in lines[0]  # time to the best validation epoch
    for name in compare.CHARTS:  # Kaggle's chart only once there are scores
        assert (tmp_path / "report" / name).exists() == (name != "kaggle_score.png")
        if name != "kaggle_score.png":
            assert (tmp_path / "report" / name).stat().st_size > 1000
    assert (tmp_path / "report" / "compare.md").read_text().count("| ") >= 4


def test_runs_without_test_figures_are_shown_not_dropped(tmp_path, capsys):
    """A run killed before its end (a checkpoint, no metrics.json) is listed with where it
    stands; one stopped by --time-limit is in the table, marked incomplete; a Kaggle chart left
    from an earlier report goes when no run has a score."""
    import common
    runs = tmp_path / "runs"
    fake_run(runs, "cnn-a", 0.5)
    stopped = json.loads((runs / "cnn-a" / "metrics.json").read_text())
    (runs / "cnn-a" / "metrics.json").write_text(json.dumps({**stopped, "complete": False,
                                                             "epochs_run": 4, "epochs": 30}))
    killed = runs / "cnn-b"
    killed.mkdir()
    (killed / "config.json").write_text(json.dumps({"script": "train_transfer.py",
                                                     "args": {"epochs": 20}}))
    common.write_json(killed / "checkpoint.json", {"epochs_done": 3, "best_epoch": 2})
    for fold in (1, 2):  # killed in its third fold of three
        fake_run(runs, "mlp-k", 0.6, group="mlp-k", fold=fold, split=f"f{fold}")
    (runs / "mlp-k" / "config.json").write_text(json.dumps({"script": "train_mlp.py",
                                                           "args": {"epochs": 9, "folds": 3}}))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "compare.md").write_text("old")
    (tmp_path / "r" / "kaggle_score.png").write_bytes(b"old chart")
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "compare.md").read_text()
    assert "| cnn-a (incomplete: stopped at epoch 4 of 30) |" in md
    assert f"- cnn-b: at epoch 3 of 20; `python train_transfer.py --resume {killed}` goes on" in md
    assert "| mlp-k (3-fold) (incomplete: stopped at 2 of 3 folds tested) |" in md
    assert f"- mlp-k: at fold 3 of 3, epoch 0 of 9; `python train_mlp.py --resume {runs / 'mlp-k'}`" in md
    assert "- cnn-a" not in md  # time-limited: in the table
    assert not (tmp_path / "r" / "kaggle_score.png").exists()
    (runs / "cnn-a" / "metrics.json").unlink()  # nothing finished: said, with the killed run
    shutil.rmtree(runs / "mlp-k")
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "r")]) == 1
    assert "unfinished: cnn-b at epoch 3 of 20" in capsys.readouterr().err


def test_runs_on_different_splits_are_never_ranked_together(tmp_path, capsys):
    """Each split gets its own table, headed by what the split is and how many test clips it
    has; a small test part is marked with what one clip is worth."""
    runs = tmp_path / "runs"
    fake_run(runs, "cnn-a", 0.5, split="aaa")
    fake_run(runs, "cnn-b", 0.6, split="bbb", data="other")
    fake_run(runs, "mlp-c", 0.9, split="bbb", data="other")
    metrics = json.loads((runs / "cnn-a" / "metrics.json").read_text())
    metrics.update(split="gtzan-filtered", n_test=290, small_test=None)
    (runs / "cnn-a" / "metrics.json").write_text(json.dumps(metrics))
    metrics = json.loads((runs / "mlp-c" / "metrics.json").read_text())
    metrics.update(split="random 80/10/10 (seed 0)", n_test=10, small_test="10 clips: one clip ...")
    (runs / "mlp-c" / "metrics.json").write_text(json.dumps(metrics))
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "compare.md").read_text()
    tables = md.split("## ")[1:]
    assert "2 different splits" in md and len(tables) == 2
    assert tables[0].startswith("random 80/10/10 (seed 0): 10 test clips (split bbb; data: other)")
    assert tables[0].index("| mlp-c") < tables[0].index("| cnn-b") and "| cnn-a" not in tables[0]
    assert tables[1].startswith("gtzan-filtered: 290 test clips") and "| cnn-a" in tables[1]
    assert "0.900 †" in tables[0] and "† a small test part (mlp-c): 10 clips" in tables[0]


def test_no_runs_one_line(tmp_path, capsys):
    assert compare.cli(["--runs", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_kaggle_without_credentials_exit_2(tmp_path, no_kaggle_credentials, capsys):
    fake_run(tmp_path / "runs", "cnn-a", 0.5)
    assert compare.cli(["--runs", str(tmp_path / "runs"), "--kaggle", "x"]) == 2
    err = capsys.readouterr().err
    assert "Kaggle credentials not found" in err and err.count("\n") == 1


def test_ensemble_averages_clip_probabilities_of_two_families(tiny_audio, tmp_path, capsys):
    """A CNN on the images and an MLP on the features of the same clips share a split; the
    ensemble row is the balanced accuracy of their mean probabilities, and both runs timed
    audio to label on the test audio they predicted."""
    import csv

    from sklearn.metrics import balanced_accuracy_score

    import data_conversion
    import train_cnn
    import train_mlp
    runs = tmp_path / "runs"
    assert data_conversion.cli([str(tiny_audio), str(tmp_path / "img"), "--size", "16",
                                 "--workers", "1"]) == 0
    test_audio = tiny_audio / "pop"
    assert train_cnn.cli(["--data", str(tmp_path / "img"), "--epochs", "3", "--out", str(runs),
                           "--name", "cnn", "--workers", "1", "--predict", str(test_audio)]) == 0
    assert data_conversion.cli([str(tiny_audio), "--features", str(tmp_path / "f.csv"),
                           "--workers", "1"]) == 0
    assert train_mlp.cli(["--features", str(tmp_path / "f.csv"), "--epochs", "3", "--out",
                           str(runs), "--name", "mlp", "--workers", "1", "--predict",
                           str(test_audio)]) == 0
    capsys.readouterr()
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "r"), "--ensemble", "cnn",
                         "mlp", "--ensemble-name", "both"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| both"))
    probabilities = []
    for name in ("cnn", "mlp"):
        with open(runs / name / "predictions.csv") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: r["clip_id"])
        classes = [c[2:] for c in rows[0] if c.startswith("p_")]
        probabilities.append(np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows]))
        record = json.loads((runs / name / "prediction.json").read_text())
        assert record["files"] == 3 and record["preprocess_seconds_per_clip"] > 0
    predicted = [classes[i] for i in np.mean(probabilities, axis=0).argmax(1)]
    expected = balanced_accuracy_score([r["true"] for r in rows], predicted)
    assert f"| {expected:.3f} |" in row
    saved = json.loads((tmp_path / "r" / "both" / "metrics.json").read_text())
    assert saved["test_balanced_accuracy"] == pytest.approx(expected)
    records = [json.loads((runs / n / "prediction.json").read_text()) for n in ("cnn", "mlp")]
    assert saved["audio_to_label_seconds_per_clip"] == pytest.approx(sum(
        r["preprocess_seconds_per_clip"] + r["model_seconds_per_clip"] for r in records))
    assert (tmp_path / "r" / "both" / "confusion.png").stat().st_size > 1000


def test_ensemble_of_runs_on_other_clips_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "cnn-a", 0.5, split="aaa")
    fake_run(runs, "cnn-b", 0.6, split="bbb")
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "r"), "--ensemble",
                         "cnn-a", "cnn-b"]) == 1
    err = capsys.readouterr().err
    assert "different clips" in err and err.count("\n") == 1


def test_charts_name_the_split_and_its_test_clips(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "cnn-a", 0.5, split="aaa")
    metrics = json.loads((runs / "cnn-a" / "metrics.json").read_text())
    metrics.update(split="gtzan-filtered", n_test=290)
    (runs / "cnn-a" / "metrics.json").write_text(json.dumps(metrics))
    groups = compare.by_split(compare.load_runs(runs))
    figures = [compare.bar_chart(tmp_path / name, groups, panels)
               for name, panels in compare.CHARTS.items()]
    legends = [ax.get_legend() for fig in figures for ax in fig.axes if ax.get_legend()]
    assert legends and all([t.get_text() for t in legend.get_texts()] == ["gtzan-filtered: 290 test clips"]
                           for legend in legends)


def test_confusion_chart_names_the_split_and_its_test_clips(tmp_path):
    metrics = {"model": "mlp", "test_balanced_accuracy": 0.5, "n_test": 290, "split": "gtzan-filtered",
               "confusion": [[1, 1], [0, 2]]}
    figure = reports.plot_confusion(tmp_path / "c.png", metrics, ["a", "b"])
    assert figure.axes[0].get_title() == "mlp: balanced accuracy 0.500\n290 test clips, gtzan-filtered"


def test_intervals_and_paired_differences_in_the_table(tmp_path, capsys):
    """Every balanced accuracy with its 95 % interval: a run recorded without one gets it from
    its predictions.csv ('?' without that file), a K-fold run the t interval of its mean; under a
    split's table, its best run against each other one on the same clips, within noise or not."""
    import training
    runs, classes = tmp_path / "runs", ["a", "b"]
    clips, truth = [f"c{i:02d}" for i in range(40)], [i % 2 for i in range(40)]
    for name, wrong in (("good", 0), ("close", 2), ("bad", 20)):  # the first clips wrong
        fake_run(runs, name, 1 - wrong / 40)
        predicted = [(t + (i < wrong)) % 2 for i, t in enumerate(truth)]
        training.write_predictions(runs / name / "predictions.csv", classes, clips, truth,
                                   np.eye(2)[predicted])
    fake_run(runs, "old", 0.4)  # recorded before predictions.csv
    fake_run(runs, "moved", 0.3)  # its predictions name other clips
    training.write_predictions(runs / "moved" / "predictions.csv", classes, [f"x{c}" for c in clips],
                               truth, np.eye(2)[truth])
    for fold, bal in ((1, 0.6), (2, 0.7), (3, 0.8)):
        fake_run(runs, "mlp-k", bal, group="mlp-k", fold=fold, split=f"f{fold}")
    assert compare.main(["--runs", str(runs), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    row = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    assert f"| 1.000 | {0.025 ** (1 / 40):.3f}..1.000 |" in row["good"]  # Clopper-Pearson, 40 of 40
    assert "| 0.400 | ? |" in row["old"]
    assert "| 0.700 ± 0.100 | 0.452..0.948 |" in row["mlp-k (3-fold)"]  # 0.7 -+ 4.303 x 0.1 / sqrt(3)
    assert "- good vs close: +0.050 (95% CI " in out
    assert "McNemar p = 0.5, 2 vs 0 clips right by one only): within noise" in out
    assert "- good vs bad: +0.500" in out and "20 vs 0 clips right by one only): beyond noise" in out
    assert "- good vs old: not compared: no predictions.csv" in out
    assert "- good vs moved: not compared: not the same test clips" in out
    assert "mlp-k (3-fold) vs" not in out  # alone on its folds
    groups = compare.by_split(compare.load_runs(runs))
    fig = compare.bar_chart(tmp_path / "b.png", groups, compare.CHARTS["balanced_accuracy.png"])
    bars = {round(b.get_height(), 3): b for b in fig.axes[0].patches}
    lines = [seg for c in fig.axes[0].collections for seg in c.get_segments()]  # error bars
    good = next(seg for seg in lines if seg[0][0] == pytest.approx(bars[1.0].get_x() + 0.4))
    assert sorted(y for _, y in good) == pytest.approx([0.025 ** (1 / 40), 1.0])  # its interval
