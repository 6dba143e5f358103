"""kernels/build.py: recipes build deterministic kernels and bad recipes fail at build time; and
the Kaggle filesystem twin: each kernel.py runs as Kaggle runs it (`python kernel.py`, no
arguments, cwd = working, $KAGGLE_ROOT the /kaggle tree) against read-only input trees shaped as
Kaggle mounts them, survives a kill and a time limit, and resumes in its next version."""
import ast
import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common
from conftest import ROOT, without_seconds, write_tone

KERNELS_DIR = ROOT / "kernels"
RECIPES = sorted(p.stem for p in (KERNELS_DIR / "recipes").glob("*.json"))


def load_file(module_name, path):
    """A script as a module (not on sys.path: kernels/ holds generated folders)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_file("kernels_build", KERNELS_DIR / "build.py")
kernel_main = build.kernel_main


def built(out, *argv):
    """build.py ARGV --out OUT [-- trainer flags]; returns the kernel folder."""
    cut = argv.index("--") if "--" in argv else len(argv)
    assert build.main([*argv[:cut], "--out", str(out), *argv[cut:]]) == 0
    return out / argv[argv.index("--name" if "--name" in argv else "--recipe") + 1]


def embedded_modules(kernel_py):
    tree = ast.parse(kernel_py.read_text())
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and node.targets[0].id.endswith("_PY")}


# ----------------------------------------------------------------------------------------------
# Building

@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_build_byte_identical_and_check(recipe, tmp_path, capsys):
    kind = json.loads((KERNELS_DIR / "recipes" / f"{recipe}.json").read_text())["kind"]
    extra = ["--weights-dataset", "me/weights"] if kind == "transfer" else []
    first = built(tmp_path / "a", "--recipe", recipe, *extra)
    second = built(tmp_path / "b", "--recipe", recipe, *extra)
    assert sorted(p.name for p in first.iterdir()) == ["kernel-metadata.json", "kernel.py", "recipe.json"]
    for name in ("kernel.py", "kernel-metadata.json", "recipe.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert build.main(["--out", str(tmp_path / "a"), "--check"]) == 0
    script = first / "kernel.py"
    script.write_text(script.read_text() + "# edited\n")
    capsys.readouterr()
    assert build.main(["--out", str(tmp_path / "a"), "--check"]) == 1
    assert capsys.readouterr().out.strip() == f"stale: {script}"
    assert script.read_text().endswith("# edited\n")  # --check writes nothing
    assert build.main(["--out", str(tmp_path / "a")]) == 0  # a rebuild from its recipe.json
    assert script.read_bytes() == (second / "kernel.py").read_bytes()


@pytest.mark.parametrize("source", ["x = '''a'''\n", 'x = """a"""\ny = r"\\d"\n',
                                    "a = '''\"\"\"'''\n", "s = 'tail'  # \\\n"])
def test_embedded_source_round_trips_exactly(source):
    text = build.embed("common", source)
    assert ast.literal_eval(ast.parse(text).body[0].value) == source


@pytest.mark.parametrize("kind", ["cnn", "transfer", "mlp"])
def test_a_kernel_carries_its_modules_verbatim_and_no_other_pipeline(kind, tmp_path):
    folder = built(tmp_path, "--name", f"k-{kind}", "--kind", kind, "--", "--weights", "none") \
        if kind == "transfer" else built(tmp_path, "--name", f"k-{kind}", "--kind", kind)
    values = embedded_modules(folder / "kernel.py")
    trainer = kernel_main.TRAINERS[kind]
    modules = ["common", "predict", "data_conversion", trainer]  # what kernel_main and it import
    for module in modules:
        assert values[f"{module.upper()}_PY"] == (ROOT / f"{module}.py").read_text()
    assert values["KERNEL_MAIN_PY"] == (KERNELS_DIR / "kernel_main.py").read_text()
    assert set(values) == {f"{m.upper()}_PY" for m in modules} | {"KERNEL_MAIN_PY"}  # no other trainer


def test_metadata_and_recipe(tmp_path):
    folder = built(tmp_path, "--name", "my-specnet", "--kind", "cnn", "--mel", "64", "--size", "0",
                   "--segment-seconds", "3", "--user", "alice", "--competition", "genre-comp",
                   "--dataset", "bob/gtzan", "--test-folder", "test_audio", "--time-limit", "2h",
                   "--", "--model", "specnet", "--epochs", "40")
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/music-genre-my-specnet" and meta["title"] == "Music Genre My Specnet"
    assert (meta["language"], meta["kernel_type"], meta["code_file"]) == ("python", "script", "kernel.py")
    assert meta["enable_gpu"] is True and meta["machine_shape"] == "NvidiaTeslaT4"  # never a P100
    assert meta["enable_internet"] is False  # code competitions require it off
    assert meta["dataset_sources"] == ["bob/gtzan"] and meta["competition_sources"] == ["genre-comp"]
    assert meta["kernel_sources"] == [meta["id"]]  # its own output: the next version resumes
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["conversion"] == {"size": 0, "mel": 64, "segment_seconds": 3.0}
    assert recipe["trainer_args"] == ["--model", "specnet", "--epochs", "40"]
    assert (recipe["test_folder"], recipe["time_limit"]) == ("test_audio", "2h")
    mlp = json.loads((built(tmp_path, "--recipe", "mlp") / "kernel-metadata.json").read_text())
    assert mlp["enable_gpu"] is False and "machine_shape" not in mlp  # a CPU session
    transfer = json.loads((built(tmp_path, "--recipe", "transfer-vgg16", "--dataset", "bob/gtzan",
                                 "--weights-dataset", "bob/w") / "kernel-metadata.json").read_text())
    assert transfer["dataset_sources"] == ["bob/gtzan", "bob/w"]


@pytest.mark.parametrize("argv,words", [
    (["--name", "x", "--kind", "cnn", "--", "--lr", "-1"], "--lr"),
    (["--name", "x", "--kind", "cnn", "--", "--model", "specnet", "--img-size", "7"], "--img-size 7"),
    (["--name", "x", "--kind", "cnn", "--", "--data", "d"], "set by the kernel"),
    (["--name", "x", "--kind", "mlp", "--", "--features", "f.csv"], "set by the kernel"),
    (["--name", "x", "--kind", "cnn", "--", "--resume", "r"], "set by the kernel"),
    (["--name", "x", "--kind", "transfer", "--", "--arch", "vgg17", "--weights", "none"], "vgg17"),
    (["--recipe", "transfer-vgg16"], "--weights-dataset"),
    (["--recipe", "nope"], "no such recipe"),
    (["--recipe", "mlp", "--size", "64"], "--size"),
    (["--name", "Bad_Name", "--kind", "cnn"], "--name"),
    (["--name", "x", "--kind", "cnn", "--user", "a/b"], "--user"),
    (["--name", "x", "--kind", "cnn", "--dataset", "gtzan"], "OWNER/SLUG"),
    (["--name", "x", "--kind", "cnn", "--time-limit", "soon"], "duration"),
    (["--name", "x"], "--kind"),
])
def test_bad_recipe_fails_at_build_in_one_line(argv, words, tmp_path, capsys):
    cut = argv.index("--") if "--" in argv else len(argv)
    assert build.main([*argv[:cut], "--out", str(tmp_path), *argv[cut:]]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_kernel_flags_and_trainer_passthrough(tmp_path, monkeypatch):
    recipe = json.loads(built(tmp_path, "--recipe", "cnn").joinpath("recipe.json").read_text())
    monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path / "k"))
    monkeypatch.setenv("KERNEL_ARGS", "--size 48 -- --lr 0.1")
    args, rest = kernel_main.split_argv(["--train", "a", "--epochs", "3", "--", "--size", "9",
                                         "--augment"], recipe)
    assert (args.train, args.size, args.working) == ("a", 48, str(tmp_path / "k" / "working"))
    assert args.input == str(tmp_path / "k" / "input") and args.time_limit == 11.5 * 3600
    assert rest == ["--epochs", "3", "--size", "9", "--augment", "--lr", "0.1"]


def test_more_than_one_gpu_trains_under_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(kernel_main.subprocess, "call", lambda command: calls.append(command) or 0)
    trainer = type("Trainer", (), {"main": staticmethod(lambda argv: calls.append(argv) or 0)})
    assert kernel_main.train(trainer, ["--epochs", "1"], gpus=2, budget=100) == 0
    command = calls[0]
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[6:] == ["--train-only", "--", "--epochs", "1", "--time-limit", "100s"]
    assert kernel_main.train(trainer, ["--epochs", "1"], gpus=1, budget=100) == 0
    assert calls[-1][:3] == ["--epochs", "1", "--time-limit"]


def test_previous_run_is_found_wherever_the_output_is_mounted(tmp_path):
    for mount in ("music-genre-x", "notebooks/alice/music-genre-x", "kernels/alice/x/output"):
        run = tmp_path / mount / "input" / mount / "runs" / "x"
        run.mkdir(parents=True)
        (run / "config.json").write_text("{}")
        assert kernel_main.previous_run(tmp_path / mount / "input", "x") == run
        assert kernel_main.previous_run(tmp_path / mount / "input", "y") is None


@pytest.mark.parametrize("tree,words", [("none", "--input"), ("empty", "no training audio"),
                                        ("bad-flag", "--size")])
def test_kernel_mistakes_are_one_line(tree, words, tmp_path, monkeypatch, capsys):
    recipe = json.loads(built(tmp_path / "k", "--recipe", "cnn").joinpath("recipe.json").read_text())
    monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path / "kaggle"))
    monkeypatch.delenv("KERNEL_ARGS", raising=False)
    if tree != "none":
        (tmp_path / "kaggle" / "input" / "some-data" / "docs").mkdir(parents=True)
    argv = ["--size", "big"] if tree == "bad-flag" else []
    assert kernel_main.main(argv, recipe) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_missing_weights_file_fails_before_any_work(tmp_path, monkeypatch, capsys):
    """A transfer kernel offline whose attached data set lacks the architecture's weights file
    names the file in one line before converting anything (the trainer would fail after it)."""
    recipe = json.loads(built(tmp_path / "k", "--recipe", "transfer-vgg16", "--weights-dataset",
                              "me/weights").joinpath("recipe.json").read_text())
    kaggle = tmp_path / "kaggle"
    monkeypatch.setenv("KAGGLE_ROOT", str(kaggle))
    monkeypatch.delenv("KERNEL_ARGS", raising=False)
    gtzan_dataset(kaggle / "input" / "gtzan")
    (kaggle / "input" / "weights" / "resnet18-f37072fd.pth").parent.mkdir(parents=True)
    (kaggle / "input" / "weights" / "resnet18-f37072fd.pth").write_bytes(b"not vgg16's")
    assert kernel_main.main(["--temp", str(tmp_path / "temp")], recipe) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vgg16-397923af.pth" in err and "--weights-dataset" in err
    assert not (tmp_path / "temp").exists()  # nothing converted


# ----------------------------------------------------------------------------------------------
# The Kaggle filesystem twin

GENRES = {"blues": 200.0, "metal": 2000.0, "pop": 800.0}


def audio_set(folder, per_genre, seed, flat=False, seconds=1.5):
    """Tone clips, each genre in its pitch range: folder/<genre>/<genre>.NNNNN.wav, or flat
    numbered files when flat; returns [(file name, genre)]."""
    items = []
    for g, base in GENRES.items():
        for i in range(per_genre):
            name = f"{len(items) + 1:05d}.wav" if flat else f"{g}.{i:05d}.wav"
            write_tone(folder / ("" if flat else g) / name, base * (1 + 0.07 * i), seconds=seconds,
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


def gtzan_dataset(root, seconds=1.5):
    """GTZAN as published on Kaggle: Data/genres_original/<genre>/*.wav (jazz.00054.wav
    corrupt), Data/features_30_sec.csv, Data/images_original/."""
    audio_set(root / "Data" / "genres_original", 3, 0, seconds=seconds)
    (root / "Data" / "genres_original" / "jazz").mkdir()
    (root / "Data" / "genres_original" / "jazz" / "jazz.00054.wav").write_bytes(b"corrupt")
    (root / "Data" / "features_30_sec.csv").write_text("filename,length,label\n")
    (root / "Data" / "images_original" / "blues").mkdir(parents=True)
    (root / "Data" / "images_original" / "blues" / "blues00000.png").write_bytes(b"\x89PNG")


def snapshot(tree):
    return sorted((str(p.relative_to(tree)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in tree.rglob("*"))


def read_only(tree):
    for path in [*tree.rglob("*"), tree]:  # as Kaggle mounts input/
        path.chmod(0o555 if path.is_dir() else 0o444)


def start_kernel(kernel_py, root, kernel_args):
    """`python kernel.py` as Kaggle starts it: no arguments, cwd working/, /kaggle at root."""
    env = {**os.environ, "KAGGLE_ROOT": str(root), "KERNEL_ARGS": kernel_args,
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    (root / "working").mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(kernel_py)], env=env, cwd=root / "working",
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


# (data layout, recipe, build flags, $KERNEL_ARGS): tiny settings (Kaggle passes no arguments)
TWIN_RUNS = {
    ("gtzan", "specnet-mel"): ([], "--size 0 --mel 16 --segment-seconds 0.5 -- --epochs 2"),
    ("gtzan", "mlp"): ([], "-- --epochs 2 --hidden 16:relu"),
    ("comp", "cnn"): ([], "--size 32 -- --epochs 1 --img-size 16"),
    ("comp", "transfer-vgg16"): (["--weights-dataset", "me/imagenet-weights"],
                                 "--size 32 -- --epochs 1 --arch resnet18 --img-size 32"),
    ("comp-flat", "mlp"): ([], "-- --epochs 2 --hidden 16:relu"),
    ("comp-flat", "specnet-mel"): ([], "--size 0 --mel 16 --segment-seconds 0.5 -- --epochs 1"),
    ("comp-flat", "cnn14"): (["--weights-dataset", "me/panns-weights"],
                             "-- --epochs 1 --clip-seconds 1 --batch-size 4"),
}


@pytest.fixture(scope="module")
def kaggle_runs(tmp_path_factory):
    """Kernels built from the recipes against three /kaggle trees, as Kaggle runs them, all at
    once: GTZAN's data set (input/datasets/<owner>/<slug>/, no test folder), a competition
    (input/<slug>/) and a competition with a flat train folder + train.csv
    (input/competitions/<slug>/). A data set of torchvision weights (resnet18) is attached too,
    as the transfer kernel needs offline."""
    import torchvision
    base = tmp_path_factory.mktemp("kaggle")
    layouts, trees, processes = {}, {}, {}
    for layout in ("gtzan", "comp", "comp-flat"):
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
        (root / "input" / "panns-weights").mkdir()  # PANNs' file name, random weights
        torch.save(common.Cnn14().state_dict(), root / "input" / "panns-weights" / "Cnn14_mAP=0.431.pth")
        read_only(root / "input")
        trees[layout] = (root, snapshot(root / "input"))
    for (layout, recipe), (flags, tiny) in TWIN_RUNS.items():
        kernel = built(base / "kernels" / layout, "--recipe", recipe, *flags)
        root = trees[layout][0] / recipe
        (root / "working").mkdir(parents=True)
        (root / "input").symlink_to(trees[layout][0] / "input")
        processes[layout, recipe] = start_kernel(kernel / "kernel.py", root, tiny)
    results = {key: (p.communicate(timeout=900)[0], p.returncode) for key, p in processes.items()}
    return trees, layouts, results


@pytest.mark.slow
@pytest.mark.parametrize("layout,recipe", list(TWIN_RUNS))
def test_kernel_on_kaggle_tree(layout, recipe, kaggle_runs):
    trees, test_ids, results = kaggle_runs
    root, before = trees[layout]
    output, code = results[layout, recipe]
    assert code == 0, output[-3000:]
    kaggle = root / recipe
    assert snapshot(root / "input") == before  # nothing written under input/
    report = kaggle / "working" / "runs" / recipe  # the run is named after the kernel
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_test"] >= 1 and metrics["complete"] and not (report / "checkpoint.pt").exists()
    assert {p.name for p in (kaggle / "working").iterdir()} <= {"runs", "submission.csv"}
    made = {p.name for p in (kaggle / "temp").iterdir()}
    assert {"mlp": "features.csv", "cnn14": "cache"}.get(recipe, "images") in made
    assert recipe != "cnn14" or "images" not in made  # cnn14 reads the audio itself
    if recipe in ("transfer-vgg16", "cnn14"):
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
    assert (report / "submission.json").is_file()  # the prediction's record, for compare.py


# ----------------------------------------------------------------------------------------------
# Sessions that end early: killed, or at the time limit; the next version resumes

RESUME_ARGS = "--size 32 -- --epochs 8 --img-size 16 --patience 8 --augment specaugment --mixup 0.2"


def next_version(root):
    """A new session of the kernel: temp/ and working/ empty, the previous version's output
    (its working/) mounted read-only under input/ as Kaggle mounts a kernel's output."""
    mounted = root / "input" / "notebooks" / "me" / "music-genre-cnn"
    if mounted.exists():  # the one before: Kaggle mounts the latest output only
        for path in [mounted, *mounted.rglob("*")]:
            path.chmod(0o755)
        shutil.rmtree(mounted)
    shutil.copytree(root / "working", mounted)
    read_only(mounted)
    shutil.rmtree(root / "working")
    shutil.rmtree(root / "temp", ignore_errors=True)


def history_and_weights(run):
    with open(run / "history.csv") as f:
        history = without_seconds(csv.DictReader(f))
    return history, torch.load(run / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """The CNN kernel and a competition tree; the kernel's uninterrupted run as the reference."""
    base = tmp_path_factory.mktemp("resume")
    kernel = built(base / "kernels", "--recipe", "cnn") / "kernel.py"
    tree = base / "tree"
    competition(tree / "genre-quest", flat_train=False)
    read_only(tree)

    def fresh(name):
        root = base / name
        (root / "input").mkdir(parents=True)
        (root / "input" / "genre-quest").symlink_to(tree / "genre-quest")
        return root
    whole = fresh("whole")
    output, _ = start_kernel(kernel, whole, RESUME_ARGS).communicate(timeout=600)
    return kernel, fresh, history_and_weights(whole / "working" / "runs" / "cnn"), output


@pytest.mark.slow
def test_killed_kernel_resumes_in_its_next_version(resumable):
    """SIGKILL mid-training (Kaggle's 12-hour limit): the checkpoint is already in working/;
    version 2, with version 1's output attached, resumes and ends with the history and weights
    of the run never stopped, and predicts."""
    kernel, fresh, reference, _ = resumable
    root = fresh("killed")
    first = start_kernel(kernel, root, RESUME_ARGS)
    for line in first.stdout:
        if line.startswith("epoch   4"):
            first.send_signal(signal.SIGKILL)
            break
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert (root / "working" / "runs" / "cnn" / "checkpoint.pt").is_file()
    next_version(root)
    output, _ = (second := start_kernel(kernel, root, RESUME_ARGS)).communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    assert "previous version's run is attached" in output and "resuming from" in output
    history, weights = history_and_weights(root / "working" / "runs" / "cnn")
    assert history == reference[0] and len(history) == 8
    assert all(torch.equal(weights[k], reference[1][k]) for k in weights)
    assert (root / "working" / "submission.csv").is_file()


@pytest.mark.slow
def test_time_limit_stops_cleanly_and_the_next_version_finishes(resumable):
    """A time limit too short for the run: version 1 stops cleanly (exit 0, checkpoint, a
    report marked incomplete, a submission of the model so far); version 2 finishes it as the
    run never stopped; version 3, with a finished run attached, trains nothing."""
    kernel, fresh, reference, _ = resumable
    root = fresh("limited")
    output, _ = (first := start_kernel(kernel, root, "--time-limit 1s " + RESUME_ARGS)).communicate(timeout=600)
    run = root / "working" / "runs" / "cnn"
    assert first.returncode == 0, output[-3000:]
    assert "time limit: stopping before epoch" in output and (run / "checkpoint.pt").is_file()
    assert json.loads((run / "metrics.json").read_text())["complete"] is False
    assert "push a new version of this kernel" in output  # what to do on Kaggle, not locally
    assert (root / "working" / "submission.csv").is_file()
    next_version(root)
    output, _ = (second := start_kernel(kernel, root, RESUME_ARGS)).communicate(timeout=600)
    assert second.returncode == 0 and "push a new version" not in output, output[-3000:]
    history, weights = history_and_weights(run)
    assert history == reference[0]
    assert all(torch.equal(weights[k], reference[1][k]) for k in weights)
    assert json.loads((run / "metrics.json").read_text())["complete"] is True
    next_version(root)
    output, _ = (third := start_kernel(kernel, root, RESUME_ARGS)).communicate(timeout=600)
    assert third.returncode == 0 and "nothing to do" in output and "epoch" not in output
    assert history_and_weights(run)[0] == reference[0]
    assert (root / "working" / "submission.csv").is_file()
