"""kernels/kaggle_loop.py: push (the relay partner whose turn it is) -> status -> output ->
submit -> compare.py --kaggle, and weights, driven through the real kaggle client against the
loopback Kaggle twin (tests/kaggle_twin.py) with scripted versions (what a session leaves: its
status, output and log); every refusal one line with exit code 2. The sessions themselves run in
tests/test_kernels.py."""
import importlib.util
import json
import shutil

import pytest

import compare
from conftest import ROOT
from kaggle_twin import TOKEN, USER, kaggle_log
from kaggle_twin import error as kaggle_twin_error
from kaggle_twin import ok as ok_json

spec = importlib.util.spec_from_file_location("kaggle_loop", ROOT / "kernels" / "kaggle_loop.py")
loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loop)
spec = importlib.util.spec_from_file_location("kernels_build", ROOT / "kernels" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

KERNEL_ID, RELAY_ID = f"{USER}/music-genre-cnn", f"{USER}/music-genre-cnn-relay"
SUBMISSION = b"id,class\n1.wav,pop\n2.wav,rock\n"


@pytest.fixture
def kernel(tmp_path):
    """kernels/cnn/ as build.py makes it: the notebook, its metadata and its relay partner's."""
    assert build.cli(["--recipe", "cnn", "--user", USER, "--competition", "genre-comp",
                       "--out", str(tmp_path / "kernels")]) == 0
    return tmp_path / "kernels" / "cnn"


def kernel_output(run="cnn", epochs=8, done=8, folds=0, submission=True):
    """/kaggle/working of a session that got to epoch `done` of `epochs` (finished when equal):
    the run folder with its small files and model, submission.csv, the split kept beside. More
    files than one page of the output listing."""
    metrics = {"model": "convolneunet", "test_balanced_accuracy": 0.7, "test_accuracy": 0.72,
               "test_macro_f1": 0.69, "kaggle_score": None, "split_hash": "s", "run": run,
               "epochs_run": done, "complete": done == epochs}
    files = {"runs/splits/genres-1234.json": b"{}",
             f"runs/{run}/config.json": json.dumps({"args": {"epochs": epochs,
                                                             "folds": folds or None}}).encode()}
    if submission:
        files["submission.csv"] = SUBMISSION
    for k, part in enumerate([f"runs/{run}/fold{k}/" for k in range(1, folds + 1)]
                             or [f"runs/{run}/"], 1):
        m = {**metrics, "group": run, "fold": k} if folds else metrics
        files.update({part + "metrics.json": json.dumps(m).encode(),
                      part + "history.csv": b"epoch\n1\n", part + "predictions.csv": b"clip_id\n",
                      part + "model.pt": bytes(range(256))})
        if done < epochs:
            files[part + "checkpoint.pt"] = b"state"
            files[part + "checkpoint.json"] = json.dumps({"epochs_done": done}).encode()
    return files


def ran(twin, kernel_id=KERNEL_ID, output=None, statuses=("COMPLETE",), failure="", log=""):
    """A version of the kernel on the twin, as if pushed and run."""
    twin.next_run = {"statuses": list(statuses), "failure": failure, "log": log,
                     "output": kernel_output() if output is None else output}
    return twin.push({"slug": kernel_id, "text": "{}", "kernelType": "notebook"})


def one_line(err):
    return err.count("\n") == 1 and "Traceback" not in err


def test_push_follow_output_submit_compare(kaggle_twin, kernel, tmp_path, capsys):
    runs, report = tmp_path / "runs", tmp_path / "report"
    kaggle_twin.add_competition("genre-comp")
    kaggle_twin.next_run = {"statuses": ["QUEUED", "RUNNING", "RUNNING", "COMPLETE"],
                            "output": kernel_output(), "log": kaggle_log(["epoch 1"])}
    assert loop.cli(["push", str(kernel), "--accelerator", "NvidiaL4", "--timeout", "3600"]) == 0
    out = capsys.readouterr().out
    assert f"pushed {KERNEL_ID} version 1: it starts the run (nothing to resume yet)" in out
    pushed = kaggle_twin.version(KERNEL_ID)["request"]
    notebook = json.loads(pushed["text"])  # the notebook, as the client sends it
    assert pushed["kernelType"] == "notebook" and notebook["cells"][1]["source"].startswith("RECIPE")
    assert all(not c.get("outputs") for c in notebook["cells"])
    assert pushed["machineShape"] == "NvidiaL4" and pushed["sessionTimeoutSeconds"] == 3600
    assert not pushed["enableInternet"] and pushed["competitionDataSources"] == ["genre-comp"]
    assert pushed["kernelDataSources"] == [RELAY_ID]  # the partner, never itself

    assert loop.cli(["status", str(kernel), "--follow", "--interval", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()  # (the first answer found the newest version)
    assert lines.pop() == "GPU quota: 30.0 h left of 30.0 h this week (0.0 h used, refreshes " \
        "2026-12-12 00:00 UTC)"
    assert [line.split(": ")[1].split()[0] for line in lines] == ["running", "running", "complete"]
    assert all(line.endswith(")") for line in lines)  # elapsed time

    assert loop.cli(["output", str(kernel), "--runs", str(runs)]) == 0
    run = runs / "cnn"  # named after the kernel folder, whatever the kernel called it
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["kaggle_kernel"], metrics["kaggle_version"], metrics["run"]) == (
        KERNEL_ID, 1, "cnn")
    assert (run / "submission.csv").read_bytes() == SUBMISSION
    assert (run / "model.pt").read_bytes() == bytes(range(256))  # past the first output page
    assert "epoch 1" in (run / "kaggle.log").read_text()
    assert sorted(p.name for p in runs.iterdir()) == ["cnn"]  # no split, no temporary folder

    assert loop.cli(["submit", str(kernel), "--competition", "genre-comp", "-m", "first",
                      "--runs", str(runs)]) == 0
    sent = kaggle_twin.submissions[-1]
    assert sent["content"] == SUBMISSION.decode() and sent["description"] == "first [cnn]"
    assert "ref 1, 4 submissions left today" in capsys.readouterr().out

    sent.update(publicScore="0.812", privateScore="0.794", status="COMPLETE")
    assert compare.cli(["--runs", str(runs), "--out", str(report), "--kaggle", "genre-comp"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| cnn"))
    assert row.startswith("| cnn (Kaggle v1) |") and "| 0.812 | 0.794 |" in row
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["kaggle_score"], metrics["kaggle_private_score"]) == (0.812, 0.794)
    assert (report / "kaggle_score.png").stat().st_size > 1000


def test_push_alternates_and_says_what_it_resumes_from(kaggle_twin, kernel, capsys):
    """Each push goes to the partner of the complete version that got furthest, which attaches
    it; a finished run is not pushed again."""
    ran(kaggle_twin, KERNEL_ID, kernel_output(done=3))
    assert loop.cli(["push", str(kernel)]) == 0
    assert (f"pushed {RELAY_ID} version 1: it resumes the run from {KERNEL_ID} version 1 "
            "(epoch 3 of 8)") in capsys.readouterr().out
    assert kaggle_twin.version(RELAY_ID)["request"]["kernelDataSources"] == [KERNEL_ID]
    assert kaggle_twin.version(RELAY_ID)["invalid"]["kernel"] == []
    kaggle_twin.kernels[RELAY_ID].pop()
    ran(kaggle_twin, RELAY_ID, kernel_output(done=6))
    assert loop.cli(["push", str(kernel)]) == 0
    assert f"{KERNEL_ID} version 2: it resumes the run from {RELAY_ID} version 1 (epoch 6 of 8)" \
        in capsys.readouterr().out
    kaggle_twin.kernels[KERNEL_ID].pop()
    ran(kaggle_twin, KERNEL_ID, kernel_output(done=8))
    assert loop.cli(["push", str(kernel)]) == 0  # nothing to do is no error
    assert f"cnn is finished ({KERNEL_ID} version 2)" in capsys.readouterr().out
    assert len(kaggle_twin.kernels[KERNEL_ID]) == 2


@pytest.mark.parametrize("sessions,finished", [(2, True), (1, False)])
def test_run_pushes_until_the_run_is_finished_then_brings_it_home(sessions, finished, kaggle_twin,
                                                                   kernel, tmp_path, capsys):
    """One session stopped at epoch 3, its partner's session finished the run: with
    --max-sessions 2 `run` brings it home; with 1 it says it is not finished (exit 2)."""
    kaggle_twin.next_run = [{"statuses": ["RUNNING", "COMPLETE"], "output": kernel_output(done=d)}
                            for d in (3, 8)]
    code = loop.cli(["run", str(kernel), "--interval", "0.01", "--max-sessions", str(sessions),
                      "--runs", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert code == (0 if finished else 2)
    if finished:
        assert (f"pushed {RELAY_ID} version 1: it resumes the run from {KERNEL_ID} version 1 "
                "(epoch 3 of 8)") in out and f"cnn is finished ({RELAY_ID} version 1)" in out
        metrics = json.loads((tmp_path / "runs" / "cnn" / "metrics.json").read_text())
        assert (metrics["kaggle_kernel"], metrics["epochs_run"]) == (RELAY_ID, 8)
    else:
        assert "not finished after 1 versions" in err and one_line(err)


def test_a_session_stopped_at_its_limit_is_said_as_kaggle_says_it_and_rescued(
        kaggle_twin, kernel, tmp_path, capsys):
    """Kaggle reports a session stopped at its time limit as CANCEL_ACKNOWLEDGED ("exceeded the
    max allowed execution duration"): `run` says so, rescues its output and goes on."""
    stopped = "Kernel exceeded the max allowed execution duration (12 hours)"
    kaggle_twin.next_run = [
        {"statuses": ["RUNNING", "CANCEL_ACKNOWLEDGED"], "failure": stopped,
         "output": kernel_output(done=3, submission=False)},
        {"statuses": ["RUNNING", "COMPLETE"], "output": kernel_output(done=8)}]
    assert loop.cli(["run", str(kernel), "--interval", "0.01", "--runs",
                      str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert f"{KERNEL_ID} version 1 was stopped (cancel_acknowledged: {stopped}); pushing " \
        "again" in out
    assert f"{KERNEL_ID} version 1 was stopped (cancel_acknowledged: {stopped}) at epoch 3 of " \
        "8; Kaggle kept its output" in out
    assert kaggle_twin.version(KERNEL_ID, 2)["request"]["datasetDataSources"] == [
        f"{USER}/music-genre-cnn-rescue"]


def test_push_waits_for_a_running_version(kaggle_twin, kernel, capsys):
    ran(kaggle_twin, RELAY_ID, statuses=("RUNNING",))
    assert loop.cli(["push", str(kernel)]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and f"{RELAY_ID} version 1 is still running" in err
    assert KERNEL_ID not in kaggle_twin.kernels


@pytest.mark.parametrize("rescue", [True, False])
def test_a_version_that_ended_in_error_is_rescued_or_passed_over(rescue, kaggle_twin, kernel,
                                                                 capsys):
    """Killed at epoch 7 while the newest complete version stopped at 6: its kept output becomes a
    data set the next version attaches (the furthest run is what it resumes), or, with
    --no-rescue, the next version goes on from the complete one and says so."""
    ran(kaggle_twin, KERNEL_ID, kernel_output(done=6))
    ran(kaggle_twin, RELAY_ID, kernel_output(done=7, submission=False), statuses=("ERROR",),
        failure="killed")
    assert loop.cli(["push", str(kernel)] + ([] if rescue else ["--no-rescue"])) == 0
    out = capsys.readouterr().out
    pushed = kaggle_twin.version(RELAY_ID)  # the partner of the complete version, again
    assert pushed["number"] == 2 and pushed["request"]["kernelDataSources"] == [KERNEL_ID]
    rescued = f"{USER}/music-genre-cnn-rescue"
    if rescue:
        assert f"{RELAY_ID} version 1 ended in error at epoch 7 of 8; Kaggle kept its output, " \
               f"now data set {rescued}" in out
        assert pushed["request"].get("datasetDataSources") == [rescued]
        files = kaggle_twin.datasets[rescued]["versions"][-1]
        assert files["runs/cnn/checkpoint.pt"] == b"state"  # the run folder, unpacked
        assert json.loads(files["runs/cnn/checkpoint.json"])["epochs_done"] == 7
        assert f"it resumes the run from {RELAY_ID} version 1 (epoch 7 of 8)" in out
    else:
        assert f"{RELAY_ID} version 1 ended in error at epoch 7 of 8 (not attachable); this " \
               f"version goes on from {KERNEL_ID} version 1 at epoch 6 of 8" in out
        assert rescued not in kaggle_twin.datasets
        assert not pushed["request"].get("datasetDataSources")


def test_a_rescue_waits_for_its_own_data_set_version(kaggle_twin, kernel, monkeypatch, capsys):
    """A second rescue is a new version of the rescue data set: the push waits until Kaggle lists
    that version (GetDataset), not only for a status of ready (scripted: the new version is
    listed three calls late while the status already says ready)."""
    monkeypatch.setattr(loop, "PUBLISH_POLL", 0.01)
    rescued = f"{USER}/music-genre-cnn-rescue"
    kaggle_twin.add_dataset(rescued, {"runs/cnn/checkpoint.json": b"{}"})  # an earlier rescue
    kaggle_twin.datasets[rescued]["status_calls"] = 5
    ran(kaggle_twin, RELAY_ID, kernel_output(done=5, submission=False), statuses=("ERROR",))
    calls, seen = kaggle_twin.dataset_call, {"late": 0, "listed_at": None}

    def late(call, request):
        status, kind, body = calls(call, request)
        if call == "CreateDatasetVersion":
            seen["late"] = 3
            kaggle_twin.datasets[rescued]["status_calls"] = 5  # ready, as the old version was
        if call == "GetDataset" and len(kaggle_twin.datasets[rescued]["versions"]) == 2:
            if seen["late"]:
                seen["late"] -= 1
                return ok_json({"ref": rescued, "currentVersionNumber": 1})
            seen["listed_at"] = seen["listed_at"] or len(kaggle_twin.requests)
        return status, kind, body
    monkeypatch.setattr(kaggle_twin, "dataset_call", late)
    assert loop.cli(["push", str(kernel)]) == 0
    pushed_at = kaggle_twin.requests.index(("POST", "/api/v1/kernels.KernelsApiService/SaveKernel"))
    assert seen["late"] == 0 and seen["listed_at"] and seen["listed_at"] <= pushed_at
    assert len(kaggle_twin.datasets[rescued]["versions"]) == 2


def test_a_partner_left_unattached_is_an_error_not_a_fresh_start(kaggle_twin, kernel, capsys):
    ran(kaggle_twin, KERNEL_ID, kernel_output(done=3))
    kaggle_twin.invalid_sources.add(KERNEL_ID)  # Kaggle answers it as invalid, for its reasons
    assert loop.cli(["push", str(kernel)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and f"Kaggle did not attach {KERNEL_ID}" in err
    assert "epoch 3 of 8" in err and "train from the start" in err


@pytest.mark.parametrize("flag", [[], ["--code"]])
def test_code_competition_submits_the_kernel_version(flag, kaggle_twin, kernel, tmp_path, capsys):
    """Kaggle lists the competition as kernels-only (or --code says so): the version holding the
    finished run is submitted by kernel and version, no file is uploaded. A training kernel is
    refused in one line naming the predict kernel to build, unless --retrain-in-rerun."""
    kaggle_twin.add_competition("code-comp", code=not flag)
    ran(kaggle_twin, KERNEL_ID, kernel_output(done=4))
    ran(kaggle_twin, RELAY_ID, kernel_output(done=8))
    ran(kaggle_twin, KERNEL_ID, kernel_output(done=8), statuses=("ERROR",))
    command = ["submit", str(kernel), "--competition", "code-comp", "--runs",
               str(tmp_path / "runs")] + flag
    assert loop.cli(command) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "cnn trains: Kaggle's rerun of it for code-comp would train again" \
        in err and "build.py --name cnn-predict --kind predict --from cnn" in err
    assert "--retrain-in-rerun" in err and not kaggle_twin.submissions
    assert loop.cli(command + ["--retrain-in-rerun"]) == 0
    sent = kaggle_twin.submissions[-1]
    assert (sent["kernel"], sent["kernelVersion"], sent["outputFile"]) == (
        RELAY_ID, 1, "submission.csv")
    assert sent["description"] == "cnn version 1"
    assert not any("Upload" in path for _, path in kaggle_twin.requests)
    assert f"submitted {RELAY_ID} version 1 to code-comp: ref 1" in capsys.readouterr().out


def test_submit_downloads_the_output_when_not_home_yet(kaggle_twin, kernel, tmp_path, capsys):
    ran(kaggle_twin)
    assert loop.cli(["submit", str(kernel), "--competition", "genre-comp",
                      "--runs", str(tmp_path / "runs")]) == 0
    assert kaggle_twin.submissions[-1]["content"] == SUBMISSION.decode()
    assert kaggle_twin.submissions[-1]["description"] == "cnn version 1"
    assert (tmp_path / "runs" / "cnn" / "kaggle.json").is_file()


@pytest.mark.parametrize("ids,words", [({"1": "pop", "2": "pop"}, "public score 0.500"),
                                       ({"x": "pop"}, "rejected submission 1")])
def test_submit_wait_follows_until_scored_or_rejected(ids, words, kaggle_twin, kernel, tmp_path,
                                                      capsys):
    kaggle_twin.add_competition("genre-comp", labels=ids)
    ran(kaggle_twin)
    code = loop.cli(["submit", str(kernel), "--competition", "genre-comp", "--wait",
                      "--interval", "0.01", "--runs", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    if "rejected" in words:
        assert code == 2 and one_line(captured.err) and words in captured.err
        assert "no row has an id of the test set" in captured.err
    else:
        assert code == 0 and words in captured.out and "submission 1: complete" in captured.out


def test_output_replaces_its_own_run_but_not_someone_elses(kaggle_twin, kernel, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "cnn").mkdir(parents=True)
    (runs / "cnn" / "metrics.json").write_text("{}")  # a local run of the same name
    ran(kaggle_twin)
    assert loop.cli(["output", str(kernel), "--runs", str(runs)]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "--overwrite" in err
    assert (runs / "cnn" / "metrics.json").read_text() == "{}"
    assert not any("Output" in path for _, path in kaggle_twin.requests)  # refused before
    assert loop.cli(["output", str(kernel), "--runs", str(runs), "--overwrite"]) == 0
    ran(kaggle_twin, RELAY_ID, kernel_output("cnn", folds=2))  # the partner, K-fold
    assert loop.cli(["output", str(kernel), "--runs", str(runs)]) == 0  # its own: replaced
    assert not (runs / "cnn" / "metrics.json").exists()
    fold = json.loads((runs / "cnn" / "fold2" / "metrics.json").read_text())
    assert (fold["kaggle_kernel"], fold["kaggle_version"], fold["group"]) == (RELAY_ID, 1, "cnn")


def test_kernel_error_shows_kaggles_message_and_the_log_tail(kaggle_twin, kernel, capsys):
    log = kaggle_log([f"epoch {i}" for i in range(30)] + ["RuntimeError: CUDA out of memory"],
                     stream="stderr")
    ran(kaggle_twin, statuses=["RUNNING", "ERROR"], log=log, failure="Your notebook hit an error")
    assert loop.cli(["status", str(kernel), "--follow", "--interval", "0.01"]) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err)
    assert "Your notebook hit an error" in captured.err and "CUDA out of memory" in captured.err
    assert "epoch 29" in captured.out and "epoch 10" not in captured.out  # the tail only


def test_a_12_hour_kernel_is_not_pushed_into_a_code_competition(kaggle_twin, kernel, capsys):
    kaggle_twin.add_competition("genre-comp", code=True)  # Kaggle lists it as kernels-only
    assert loop.cli(["push", str(kernel)]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "stops its notebooks at 9 h" in err and "--code-competition" in err
    assert not kaggle_twin.kernels


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
    elif case == "not pushed":
        return ["status", "cnn"]
    elif case == "push refused":
        twin.refuse_push = "Notebook title is already in use"
        return ["push", "cnn"]
    elif case in ("push", "someone else's kernel"):
        return ["push" if case == "push" else "status", "cnn"]
    ran(twin)
    return submit


@pytest.mark.parametrize("case,words", [
    ("rules", ["403", "accept", "rules"]),
    ("429", ["429", "daily submission limit"]),
    ("400", ["400", "allowance", "daily submission limit"]),
    ("unknown competition", ["404", "comp not found"]),
    ("not pushed", [f"{KERNEL_ID} and {RELAY_ID}: no version pushed yet"]),
    ("upload", ["refused", "No connection adapters"]),
    ("401", ["rejected the credentials"]),
    ("push", ["403", "may not push"]),
    ("push refused", ["refused the push", "title is already in use"]),
    ("someone else's kernel", ["403", "'kernels.get' was denied"]),  # not the package's guess
])
def test_refusals_are_one_line_exit_2(case, words, kaggle_twin, kernel, tmp_path, capsys):
    if case in ("push", "someone else's kernel"):
        for meta in (kernel / "kernel-metadata.json", kernel / "relay" / "kernel-metadata.json"):
            metadata = json.loads(meta.read_text())
            meta.write_text(json.dumps({**metadata, "id": metadata["id"].replace(USER, "someone")}))
    command = refuse(kaggle_twin, case)
    command[1] = str(kernel)
    if case == "push":  # one kernel made by hand (no recipe, no partner): pushed as it is
        (kernel / "recipe.json").unlink()
        shutil.rmtree(kernel / "relay")
    assert loop.cli(command + (["--runs", str(tmp_path / "runs")] if "submit" in command
                                else [])) == 2
    err = capsys.readouterr().err
    assert one_line(err) and TOKEN not in err
    assert all(w in err for w in words) and "benchmark" not in err, err


def test_no_network_one_line(no_kaggle_credentials, kernel, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")  # nothing listens on localhost:7777
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    assert loop.cli(["status", str(kernel)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "could not reach Kaggle" in err


def test_kernel_found_by_name_or_path(kaggle_twin, kernel, tmp_path, capsys, monkeypatch):
    """NAME is kernels/NAME/ beside the script (whatever build.py made there); anything else
    is one line listing them."""
    monkeypatch.setattr(loop, "KERNELS_DIR", kernel.parent)
    ran(kaggle_twin)
    assert loop.cli(["status", "cnn"]) == 0
    assert f"{KERNEL_ID} version 1: complete" in capsys.readouterr().out
    assert loop.cli(["status", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "not a kernel folder" in err and "cnn" in err


def test_a_stale_kernel_is_not_pushed(kaggle_twin, kernel, capsys):
    """A kernel built from a recipe whose code has changed since is refused before any upload."""
    notebook = kernel / "kernel.ipynb"
    notebook.write_text(notebook.read_text().replace("def fit(", "def fit_old("))
    assert loop.cli(["push", str(kernel)]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "rebuild it first" in err
    assert not kaggle_twin.kernels  # the stale one never sent


def test_weights_become_a_data_set_under_the_name_a_kernel_looks_for(kaggle_twin, imagenet_twin,
                                                                     monkeypatch, capsys):
    """torchvision's file from the hub cache (the twin serves it there) as a new data set, then
    as its new version; the line to build with."""
    from pathlib import Path

    import torch
    imagenet_twin("resnet18")
    monkeypatch.setenv("no_proxy", "localhost")  # the Kaggle twin is on this machine
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    for versions in (1, 2):
        assert loop.cli(["weights", "--arch", "resnet18", "--user", USER]) == 0
        dataset = kaggle_twin.datasets[f"{USER}/resnet18-weights"]
        assert len(dataset["versions"]) == versions
        assert dataset["versions"][-1] == {"resnet18-f37072fd.pth": cached.read_bytes()}
    assert f"--weights-dataset {USER}/resnet18-weights" in capsys.readouterr().out
    assert loop.cli(["weights", "--arch", "resnet19", "--user", USER]) == 1
    assert "unknown --arch 'resnet19'" in capsys.readouterr().err


@pytest.mark.parametrize("version", ["2.2.4", None])
def test_an_old_kaggle_client_is_one_line_naming_the_version_needed(version, kaggle_twin, kernel,
                                                                    tmp_path, monkeypatch, capsys):
    """kaggle <= 2.2.4 acts on the newest version whatever /N says (kaggle-cli issue 1200): a
    fake distribution first on sys.path is what importlib.metadata finds; nothing is called."""
    fake = tmp_path / "site"
    if version:
        (fake / f"kaggle-{version}.dist-info").mkdir(parents=True)
        (fake / f"kaggle-{version}.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: kaggle\nVersion: {version}\n")
        monkeypatch.syspath_prepend(str(fake))
    else:  # not installed at all
        from importlib import metadata

        def missing(name):
            raise metadata.PackageNotFoundError(name)
        monkeypatch.setattr(metadata, "version", missing)
    assert loop.cli(["status", str(kernel)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "kaggle >= 2.2.5" in err and "pip install 'kaggle>=2.2.5'" in err
    assert (version or "not installed") in err and not kaggle_twin.requests


@pytest.mark.parametrize("left,timeout,pushed", [(10.0, None, False), (12.0, None, True),
                                                 (2.0, "3600", True), (0.0, "60", False)])
def test_a_gpu_push_reads_the_quota_and_stops_when_too_little_is_left(
        left, timeout, pushed, kaggle_twin, kernel, capsys):
    """The cnn kernel stops training at 11h30m: with 10 GPU hours left this week it is not
    pushed (one line, exit 2, nothing sent); a shorter --timeout fits; `status` shows the quota."""
    kaggle_twin.gpu_hours = {"used": 30.0 - left - 0.5, "reserved": 0.5, "allowed": 30.0}
    code = loop.cli(["push", str(kernel)] + (["--timeout", timeout] if timeout else []))
    out, err = capsys.readouterr()
    assert f"GPU quota: {left:.1f} h left of 30.0 h this week" in out + err
    assert "0.5 h reserved by running sessions" in out + err
    if not pushed:
        assert code == 2 and one_line(err) and "more than is left; not pushed" in err
        assert ("11h30m" if not timeout else "1m00s") in err
        assert not kaggle_twin.kernels
        return
    assert code == 0 and f"pushed {KERNEL_ID} version 1" in out
    assert loop.cli(["status", str(kernel)]) == 0
    assert f"GPU quota: {left:.1f} h left" in capsys.readouterr().out


def test_the_twin_refuses_a_gpu_push_past_the_quota(kaggle_twin, kernel, capsys, monkeypatch):
    """Kaggle's own refusal, had the quota not been read (e.g. used up between the two calls)."""
    monkeypatch.setattr(loop.kaggle_client, "gpu_quota", lambda api: None)
    kaggle_twin.gpu_hours = {"used": 30.0, "reserved": 0.0, "allowed": 30.0}
    assert loop.cli(["push", str(kernel)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "exceeded the number of hours allowed to use GPU" in err


@pytest.mark.parametrize("answer", [403, 401, 404])
def test_not_pushed_yet_is_told_by_404_or_kernels_get_denied(answer, kaggle_twin, kernel, capsys,
                                                             monkeypatch):
    """Kaggle answers a kernel it does not know with 401/403 "Permission 'kernels.get' was
    denied" (or 404): `status` says it is not pushed yet, `push` starts the run; any other 403 is
    the error it is. The status is read from the error (SuiteError.status), not its text."""
    kaggle_twin.unknown_kernel_status = answer
    assert loop.cli(["status", str(kernel)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "no version pushed yet, or none this account may see" in err
    assert loop.cli(["push", str(kernel)]) == 0
    assert "it starts the run (nothing to resume yet)" in capsys.readouterr().out
    calls = kaggle_twin.kernel_call  # another 403 (not about the slug): said as it is
    monkeypatch.setattr(kaggle_twin, "kernel_call", lambda call, request: kaggle_twin_error(
        403, "twin: no 404 here") if call == "GetKernel" else calls(call, request))
    assert loop.cli(["status", str(kernel)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "Kaggle answered 403" in err and "no 404 here" in err
