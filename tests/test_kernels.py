"""kernels/build.py: the committed kernels are fresh and their metadata valid; and the Kaggle
filesystem twin: each generated kernel.py runs as Kaggle runs it (`python kernel.py`, no
arguments, cwd = working, $KAGGLE_ROOT the /kaggle tree) against read-only input trees shaped as
Kaggle mounts them."""
import ast
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, write_tone

KERNELS_DIR = ROOT / "kernels"

# Tiny settings through $KERNEL_ARGS (Kaggle passes no arguments): 32 px spectrograms, one or
# two epochs; the transfer kernel uses resnet18, its weights found in an attached data set.
TINY_RUNS = {
    "cnn": "--size 32 -- --epochs 1 --img-size 16",
    "transfer-vgg16": "--size 32 -- --epochs 1 --arch resnet18 --img-size 32",
    "mlp": "-- --epochs 2 --hidden 16:relu",
}


def load_file(module_name, path):
    """A script as a module (not on sys.path: kernels/cnn would shadow other names)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_file("kernels_build", KERNELS_DIR / "build.py")
kernel_main = load_file("kernel_main", KERNELS_DIR / "kernel_main.py")


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
        modules = ["common", *build.PIPELINE_MODULES[spec["pipeline"]], spec["trainer"]]
        for module in modules:
            assert ast.literal_eval(values[f"{module.upper()}_PY"]) == (ROOT / f"{module}.py").read_text()
        assert ast.literal_eval(values["KERNEL_MAIN_PY"]) == (KERNELS_DIR / "kernel_main.py").read_text()
        others = {"DATA_CONVERSION_PY", "TRAIN_CNN_PY", "TRAIN_TRANSFER_PY", "TRAIN_MLP_PY"} - \
            {f"{m.upper()}_PY" for m in modules}
        assert not others & set(values)  # no kernel ships another pipeline


def test_metadata_fields(tmp_path):
    files = build.render({"user": "alice", "competition": "genre-comp", "dataset": "bob/gtzan",
                          "weights_dataset": "bob/imagenet-weights", "gpus": 2})
    for name, spec in build.KERNELS.items():
        meta = json.loads(files[f"{name}/kernel-metadata.json"])
        user, slug = meta["id"].split("/")
        assert user == "alice" and slug == meta["title"].lower().replace(" ", "-")
        assert 5 <= len(meta["title"]) <= 50
        assert f"{name}/{meta['code_file']}" in files
        assert (meta["language"], meta["kernel_type"]) == ("python", "script")
        assert meta["is_private"] is True and meta["enable_gpu"] is True
        assert meta["machine_shape"] == "NvidiaTeslaT4"  # never a P100 (sm_60)
        assert meta["enable_internet"] is False  # code competitions require it off
        transfer = spec["trainer"] == "train_transfer"
        assert meta["dataset_sources"] == ["bob/gtzan"] + (["bob/imagenet-weights"] if transfer else [])
        assert meta["competition_sources"] == ["genre-comp"]
        settings = json.loads(files[f"{name}/kernel.py"].split("\nSETTINGS = ")[1].split("\n")[0])
        assert settings["sources"] == ["genre-comp", "bob/gtzan"] and settings["gpus"] == 2
    build.write_files(files, tmp_path)  # the options read back from the files
    assert build.recorded_options(tmp_path) == {"user": "alice", "competition": "genre-comp",
                                                "dataset": "bob/gtzan",
                                                "weights_dataset": "bob/imagenet-weights", "gpus": 2}
    for name in build.KERNELS:  # the committed ones are valid too
        meta = json.loads((KERNELS_DIR / name / "kernel-metadata.json").read_text())
        assert meta["code_file"] == "kernel.py" and meta["language"] == "python"


def test_kernel_flags_and_trainer_passthrough(tmp_path, monkeypatch):
    settings = {"pipeline": "images", "gpus": 1}
    monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path / "k"))
    monkeypatch.setenv("KERNEL_ARGS", "--size 48 -- --lr 0.1")
    args, rest = kernel_main.split_argv(["--train", "a", "--epochs", "3", "--", "--size", "9",
                                         "--augment"], settings)
    assert (args.train, args.size, args.working) == ("a", 48, str(tmp_path / "k" / "working"))
    assert args.input == str(tmp_path / "k" / "input") and args.temp == str(tmp_path / "k" / "temp")
    assert rest == ["--epochs", "3", "--size", "9", "--augment", "--lr", "0.1"]


def test_more_than_one_gpu_trains_under_torchrun(monkeypatch):
    import torch
    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(kernel_main.subprocess, "call", lambda command: calls.append(command) or 0)
    trainer = type("Trainer", (), {"main": staticmethod(lambda argv: calls.append(argv) or 0)})
    assert kernel_main.train(trainer, ["--epochs", "1"], gpus=2) == 0
    command = calls[0]
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[6:] == ["--train-only", "--", "--epochs", "1"]
    assert kernel_main.train(trainer, ["--epochs", "1"], gpus=1) == 0 and calls[-1] == ["--epochs", "1"]


# ----------------------------------------------------------------------------------------------
# The Kaggle filesystem twin

GENRES = {"blues": 200.0, "metal": 2000.0, "pop": 800.0}


def audio_set(folder, per_genre, seed, flat=False):
    """Tone clips, each genre in its pitch range: folder/<genre>/<genre>.NNNNN.wav, or flat
    numbered files when flat; returns [(file name, genre)]."""
    items = []
    for g, base in GENRES.items():
        for i in range(per_genre):
            name = f"{len(items) + 1:05d}.wav" if flat else f"{g}.{i:05d}.wav"
            write_tone(folder / ("" if flat else g) / name, base * (1 + 0.07 * i), seconds=1.5,
                       noise=0.01, seed=seed + i)
            items.append((name, g))
    return items


def competition(root, flat_train):
    """train/ (genre folders, or flat + train.csv), test/ with a corrupt and a silent file,
    sample_submission.csv with ids without extension and its own column names."""
    if flat_train:
        labels = audio_set(root / "train", 3, 0, flat=True)
        with open(root / "train.csv", "w", newline="") as f:
            csv.writer(f).writerows([("id", "genre"), *((Path(n).stem, g) for n, g in labels)])
    else:
        audio_set(root / "train", 3, 0)
    tests = [n for n, _ in audio_set(root / "test", 1, 50, flat=True)]
    (root / "test" / "00004.wav").write_bytes(b"RIFF not really audio")
    write_tone(root / "test" / "00005.wav", 0.0)  # silent
    tests += ["00004.wav", "00005.wav"]
    with open(root / "sample_submission.csv", "w", newline="") as f:
        csv.writer(f).writerows([("track_id", "genre_label"), *((Path(t).stem, "blues") for t in tests)])
    return [Path(t).stem for t in tests]


def gtzan_dataset(root):
    """GTZAN as published on Kaggle: Data/genres_original/<genre>/*.wav (jazz.00054.wav
    corrupt), Data/features_30_sec.csv, Data/images_original/."""
    audio_set(root / "Data" / "genres_original", 3, 0)
    (root / "Data" / "genres_original" / "jazz").mkdir()
    (root / "Data" / "genres_original" / "jazz" / "jazz.00054.wav").write_bytes(b"corrupt")
    (root / "Data" / "features_30_sec.csv").write_text("filename,length,label\n")
    (root / "Data" / "images_original" / "blues").mkdir(parents=True)
    (root / "Data" / "images_original" / "blues" / "blues00000.png").write_bytes(b"\x89PNG")


def snapshot(tree):
    return sorted((str(p.relative_to(tree)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in tree.rglob("*"))


@pytest.fixture(scope="module")
def kaggle_runs(tmp_path_factory):
    """Every kernel against three /kaggle trees, as Kaggle runs it, all at once: GTZAN's data
    set (input/datasets/<owner>/<slug>/, no test folder), a competition (input/<slug>/) and a
    competition with a flat train folder + train.csv (input/competitions/<slug>/). A data set
    of torchvision weights (resnet18) is attached too, as the transfer kernel needs offline."""
    import torch
    import torchvision
    base = tmp_path_factory.mktemp("kaggle")
    layouts = {"gtzan": None, "comp": None, "comp-flat": None}
    trees = {}
    for layout in layouts:
        root = base / layout
        if layout == "gtzan":
            gtzan_dataset(root / "input" / "datasets" / "someone" / "gtzan-genres")
        else:
            slug = root / "input" / ("competitions/genre-quest" if layout == "comp-flat" else "genre-quest")
            layouts[layout] = competition(slug, flat_train=layout == "comp-flat")
        weights = root / "input" / "imagenet-weights" / Path(
            torchvision.models.get_model_weights("resnet18").DEFAULT.url).name
        weights.parent.mkdir(parents=True)
        torch.save(torchvision.models.resnet18().state_dict(), weights)
        for path in (root / "input").rglob("*"):  # read-only, as Kaggle mounts it
            path.chmod(0o555 if path.is_dir() else 0o444)
        (root / "working").mkdir()
        trees[layout] = (root, snapshot(root / "input"))
    processes = {}
    for layout, (root, _) in trees.items():
        for name, tiny in TINY_RUNS.items():
            env = {**os.environ, "KAGGLE_ROOT": str(root / name), "KERNEL_ARGS": tiny,
                   "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
            (root / name).mkdir()
            (root / name / "input").symlink_to(root / "input")
            (root / name / "working").mkdir()
            processes[layout, name] = subprocess.Popen(
                [sys.executable, str(KERNELS_DIR / name / "kernel.py")], env=env,
                cwd=root / name / "working", text=True, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT)
    results = {key: (p.communicate(timeout=600)[0], p.returncode) for key, p in processes.items()}
    return trees, layouts, results


@pytest.mark.parametrize("name", list(TINY_RUNS))
@pytest.mark.parametrize("layout", ["gtzan", "comp", "comp-flat"])
def test_kernel_on_kaggle_tree(layout, name, kaggle_runs):
    trees, test_ids, results = kaggle_runs
    root, before = trees[layout]
    output, code = results[layout, name]
    assert code == 0, output[-3000:]
    kaggle = root / name
    assert snapshot(root / "input") == before  # nothing written under input/
    report = kaggle / "working" / "runs" / "kaggle"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_test"] >= 1 and not (report / "checkpoint.pt").exists()
    assert not (kaggle / "working" / "images").exists()  # scratch went to temp/
    assert (kaggle / "temp" / ("features.csv" if name == "mlp" else "images")).exists()
    if name == "transfer-vgg16":
        assert "weights: " in output and metrics["weights"] == "file"
    if layout == "gtzan":
        assert "jazz.00054.wav" in output  # the corrupt clip: skipped with a warning
        assert not (kaggle / "working" / "submission.csv").exists()
        assert sum("no test folder" in line for line in output.splitlines()) == 1
        return
    with open(kaggle / "working" / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["track_id", "genre_label"]  # sample_submission's columns
    assert [r[0] for r in rows[1:]] == test_ids[layout]  # its ids, its order: every test file
    assert {r[1] for r in rows[1:]} <= set(GENRES)
    assert "00004.wav" in output and "00005.wav" in output  # unreadable: warned, fallback label


@pytest.mark.parametrize("tree,words", [("none", "--input"), ("empty", "no training audio"),
                                        ("bad-flag", "--size")])
def test_kernel_mistakes_are_one_line(tree, words, tmp_path, monkeypatch, capsys):
    settings = {"kernel": "cnn", "trainer": "train_cnn", "pipeline": "images", "sources": [],
                "gpus": 1, "trainer_defaults": [], "run_name": "kaggle"}
    monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path / "kaggle"))
    monkeypatch.delenv("KERNEL_ARGS", raising=False)
    if tree != "none":
        (tmp_path / "kaggle" / "input" / "some-data" / "docs").mkdir(parents=True)
    argv = ["--size", "big"] if tree == "bad-flag" else []
    assert kernel_main.main(argv, settings) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
