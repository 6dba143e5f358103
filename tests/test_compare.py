import json

import compare


def fake_run(runs, name, bal, split="s1", group=None, fold=None, data="d"):
    folder = runs / (group or name) / (f"fold{fold}" if fold else "")
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"model": name.split("-")[0], "test_balanced_accuracy": bal, "test_accuracy": bal + 0.01,
               "test_macro_f1": bal - 0.01, "epochs_run": 7, "best_epoch": 4, "seconds_to_best": 12.5,
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
    assert compare.main(["--runs", str(runs), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(lines) == 4  # header + 3 entries: the folds are one row
    assert lines[1].startswith("| vgg16-b") and "0.800" in lines[1]
    fold_row = next(line for line in lines if "3-fold" in line)
    assert "0.700 ± 0.100" in fold_row  # sample standard deviation (ddof=1)
    assert "4.00" in lines[1]  # 0.004 s per clip shown as ms
    for name in compare.CHARTS:
        assert (tmp_path / "report" / name).stat().st_size > 1000
    assert (tmp_path / "report" / "compare.md").read_text().count("| ") >= 4


def test_different_splits_and_data_are_flagged(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "cnn-a", 0.5, split="aaa")
    fake_run(runs, "cnn-b", 0.6, split="bbb", data="other")
    assert compare.main(["--runs", str(runs), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "compare.md").read_text()
    assert "2 different splits" in md and "data: d, other" in md


def test_no_runs_one_line(tmp_path, capsys):
    assert compare.main(["--runs", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_kaggle_without_credentials_exit_2(tmp_path, no_kaggle_credentials, capsys):
    fake_run(tmp_path / "runs", "cnn-a", 0.5)
    assert compare.main(["--runs", str(tmp_path / "runs"), "--kaggle", "x"]) == 2
    err = capsys.readouterr().err
    assert "Kaggle credentials not found" in err and err.count("\n") == 1
