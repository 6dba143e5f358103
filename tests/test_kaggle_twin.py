"""The Kaggle twin keeps Kaggle's rules (../shared/KAGGLE.md), so that what passes against it
passes on Kaggle: tiny script kernels pushed with the real kaggle client, run as sessions."""
import contextlib
import io
import json

import pytest

from kaggle_twin import USER

PROBE = '''\
import os, pathlib, sys, time
root = pathlib.Path(os.environ["KAGGLE_ROOT"])
found = sorted(str(p.relative_to(root / "input")) for p in (root / "input").rglob("*") if p.is_file())
print("inputs:", found, flush=True)
print("rerun:", os.environ.get("KAGGLE_IS_COMPETITION_RERUN"), flush=True)
pathlib.Path("out.txt").write_text(sys.argv[0])
for name in found:
    if name.endswith("labels.txt"):
        pathlib.Path("submission.csv").write_text("id,class\\n" + (root / "input" / name).read_text())
time.sleep(float(os.environ.get("PROBE_SLEEP", "0")))
if os.path.exists(root / "input" / "datasets" / "twin-user" / "fail" / "now"):
    sys.exit(3)
print("done", flush=True)
'''


def kernel(tmp_path, name, kernel_sources=(), datasets=(), competitions=(), code=PROBE):
    """A kernel folder as the kaggle CLI pushes it: a script and its metadata."""
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "probe.py").write_text(code)
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{USER}/{name}", "title": name.replace("-", " ").title(), "code_file": "probe.py",
        "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": False,
        "enable_internet": False, "dataset_sources": list(datasets),
        "competition_sources": list(competitions), "kernel_sources": list(kernel_sources)}))
    return folder


def push(api, folder, timeout=None):
    with contextlib.redirect_stdout(io.StringIO()):
        return api.kernels_push(str(folder), timeout)


def inputs(twin, kernel_id, number=None):
    log = "".join(e["data"] for e in json.loads(twin.version(kernel_id, number)["log"]))
    return eval(log.split("inputs: ")[1].splitlines()[0])


@pytest.fixture
def api(kaggle_sessions):
    import kaggle_client
    return kaggle_client.kaggle_api()


def test_a_kernel_cannot_attach_its_own_output(kaggle_sessions, api, tmp_path):
    """Its own id comes back in invalid_kernel_sources, the push succeeds and nothing is mounted;
    so does a kernel that does not exist."""
    folder = kernel(tmp_path, "selfish", kernel_sources=[f"{USER}/selfish", f"{USER}/nobody"])
    for number in (1, 2):
        answer = push(api, folder)
        assert answer.version_number == number and not answer.error
        assert answer.invalid_kernel_sources == [f"{USER}/selfish", f"{USER}/nobody"]
        assert kaggle_sessions.wait(f"{USER}/selfish") == "COMPLETE"
        assert inputs(kaggle_sessions, f"{USER}/selfish") == []


def test_a_source_mounts_its_newest_complete_version_never_an_errored_one(kaggle_sessions, api,
                                                                         tmp_path):
    """Under input/notebooks/<owner>/<slug>/, beside __script__.py and __output__.json; a kernel
    whose versions all ended in error cannot be attached."""
    kaggle_sessions.add_dataset(f"{USER}/fail", {"now": b""})
    failing = kernel(tmp_path, "maker", datasets=[f"{USER}/fail"])
    push(api, failing)
    assert kaggle_sessions.wait(f"{USER}/maker") == "ERROR"
    assert kaggle_sessions.version(f"{USER}/maker")["output"]["out.txt"]  # kept, not attachable
    reader = kernel(tmp_path, "reader", kernel_sources=[f"{USER}/maker"])
    assert push(api, reader).invalid_kernel_sources == [f"{USER}/maker"]
    kaggle_sessions.wait(f"{USER}/reader")
    assert inputs(kaggle_sessions, f"{USER}/reader") == []
    push(api, kernel(tmp_path / "fixed", "maker"))  # version 2 completes
    assert kaggle_sessions.wait(f"{USER}/maker") == "COMPLETE"
    push(api, failing)  # version 3 fails again: the source still mounts version 2
    assert kaggle_sessions.wait(f"{USER}/maker") == "ERROR"
    assert push(api, reader).invalid_kernel_sources == []
    kaggle_sessions.wait(f"{USER}/reader")
    mount = f"notebooks/{USER}/maker"
    assert inputs(kaggle_sessions, f"{USER}/reader") == [
        f"{mount}/__output__.json", f"{mount}/__script__.py", f"{mount}/out.txt"]
    assert json.loads(kaggle_sessions.version(f"{USER}/reader")["mounted"][mount][
        "__output__.json"])["version"] == 2


@pytest.mark.parametrize("code_competition,status", [(False, "COMPLETE"),
                                                     (True, "CANCEL_ACKNOWLEDGED")])
def test_sessions_end_at_12_hours_and_at_9_in_a_code_competition(code_competition, status,
                                                                 kaggle_sessions, api, tmp_path,
                                                                 monkeypatch):
    """A session longer than Kaggle allows is killed: the version ends as Kaggle reports it
    (CANCEL_ACKNOWLEDGED, "exceeded the max allowed execution duration") and keeps the output
    written so far. Here an hour lasts 0.5 s and the kernel runs 5.2 s, 10.4 "hours":
    past a code competition's 9, within a session's 12."""
    kaggle_sessions.hour = 0.5
    kaggle_sessions.add_competition("comp", code=code_competition)
    monkeypatch.setenv("PROBE_SLEEP", "5.2")
    push(api, kernel(tmp_path, "sleeper", competitions=["comp"]))
    assert kaggle_sessions.wait(f"{USER}/sleeper") == status
    version = kaggle_sessions.version(f"{USER}/sleeper")
    assert version["output"]["out.txt"]  # written before the end, kept either way
    if status != "COMPLETE":
        assert "exceeded the max allowed execution duration (9 hours)" in version["failure"]
        assert "done" not in "".join(e["data"] for e in json.loads(version["log"]))


def test_a_pushed_timeout_shortens_the_session(kaggle_sessions, api, tmp_path, monkeypatch):
    kaggle_sessions.hour = 0.5
    monkeypatch.setenv("PROBE_SLEEP", "3")
    push(api, kernel(tmp_path, "short"), timeout=7200)  # 2 "hours": 1 s
    assert kaggle_sessions.wait(f"{USER}/short") == "CANCEL_ACKNOWLEDGED"


def test_a_code_submission_reruns_the_version_on_the_hidden_test_set(kaggle_sessions, api,
                                                                    tmp_path):
    """The rerun sees the competition's hidden test folder instead of the public one and
    $KAGGLE_IS_COMPETITION_RERUN; its submission.csv is scored."""
    kaggle_sessions.add_competition("comp", code=True,
                                    files={"test/public.wav": b"p", "labels.txt": b"1,pop\n2,rock\n"},
                                    hidden={"hidden.wav": b"h"}, labels={"1": "pop", "2": "jazz"})
    push(api, kernel(tmp_path, "submitter", competitions=["comp"]))
    assert kaggle_sessions.wait(f"{USER}/submitter") == "COMPLETE"
    assert "competitions/comp/test/public.wav" in inputs(kaggle_sessions, f"{USER}/submitter")
    api.competition_submit_code("submission.csv", "m", "comp", kernel=f"{USER}/submitter",
                                kernel_version=1, quiet=True)
    submission = kaggle_sessions.submissions[-1]
    submission["rerun"]["done"].wait(120)
    rerun = "".join(e["data"] for e in json.loads(submission["rerun"]["log"]))
    assert "competitions/comp/test/hidden.wav" in rerun and "test/public.wav" not in rerun
    assert "rerun: True" in rerun
    assert (submission["status"], submission["publicScore"]) == ("COMPLETE", "0.500")


def test_an_uploaded_folder_is_unpacked_in_the_data_set(kaggle_sessions, api, tmp_path):
    """The kaggle CLI uploads a folder as a zip (--dir-mode zip); Kaggle keeps it unpacked."""
    folder = tmp_path / "ds"
    (folder / "runs" / "x").mkdir(parents=True)
    (folder / "runs" / "x" / "a.txt").write_text("a")
    (folder / "dataset-metadata.json").write_text(json.dumps({
        "title": "A run folder", "id": f"{USER}/run-folder", "licenses": [{"name": "other"}]}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert not api.dataset_create_new(str(folder), quiet=True, dir_mode="zip").error
    assert kaggle_sessions.datasets[f"{USER}/run-folder"]["versions"][-1] == {"runs/x/a.txt": b"a"}
