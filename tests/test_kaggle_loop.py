"""kernels/kaggle_loop.py: push -> status -> output -> submit -> compare.py --kaggle, driven
through the real kaggle client against the loopback Kaggle twin (tests/kaggle_twin.py), and
every refusal one line with exit code 2."""
import importlib.util
import json

import pytest

import compare
from conftest import ROOT
from kaggle_twin import TOKEN, USER, kaggle_log

spec = importlib.util.spec_from_file_location("kaggle_loop", ROOT / "kernels" / "kaggle_loop.py")
loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loop)

KERNEL_ID = f"{USER}/music-genre-cnn"
SUBMISSION = b"id,class\n1.wav,pop\n2.wav,rock\n"


@pytest.fixture
def kernel(tmp_path):
    """kernels/cnn/ as build.py makes it: metadata and one script."""
    folder = tmp_path / "kernels" / "cnn"
    folder.mkdir(parents=True)
    (folder / "kernel.py").write_text("print('training')\n")
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": KERNEL_ID, "title": "Music Genre CNN", "code_file": "kernel.py",
        "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": True,
        "machine_shape": "NvidiaTeslaT4", "enable_internet": False, "dataset_sources": [],
        "competition_sources": ["genre-comp"], "kernel_sources": []}))
    return folder


def kernel_output(run="kaggle", folds=0):
    """/kaggle/working of a finished kernel: submission.csv, its run folder (named as the kernel
    named it), the split it kept beside (input is read-only). More files than one page."""
    metrics = {"model": "specnet", "test_balanced_accuracy": 0.7, "test_accuracy": 0.72,
               "test_macro_f1": 0.69, "kaggle_score": None, "split_hash": "s", "run": run}
    files = {"submission.csv": SUBMISSION, "runs/splits/genres-1234.json": b"{}"}
    parts = [f"runs/{run}/fold{k}/" for k in range(1, folds + 1)] or [f"runs/{run}/"]
    for k, part in enumerate(parts, 1):
        m = {**metrics, "group": run, "fold": k} if folds else metrics
        files.update({part + "metrics.json": json.dumps(m).encode(),
                      part + "config.json": b"{}", part + "history.csv": b"epoch\n1\n",
                      part + "predictions.csv": b"clip_id\n", part + "model.pt": bytes(range(256))})
    return files


def finished(twin, output=None, statuses=("COMPLETE",), failure="", log=""):
    """A version of the kernel on the twin, as if pushed and run."""
    twin.next_run = {"statuses": list(statuses), "failure": failure, "log": log,
                     "output": kernel_output() if output is None else output}
    return twin.push({"slug": KERNEL_ID, "text": "print('training')\n"})


def one_line(err):
    return err.count("\n") == 1 and "Traceback" not in err


def test_push_follow_output_submit_compare(kaggle_twin, kernel, tmp_path, capsys):
    runs, report = tmp_path / "runs", tmp_path / "report"
    kaggle_twin.add_competition("genre-comp")
    kaggle_twin.next_run = {"statuses": ["QUEUED", "RUNNING", "RUNNING", "COMPLETE"],
                            "output": kernel_output("kaggle"), "log": kaggle_log(["epoch 1"])}
    assert loop.main(["push", str(kernel), "--accelerator", "NvidiaL4", "--timeout", "3600"]) == 0
    out = capsys.readouterr().out
    assert f"{KERNEL_ID} version 1: https://www.kaggle.com/code/{KERNEL_ID}" in out
    pushed = kaggle_twin.kernels[KERNEL_ID][0]["request"]
    assert pushed["text"] == "print('training')\n" and pushed["machineShape"] == "NvidiaL4"
    assert pushed["sessionTimeoutSeconds"] == 3600 and not pushed["enableInternet"]
    assert pushed["competitionDataSources"] == ["genre-comp"]

    assert loop.main(["status", str(kernel), "--follow", "--interval", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1].split()[0] for line in lines] == [
        "queued", "running", "running", "complete"]
    assert all(line.endswith("s)") for line in lines)  # elapsed time

    assert loop.main(["output", str(kernel), "--runs", str(runs)]) == 0
    run = runs / "cnn"  # named after the kernel folder, whatever the kernel called it
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["kaggle_kernel"], metrics["kaggle_version"], metrics["run"]) == (
        KERNEL_ID, 1, "cnn")
    assert (run / "submission.csv").read_bytes() == SUBMISSION
    assert (run / "model.pt").read_bytes() == bytes(range(256))  # past the first output page
    assert "epoch 1" in (run / "kaggle.log").read_text()
    assert sorted(p.name for p in runs.iterdir()) == ["cnn"]  # no split, no temporary folder

    assert loop.main(["submit", str(kernel), "--competition", "genre-comp", "-m", "first",
                      "--runs", str(runs)]) == 0
    sent = kaggle_twin.submissions[-1]
    assert sent["content"] == SUBMISSION.decode() and sent["description"] == "first [cnn]"
    assert "ref 1, 4 submissions left today" in capsys.readouterr().out

    sent.update(publicScore="0.812", privateScore="0.794", status="COMPLETE")
    assert compare.main(["--runs", str(runs), "--out", str(report), "--kaggle", "genre-comp"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| cnn"))
    assert row.startswith("| cnn (Kaggle v1) |") and "| 0.812 | 0.794 |" in row
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["kaggle_score"], metrics["kaggle_private_score"]) == (0.812, 0.794)
    assert (report / "kaggle_score.png").stat().st_size > 1000


@pytest.mark.parametrize("flag", [[], ["--code"]])
def test_code_competition_submits_the_kernel_version(flag, kaggle_twin, kernel, tmp_path, capsys):
    """Kaggle lists the competition as kernels-only (or --code says so): the newest version is
    submitted by kernel and version, no file is uploaded."""
    kaggle_twin.add_competition("code-comp", code=not flag)
    finished(kaggle_twin)
    finished(kaggle_twin)
    assert loop.main(["submit", str(kernel), "--competition", "code-comp",
                      "--runs", str(tmp_path / "runs")] + flag) == 0
    sent = kaggle_twin.submissions[-1]
    assert (sent["kernel"], sent["kernelVersion"], sent["outputFile"]) == (
        KERNEL_ID, 2, "submission.csv")
    assert sent["description"] == "cnn version 2"
    assert not any("Upload" in path for _, path in kaggle_twin.requests)
    assert f"submitted {KERNEL_ID} version 2 to code-comp: ref 1" in capsys.readouterr().out


def test_submit_downloads_the_output_when_not_home_yet(kaggle_twin, kernel, tmp_path, capsys):
    finished(kaggle_twin)
    assert loop.main(["submit", str(kernel), "--competition", "genre-comp",
                      "--runs", str(tmp_path / "runs")]) == 0
    assert kaggle_twin.submissions[-1]["content"] == SUBMISSION.decode()
    assert kaggle_twin.submissions[-1]["description"] == "cnn version 1"
    assert (tmp_path / "runs" / "cnn" / "kaggle.json").is_file()


def test_output_replaces_its_own_run_but_not_someone_elses(kaggle_twin, kernel, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "cnn").mkdir(parents=True)
    (runs / "cnn" / "metrics.json").write_text("{}")  # a local run of the same name
    finished(kaggle_twin)
    assert loop.main(["output", str(kernel), "--runs", str(runs)]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "--overwrite" in err
    assert (runs / "cnn" / "metrics.json").read_text() == "{}"
    assert not any("Output" in path for _, path in kaggle_twin.requests)  # refused before
    assert loop.main(["output", str(kernel), "--runs", str(runs), "--overwrite"]) == 0
    finished(kaggle_twin, kernel_output("cnn", folds=2))  # version 2, K-fold
    assert loop.main(["output", str(kernel), "--runs", str(runs)]) == 0  # its own: replaced
    assert not (runs / "cnn" / "metrics.json").exists()
    fold = json.loads((runs / "cnn" / "fold2" / "metrics.json").read_text())
    assert (fold["kaggle_version"], fold["group"]) == (2, "cnn")


def test_kernel_error_shows_kaggles_message_and_the_log_tail(kaggle_twin, kernel, capsys):
    log = kaggle_log([f"epoch {i}" for i in range(30)] + ["RuntimeError: CUDA out of memory"],
                     stream="stderr")
    finished(kaggle_twin, statuses=["RUNNING", "ERROR"], log=log,
             failure="Your notebook hit an error")
    assert loop.main(["status", str(kernel), "--follow", "--interval", "0.01"]) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err)
    assert "Your notebook hit an error" in captured.err and "CUDA out of memory" in captured.err
    assert "epoch 29" in captured.out and "epoch 10" not in captured.out  # the tail only


def refuse(twin, case):
    """Set the twin up to refuse; returns the command."""
    submit = ["submit", "cnn", "--competition", "comp"]
    if case == "rules":
        twin.add_competition("comp", rules_accepted=False)
    elif case in ("429", "400"):
        twin.daily_limit, twin.limit_status = 0, int(case)
    elif case == "unknown competition":
        twin.missing.add("comp")
    elif case == "upload":
        twin.upload_url = "ftp://localhost/upload"  # the package prints why and answers "failed"
    elif case == "401":
        twin.reject_credentials = True
    elif case == "unknown kernel":
        return ["status", "cnn"]
    elif case == "push refused":
        twin.refuse_push = "Notebook title is already in use"
        return ["push", "cnn"]
    elif case in ("push", "someone else's kernel"):
        return ["push" if case == "push" else "status", "cnn"]
    finished(twin)
    return submit


@pytest.mark.parametrize("case,words", [
    ("rules", ["403", "accept", "rules"]),
    ("429", ["429", "daily submission limit"]),
    ("400", ["400", "allowance", "daily submission limit"]),
    ("unknown competition", ["404", "comp not found"]),
    ("unknown kernel", ["404", f"{KERNEL_ID} not found"]),
    ("upload", ["refused", "No connection adapters"]),
    ("401", ["rejected the credentials"]),
    ("push", ["403", "may not push"]),
    ("push refused", ["refused the push", "title is already in use"]),
    ("someone else's kernel", ["403", "'kernels.get' was denied"]),  # not the package's guess
])
def test_refusals_are_one_line_exit_2(case, words, kaggle_twin, kernel, tmp_path, capsys):
    if case in ("push", "someone else's kernel"):
        metadata = json.loads((kernel / "kernel-metadata.json").read_text())
        (kernel / "kernel-metadata.json").write_text(json.dumps({**metadata,
                                                                 "id": "someone/genre-cnn"}))
    command = refuse(kaggle_twin, case)
    command[1] = str(kernel)
    assert loop.main(command + (["--runs", str(tmp_path / "runs")] if "submit" in command
                                else [])) == 2
    err = capsys.readouterr().err
    assert one_line(err) and TOKEN not in err
    assert all(w in err for w in words) and "benchmark" not in err, err


def test_no_network_one_line(no_kaggle_credentials, kernel, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")  # nothing listens on localhost:7777
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    assert loop.main(["status", str(kernel)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "could not reach Kaggle" in err


def test_kernel_found_by_name_or_path(kaggle_twin, kernel, tmp_path, capsys, monkeypatch):
    """NAME is kernels/NAME/ beside the script (whatever build.py made there); anything else
    is one line listing them."""
    monkeypatch.setattr(loop, "KERNELS_DIR", kernel.parent)
    assert loop.main(["status", "cnn"]) == 2  # not pushed to the twin
    assert f"status of {KERNEL_ID} failed" in capsys.readouterr().err
    assert loop.main(["status", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "not a kernel folder" in err and "cnn" in err


def test_a_stale_kernel_is_not_pushed(kaggle_twin, tmp_path, capsys):
    """A kernel built from a recipe whose code has changed since is refused before any upload."""
    build = loop.KERNELS_DIR / "build.py"
    spec = importlib.util.spec_from_file_location("kernel_build", build)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert builder.main(["--recipe", "mlp", "--user", USER, "--out", str(tmp_path)]) == 0
    assert loop.main(["push", str(tmp_path / "mlp")]) == 0
    script = tmp_path / "mlp" / "kernel.py"
    script.write_text(script.read_text().replace("def install_modules", "def install_modules_old"))
    capsys.readouterr()
    assert loop.main(["push", str(tmp_path / "mlp")]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "rebuild it first" in err
    assert len(kaggle_twin.kernels[f"{USER}/music-genre-mlp"]) == 1  # the stale one never sent
