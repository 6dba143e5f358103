"""The suite's Kaggle paths (--submit, --dry-run, compare.py --kaggle, --download) driven through
the real kaggle client against the loopback Kaggle twin (tests/kaggle_twin.py)."""
import json
import os
import subprocess
import sys

import pytest

import common
import compare
import data_conversion
import kaggle_client
from conftest import ROOT
from kaggle_twin import TOKEN


@pytest.fixture
def submission(tmp_path):
    path = tmp_path / "run-a" / "submission.csv"
    path.parent.mkdir()
    path.write_text("id,class\n1.wav,pop\n2.wav,rock\n")
    return path


def one_line(err):
    return err.count("\n") == 1 and "Traceback" not in err


def test_submission_accepted(kaggle_twin, submission, capsys):
    result = kaggle_client.kaggle_submit(submission, "genre-comp", "run-a first try")
    assert result.ref == 1
    sent = kaggle_twin.submissions[0]
    assert (sent["competition"], sent["description"]) == ("genre-comp", "run-a first try")
    assert sent["content"] == submission.read_text()
    assert "ref 1, 4 submissions left today" in capsys.readouterr().out  # as the CLI tells


def test_refused_upload_relays_the_reason_the_package_printed(kaggle_twin, submission):
    kaggle_twin.upload_url = "ftp://localhost/upload"  # requests cannot PUT there: it says why
    with pytest.raises(common.SuiteError) as e:
        kaggle_client.kaggle_submit(submission, "genre-comp", "m")
    assert e.value.code == 2 and "No connection adapters" in str(e.value)
    assert "\n" not in str(e.value) and kaggle_twin.submissions == []


def test_refused_upload_is_an_error_not_a_success(kaggle_twin, submission, capsys):
    kaggle_twin.refuse_upload = True
    with pytest.raises(common.SuiteError) as e:
        kaggle_client.kaggle_submit(submission, "genre-comp", "m")
    assert e.value.code == 2 and "refused" in str(e.value) and str(submission) in str(e.value)
    assert kaggle_twin.submissions == [] and submission.exists()


@pytest.mark.parametrize("status,words", [(401, "401"), (503, "503")])
def test_submit_http_errors_one_line_exit_2(status, words, kaggle_twin, submission, capsys):
    kaggle_twin.fail_with = status
    with pytest.raises(common.SuiteError) as e:
        kaggle_client.kaggle_submit(submission, "genre-comp", "m")
    assert e.value.code == 2 and words in str(e.value) and TOKEN not in str(e.value)
    assert "\n" not in str(e.value)


def test_rejected_token_says_so_not_missing(kaggle_twin, submission):
    kaggle_twin.reject_credentials = True
    with pytest.raises(common.SuiteError) as e:
        kaggle_client.kaggle_api()
    assert e.value.code == 2 and "rejected the credentials" in str(e.value)
    assert "not found" not in str(e.value)


def test_no_credentials_one_line(no_kaggle_credentials, submission):
    with pytest.raises(common.SuiteError) as e:
        kaggle_client.kaggle_submit(submission, "c", "m")
    assert e.value.code == 2 and "Kaggle credentials not found" in str(e.value)


def test_no_network_says_so(no_kaggle_credentials, monkeypatch, submission):
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")  # nothing listens on localhost:7777
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    with pytest.raises(common.SuiteError) as e:
        kaggle_client.kaggle_submit(submission, "c", "m")
    assert e.value.code == 2 and "could not reach Kaggle" in str(e.value)
    assert "internet setting" not in str(e.value)  # not in a kernel: no kernel's setting
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # as Kaggle's sessions set it
    with pytest.raises(common.SuiteError) as e:
        kaggle_client.kaggle_submit(submission, "c", "m")
    assert "a Kaggle kernel needs its internet setting on" in str(e.value)


def test_dry_run_sends_nothing(kaggle_twin, submission, capsys):
    assert kaggle_client.kaggle_submit(submission, "genre-comp", "m", dry_run=True) is None
    assert "would submit" in capsys.readouterr().out and kaggle_twin.requests == []


def test_compare_reads_every_page_and_matches_whole_run_names(kaggle_twin, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("cnn-a", "cnn-a2", "mlp"):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.json").write_text(json.dumps({
            "model": name, "test_balanced_accuracy": 0.5, "test_accuracy": 0.5,
            "test_macro_f1": 0.5, "kaggle_score": None, "split_hash": "s", "run": name}))
    kaggle_twin.add_submission("comp", "cnn-a first", "0.41")
    kaggle_twin.add_submission("comp", "cnn-a2", "0.55")
    for i in range(230):  # newer submissions push the matching ones past the first two pages
        kaggle_twin.add_submission("comp", f"other {i}", "0.10")
    kaggle_twin.add_submission("comp", "mlp", None)  # not scored yet
    kaggle_twin.add_submission("other-comp", "mlp", "0.99")
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "r"), "--kaggle", "comp"]) == 0
    score = {n: json.loads((runs / n / "metrics.json").read_text())["kaggle_score"]
             for n in ("cnn-a", "cnn-a2", "mlp")}
    assert score == {"cnn-a": 0.41, "cnn-a2": 0.55, "mlp": None}
    assert sum("ListSubmissions" in p for _, p in kaggle_twin.requests) == 3


def test_compare_fills_public_and_private_scores_of_the_newest_scored(kaggle_twin, tmp_path,
                                                                    capsys):
    """Public and private score of the newest scored submission naming the run (private
    hidden until the competition ends); a K-fold run's folds all get its scores, and the
    run brought home from a Kaggle kernel shows its version."""
    runs = tmp_path / "runs"
    for folder in ("cnn", "mlp/fold1", "mlp/fold2"):
        (runs / folder).mkdir(parents=True)
        fold = ({"group": "mlp", "fold": int(folder[-1]), "kaggle_version": 4}
                if "fold" in folder else {})
        (runs / folder / "metrics.json").write_text(json.dumps({
            "model": folder[:3], "test_balanced_accuracy": 0.5, "test_accuracy": 0.5,
            "test_macro_f1": 0.5, "split_hash": "s", **fold}))
    kaggle_twin.add_submission("c", "cnn try 1", "0.50", "0.40")
    kaggle_twin.add_submission("c", "cnn try 2", "0.60")  # private hidden until the end
    kaggle_twin.add_submission("c", "cnn try 3")          # not scored yet
    kaggle_twin.add_submission("c", "mlp folds", "0.70", "0.65")
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "r"), "--kaggle", "c"]) == 0
    rows = {line.split(" |")[0][2:]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")}
    assert "| 0.600 | - |" in rows["cnn"]
    assert "| 0.700 | 0.650 |" in rows["mlp (2-fold) (Kaggle v4)"]
    cnn = json.loads((runs / "cnn" / "metrics.json").read_text())
    assert (cnn["kaggle_score"], cnn["kaggle_private_score"]) == (0.6, None)
    fold = json.loads((runs / "mlp" / "fold2" / "metrics.json").read_text())
    assert (fold["kaggle_score"], fold["kaggle_private_score"]) == (0.7, 0.65)
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "r")]) == 0  # kept
    assert "| 0.700 | 0.650 |" in capsys.readouterr().out


def test_download_unpacks_and_names_the_corrupt_clip(kaggle_twin, tmp_path, capsys):
    kaggle_twin.add_dataset(data_conversion.GTZAN_DATASET, {
        "Data/genres_original/jazz/jazz.00054.wav": b"corrupt",
        "Data/genres_original/blues/blues.00000.wav": b"RIFF",
        "Data/features_30_sec.csv": b"filename,label\n"})
    assert data_conversion.cli(["--download", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "g" / "Data" / "genres_original" / "blues" / "blues.00000.wav").exists()
    assert "genres_original" in out and "jazz.00054.wav is a known corrupt" in out


def test_download_of_unknown_dataset_exit_2(kaggle_twin, tmp_path, capsys):
    assert data_conversion.cli(["--download", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "404" in err


def test_download_without_credentials_exit_2(no_kaggle_credentials, tmp_path, capsys):
    assert data_conversion.cli(["--download", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "KAGGLE_API_TOKEN" in err and not (tmp_path / "g").exists()


def test_verbose_never_prints_the_token(kaggle_twin, submission, tmp_path):
    """kagglesdk prints request headers when VERBOSE is set; a whole submit, in a fresh process
    (the package reads VERBOSE on import), must not show the token anywhere."""
    code = f"import kaggle_client; kaggle_client.kaggle_submit({str(submission)!r}, 'comp', 'm')"
    env = {**os.environ, "VERBOSE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    assert "submitted" in result.stdout and kaggle_twin.submissions
    assert TOKEN not in output
