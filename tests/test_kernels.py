"""kernels/build.py: the committed kernels are fresh, their metadata is valid, and each kernel.py
runs end to end on the demo audio (offline, tiny settings) and writes submission.csv."""
import ast
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

import common
import data_conversion
from conftest import ROOT

KERNELS_DIR = ROOT / "kernels"

# Tiny settings: 32 px spectrograms, one or two epochs, no ImageNet download (tests are offline).
TINY_RUNS = {
    "cnn": ["--size", "32", "--", "--epochs", "1", "--img-size", "16"],
    "transfer-vgg16": ["--size", "32", "--", "--epochs", "1", "--img-size", "32",
                       "--arch", "resnet18", "--weights", "none"],
    "mlp": ["--", "--epochs", "2", "--hidden", "16:relu"],
}


def load_file(module_name, path):
    """A script as a module (not on sys.path: kernels/cnn would shadow other names)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_kernel(name):
    """kernel.py without running its main, so `common` stays the real module here."""
    return load_file(f"kernel_{name.replace('-', '_')}", KERNELS_DIR / name / "kernel.py")


build = load_file("kernels_build", KERNELS_DIR / "build.py")


def test_committed_kernels_are_fresh(tmp_path):
    options = build.recorded_options(KERNELS_DIR)
    files = build.render(options)
    build.write_files(files, tmp_path)
    stale = build.stale_files(files, KERNELS_DIR)
    assert not stale, f"stale kernels {stale}: run python kernels/build.py"
    for name in build.KERNELS:  # nothing else lies in the generated folders
        committed = {p.name for p in (KERNELS_DIR / name).iterdir() if p.name != "__pycache__"}
        assert committed == {"kernel.py", "kernel-metadata.json"}
        for file in committed:
            assert (KERNELS_DIR / name / file).read_bytes() == (tmp_path / name / file).read_bytes()


def test_check_reports_a_changed_source(tmp_path, capsys):
    out = str(tmp_path)
    assert build.main(["--out", out, "--user", "alice"]) == 0
    assert build.main(["--out", out, "--check"]) == 0  # options recorded in the files are reused
    script = tmp_path / "mlp" / "kernel.py"
    script.write_text(script.read_text() + "# edited\n")
    capsys.readouterr()
    assert build.main(["--out", out, "--check"]) == 1
    assert capsys.readouterr().out.strip() == f"stale: {script}"
    assert script.read_text().endswith("# edited\n")  # --check writes nothing


@pytest.mark.parametrize("source", ["x = '''a'''\n", 'x = """a"""\ny = r"\\d"\n',
                                    "a = '''\"\"\"'''\n", "s = 'tail'  # \\\n"])
def test_embedded_source_round_trips_exactly(source):
    text = build.embed("common", source)
    assert ast.literal_eval(ast.parse(text).body[0].value) == source


def test_embedded_sources_are_the_files():
    for name, spec in build.KERNELS.items():
        tree = ast.parse((KERNELS_DIR / name / "kernel.py").read_text())
        values = {node.targets[0].id: node.value for node in tree.body
                  if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
        for module in ("common", spec["trainer"]):
            embedded = ast.literal_eval(values[f"{module.upper()}_PY"])
            assert embedded == (ROOT / f"{module}.py").read_text()


def test_metadata_fields(tmp_path):
    files = build.render({"user": "alice", "competition": "genre-comp",
                          "dataset": "bob/gtzan-weights", "gpus": 2})
    for name, spec in build.KERNELS.items():
        meta = json.loads(files[f"{name}/kernel-metadata.json"])
        user, slug = meta["id"].split("/")
        assert user == "alice" and slug == meta["title"].lower().replace(" ", "-")
        assert 5 <= len(meta["title"]) <= 50
        assert f"{name}/{meta['code_file']}" in files
        assert (meta["language"], meta["kernel_type"]) == ("python", "script")
        assert meta["is_private"] is True and meta["enable_gpu"] is True
        assert meta["enable_internet"] is (name == "transfer-vgg16")
        assert meta["dataset_sources"] == ["bob/gtzan-weights"]
        assert meta["competition_sources"] == ["genre-comp"]
        script = files[f"{name}/kernel.py"]
        assert 'INPUT = "/kaggle/input/genre-comp"' in script and "\nGPUS = 2  #" in script
    for name in build.KERNELS:  # the committed ones are valid too
        meta = json.loads((KERNELS_DIR / name / "kernel-metadata.json").read_text())
        assert meta["code_file"] == "kernel.py" and meta["language"] == "python"


def test_kernel_flags_and_trainer_passthrough(tmp_path):
    kernel = load_kernel("cnn")
    args, rest = kernel.split_argv(["--train", "a", "--epochs", "3", "--size", "64", "--",
                                    "--size", "9", "--augment"])
    assert (args.train, args.size, args.working) == ("a", 64, "/kaggle/working")
    assert rest == ["--epochs", "3", "--size", "9", "--augment"]  # after `--`: the trainer's
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "1.wav").write_bytes(b"")
    (tmp_path / "train.csv").write_text("id,label\n1,pop\n")
    assert kernel.find_labels(kernel.split_argv(["--train", str(tmp_path / "train")])[0]) \
        == str(tmp_path / "train.csv")


def test_more_than_one_gpu_trains_under_torchrun(monkeypatch):
    kernel = load_kernel("mlp")
    import torch
    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(kernel.subprocess, "call", lambda command: calls.append(command) or 0)
    assert kernel.train(["--epochs", "1"], gpus=2) == 0
    command = calls[0]
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[5].endswith("mlp/kernel.py") and command[6:] == ["--train-only", "--", "--epochs", "1"]
    kernel.train_mlp = type("Trainer", (), {"main": staticmethod(lambda argv: calls.append(argv) or 0)})
    assert kernel.main(["--train-only", "--", "--epochs", "1"]) == 0  # a torchrun process
    assert calls[-1] == ["--epochs", "1"]


@pytest.fixture(scope="module")
def kernel_runs(tmp_path_factory):
    """All three kernels run at once (as separate processes) on 15 demo clips of 2 s (5 genres);
    the test set is 5 of them in a flat folder. The mlp kernel gets a flat train folder +
    train.csv beside it."""
    root = tmp_path_factory.mktemp("kernels")
    demo = root / "demo"
    assert data_conversion.main(["--make-demo", str(demo), "--clips-per-genre", "3",
                                 "--seconds", "2"]) == 0
    for genre in sorted(d for d in demo.iterdir() if d.is_dir())[5:]:  # 5 genres are enough
        shutil.rmtree(genre)
    clips = sorted(demo.glob("*/*.wav"))
    (root / "test").mkdir()
    for clip in clips[::3]:
        shutil.copy(clip, root / "test" / clip.name)
    (root / "flat" / "train").mkdir(parents=True)
    with open(root / "flat" / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "label")] + [(c.name, c.parent.name) for c in clips])
    for clip in clips:
        shutil.copy(clip, root / "flat" / "train" / clip.name)
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    processes = {}
    for name, tiny in TINY_RUNS.items():
        train = root / "flat" / "train" if name == "mlp" else demo
        command = [sys.executable, str(KERNELS_DIR / name / "kernel.py"), "--train", str(train),
                   "--test", str(root / "test"), "--working", str(root / name), *tiny]
        processes[name] = subprocess.Popen(command, env=env, cwd=root, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    results = {name: (p.wait(timeout=300), p.stdout.read()) for name, p in processes.items()}
    return root, sorted(p.name for p in (root / "test").iterdir()), results


@pytest.mark.parametrize("name", list(TINY_RUNS))
def test_kernel_runs_locally_and_writes_submission(name, kernel_runs):
    root, test_files, results = kernel_runs
    code, output = results[name]
    assert code == 0, output[-3000:]
    with open(root / name / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "class"]
    assert sorted(r[0] for r in rows[1:]) == test_files and len(test_files) == 5
    assert {r[1] for r in rows[1:]} <= set(common.DEMO_STYLES)
    if name == "mlp":
        assert "labels: " in output  # train.csv beside the flat folder was found

