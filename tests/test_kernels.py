"""Kaggle kernels: kernels/build.py makes notebooks from recipes (deterministic, checked at
build time), kernels/kernel_main.py is what they run, and the Kaggle twin runs them as Kaggle
does (tests/kaggle_twin.py: pushed with the real client, sessions by Kaggle's rules, notebooks
executed by a real Jupyter kernel): against read-only input trees in Kaggle's layouts, stopped,
killed, resumed by the relay partner, on two processes, and in a code competition."""
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

import common
import models
import runs
from conftest import ROOT, without_seconds, write_tone
from kaggle_twin import USER

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
loop = load_file("kaggle_loop", KERNELS_DIR / "kaggle_loop.py")


def built(out, *argv):
    """build.py ARGV --out OUT [-- trainer flags]; returns the kernel folder."""
    cut = argv.index("--") if "--" in argv else len(argv)
    assert build.cli([*argv[:cut], "--out", str(out), *argv[cut:]]) == 0
    return out / argv[argv.index("--name" if "--name" in argv else "--recipe") + 1]


def cells(folder):
    return nbformat.read(folder / "kernel.ipynb", as_version=4).cells


def written_files(folder):
    """{path under the suite's folder: text} the notebook's %%writefile cells write."""
    out = {}
    for cell in cells(folder):
        if cell.cell_type == "code" and cell.source.startswith("%%writefile"):
            first, _, text = cell.source.partition("\n")
            out[first.split("{SUITE}/")[1]] = text
    return out


# ----------------------------------------------------------------------------------------------
# Building

@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_build_byte_identical_and_check(recipe, tmp_path, capsys):
    kind = json.loads((KERNELS_DIR / "recipes" / f"{recipe}.json").read_text())["kind"]
    extra = ["--weights-dataset", "me/weights"] if kind == "transfer" else []
    first = built(tmp_path / "a", "--recipe", recipe, *extra)
    second = built(tmp_path / "b", "--recipe", recipe, *extra)
    files = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert files == ["kernel-metadata.json", "kernel.ipynb", "recipe.json",
                     "relay/kernel-metadata.json"]
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert build.cli(["--out", str(tmp_path / "a"), "--check"]) == 0
    notebook = first / "kernel.ipynb"
    notebook.write_text(notebook.read_text().replace("def fit(", "def fitted("))
    capsys.readouterr()
    assert build.cli(["--out", str(tmp_path / "a"), "--check"]) == 1
    assert capsys.readouterr().out.strip() == f"stale: {notebook}"
    assert "def fitted(" in notebook.read_text()  # --check writes nothing
    assert build.cli(["--out", str(tmp_path / "a")]) == 0  # a rebuild from its recipe.json
    assert notebook.read_bytes() == (second / "kernel.ipynb").read_bytes()


def test_the_notebook_reads_top_to_bottom(tmp_path):
    """What it does on top, then the recipe as one editable cell, the suite's code as real code
    cells (verbatim, hidden until shown), one cell that runs it, the results; no outputs."""
    folder = built(tmp_path, "--recipe", "specnet-mel", "--dataset", "bob/gtzan")
    notebook = nbformat.read(folder / "kernel.ipynb", as_version=4)
    nbformat.validate(notebook)
    about, recipe, *rest = notebook.cells
    assert about.cell_type == "markdown" and about.source.startswith("# Music Genre SpecNet Mel")
    for words in ("**What it does.**", "train_cnn.py --model specnet", "128-band log-mel",
                  "**Data.**", "bob/gtzan", "**Time.**", "11h30m", "**Resuming.**",
                  "music-genre-specnet-mel-relay", "kaggle_loop.py push specnet-mel"):
        assert words in about.source, words
    assert recipe.source.startswith("RECIPE = {") and "'trainer_args': ['--model', 'specnet']" \
        in recipe.source
    code = [c for c in rest if c.source.startswith("%%writefile")]
    assert all(c.metadata["_kg_hide-input"] and c.metadata["jupyter"]["source_hidden"] for c in code)
    assert written_files(folder) == {f"{m}.py": (ROOT / f"{m}.py").read_text() for m in
                                     ("common", "audio", "data", "models", "kaggle_client", "uncertainty",
                                      "training", "reports", "runs", "predict", "train_cnn", "conversion")} | {
        "kernel_main.py": (KERNELS_DIR / "kernel_main.py").read_text()}
    sources = [c.source for c in rest if not c.source.startswith("%%writefile")]
    assert any(s.strip() == "import kernel_main\n\nkernel_main.run_notebook(RECIPE)".strip()
               for s in sources)
    assert any("results_table(part)" in s and "curves.png" in s for s in sources)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")
    assert "exec(" not in (folder / "kernel.ipynb").read_text()
    # the notebook's own cells, read as one script, use no name they do not define or import
    script = "\n\n".join(c.source for c in notebook.cells
                           if c.cell_type == "code" and not c.source.startswith("%%writefile"))
    found = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F821",
                            "--stdin-filename", "cells.py", "-"], input=script, text=True,
                           capture_output=True)
    assert found.returncode == 0, found.stdout


def test_the_results_show_each_figure_with_its_interval(tmp_path):
    """The notebook's results table: balanced accuracy and accuracy with their 95 % intervals
    over the test clips and how each was computed; a run recorded before intervals says so."""
    import uncertainty
    truth = list(range(10))
    metrics = {"model": "specnet", "n_test": 10, "split": "random 80/10/10 (seed 0)",
               "test_balanced_accuracy": 1.0, "test_accuracy": 1.0, "test_macro_f1": 1.0,
               "epochs_run": 3, "best_epoch": 3, "train_seconds": 12.0,
               **uncertainty.test_intervals(truth, truth)}
    common.write_json(tmp_path / "metrics.json", metrics)
    table = kernel_main.results_table(tmp_path)
    assert "| balanced accuracy | 1.000 (95% CI 0.692..1.000) |" in table  # 0.025 ** (1/10)
    assert "| accuracy | 1.000 (95% CI 0.692..1.000) |" in table
    assert "balanced accuracy interval: percentile bootstrap over test clips" in table
    assert "accuracy interval: exact Clopper-Pearson" in table
    for key in ("test_balanced_accuracy_ci", "test_accuracy_ci", "ci_method"):
        del metrics[key]
    common.write_json(tmp_path / "metrics.json", metrics)
    assert "| balanced accuracy | 1.000 (interval not recorded) |" in kernel_main.results_table(tmp_path)


@pytest.mark.parametrize("kind,modules", [
    ("cnn", ["common", "audio", "data", "models", "kaggle_client", "uncertainty", "training", "reports", "runs", "predict",
             "train_cnn", "conversion", "kernel_main"]),
    ("transfer", ["common", "audio", "data", "models", "kaggle_client", "uncertainty", "training", "reports", "runs", "predict",
             "train_transfer", "conversion", "kernel_main"]),
    ("mlp", ["common", "audio", "data", "models", "kaggle_client", "uncertainty", "training", "reports", "runs", "predict",
             "train_mlp", "conversion", "kernel_main"]),
])
def test_a_kernel_carries_the_modules_it_imports_and_no_other(kind, modules, tmp_path):
    flags = ["--", "--weights", "none"] if kind == "transfer" else []
    folder = built(tmp_path, "--name", f"k-{kind}", "--kind", kind, *flags)
    assert list(written_files(folder)) == [f"{m}.py" for m in modules]


def test_a_named_split_ships_with_the_kernel_that_uses_it(tmp_path):
    folder = built(tmp_path, "--name", "filtered", "--kind", "mlp", "--", "--split",
                   "gtzan-filtered")
    files = written_files(folder)
    assert files["splits/gtzan-filtered.json"] == (ROOT / "splits" / "gtzan-filtered.json").read_text()
    assert "splits/gtzan-filtered.json" not in written_files(built(tmp_path, "--recipe", "mlp"))


def test_metadata_and_recipe(tmp_path):
    folder = built(tmp_path, "--name", "my-specnet", "--kind", "cnn", "--mel", "64", "--size", "0",
                   "--segment-seconds", "3", "--user", "alice", "--competition", "genre-comp",
                   "--dataset", "bob/gtzan", "--test-folder", "test_audio", "--time-limit", "2h",
                   "--", "--model", "specnet", "--epochs", "40")
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    relay = json.loads((folder / "relay" / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/music-genre-my-specnet" and meta["title"] == "Music Genre My Specnet"
    assert relay["id"] == "alice/music-genre-my-specnet-relay" and relay["title"].endswith(" Relay")
    assert (meta["language"], meta["kernel_type"], meta["code_file"]) == ("python", "notebook",
                                                                        "kernel.ipynb")
    assert relay["code_file"] == "../kernel.ipynb"  # one notebook, two kernels
    assert meta["kernel_sources"] == [relay["id"]] and relay["kernel_sources"] == [meta["id"]]
    assert meta["enable_gpu"] is True and meta["machine_shape"] == "NvidiaTeslaT4"  # never a P100
    assert meta["enable_internet"] is False  # code competitions require it off
    # a relay resumes in the same image: each kernel pinned to its first version's
    assert meta["docker_image_pinning_type"] == relay["docker_image_pinning_type"] == "original"
    intro = cells(folder)[0].source  # one notebook for both kernels: it names both
    assert f"`{meta['id']}` and its relay partner `{relay['id']}`" in intro
    assert meta["dataset_sources"] == ["bob/gtzan"] and meta["competition_sources"] == ["genre-comp"]
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["conversion"] == {"size": 0, "mel": 64, "segment_seconds": 3.0}
    assert recipe["trainer_args"] == ["--model", "specnet", "--epochs", "40"]
    assert (recipe["test_folder"], recipe["time_limit"]) == ("test_audio", "2h")
    mlp = json.loads((built(tmp_path, "--recipe", "mlp") / "kernel-metadata.json").read_text())
    assert mlp["enable_gpu"] is False and "machine_shape" not in mlp  # a CPU session
    transfer = json.loads((built(tmp_path, "--recipe", "transfer-vgg16", "--dataset", "bob/gtzan",
                                 "--weights-dataset", "bob/w") / "kernel-metadata.json").read_text())
    assert transfer["dataset_sources"] == ["bob/gtzan", "bob/w"]


def test_one_name_one_id(tmp_path, capsys):
    """--name gives the title and the id (a ready-made recipe's title is its own name's); two
    kernels of one --out that map to one Kaggle id are refused."""
    copy = built(tmp_path, "--recipe", "mlp", "--name", "x")
    assert json.loads((copy / "kernel-metadata.json").read_text())["id"] == \
        "your-kaggle-username/music-genre-x"
    built(tmp_path, "--recipe", "mlp")
    assert build.cli(["--name", "y", "--kind", "mlp", "--title", "Music Genre MLP", "--out",
                       str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "music-genre-mlp is" in err and not (tmp_path / "y").exists()


def test_a_kernel_of_another_training_is_replaced_only_with_overwrite(tmp_path, capsys):
    """--recipe specnet-mel --name mlp over an mlp kernel (edited by hand) is refused in one line
    and changes nothing; a folder that is no kernel too; the same training rebuilds in place."""
    mlp = built(tmp_path, "--recipe", "mlp")
    notebook = mlp / "kernel.ipynb"
    notebook.write_text(notebook.read_text().replace("def fit(", "def fitted("))
    before = {p: p.read_bytes() for p in mlp.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert build.cli(["--recipe", "specnet-mel", "--name", "mlp", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds another kernel (mlp" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in mlp.rglob("*") if p.is_file()} == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert build.cli(["--name", "notes", "--kind", "mlp", "--out", str(tmp_path)]) == 1
    assert "not a kernel folder" in capsys.readouterr().err
    built(tmp_path, "--recipe", "mlp", "--user", "alice")  # same training, other sources
    built(tmp_path, "--recipe", "specnet-mel", "--name", "mlp", "--overwrite")
    assert json.loads((mlp / "recipe.json").read_text())["kind"] == "cnn"


def test_a_recipe_cell_edited_by_hand_is_never_discarded_by_a_rebuild(tmp_path, capsys):
    """The RECIPE cell is the one to change; a rebuild (of all, or of that kernel) that would
    put recipe.json's back is refused in one line, writing nothing, unless --overwrite."""
    folder = built(tmp_path, "--recipe", "mlp")
    notebook = folder / "kernel.ipynb"
    notebook.write_text(notebook.read_text().replace("'time_limit': '11h30m'", "'time_limit': '10h'"))
    edited = notebook.read_bytes()
    assert edited != (built(tmp_path / "fresh", "--recipe", "mlp") / "kernel.ipynb").read_bytes()
    capsys.readouterr()
    for argv in ([], ["--recipe", "mlp"]):
        assert build.cli([*argv, "--out", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "RECIPE cell was edited by hand" in err
        assert notebook.read_bytes() == edited
    assert build.cli(["--out", str(tmp_path), "--check"]) == 1  # still stale, said so
    assert build.cli(["--out", str(tmp_path), "--overwrite"]) == 0
    assert notebook.read_bytes() == (tmp_path / "fresh" / "mlp" / "kernel.ipynb").read_bytes()


def test_a_code_competition_has_a_training_and_a_predict_kernel(tmp_path, capsys):
    """Its time limit under 9 h; a predict kernel attaches both training kernels and trains
    nothing; its build line and intro say an inference-server competition is not supported."""
    train = built(tmp_path, "--recipe", "specnet-mel", "--competition", "comp",
                  "--code-competition")
    assert json.loads((train / "recipe.json").read_text())["time_limit"] == "8h30m"
    capsys.readouterr()
    infer = built(tmp_path, "--name", "specnet-infer", "--kind", "predict", "--from", "specnet-mel")
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "kaggle_evaluation inference servers are not supported" in line
    assert "placeholder `submission.csv`" in cells(infer)[0].source
    meta = json.loads((infer / "kernel-metadata.json").read_text())
    assert meta["kernel_sources"] == ["your-kaggle-username/music-genre-specnet-mel",
                                      "your-kaggle-username/music-genre-specnet-mel-relay"]
    assert meta["competition_sources"] == ["comp"] and not (infer / "relay").exists()
    assert "train_cnn.py" not in written_files(infer)  # no trainer: nothing is trained


@pytest.mark.parametrize("argv,words", [
    (["--name", "x", "--kind", "cnn", "--", "--lr", "-1"], "--lr"),
    (["--name", "x", "--kind", "cnn", "--", "--model", "specnet", "--img-size", "7"], "--img-size 7"),
    (["--name", "x", "--kind", "cnn", "--", "--data", "d"], "set by the kernel"),
    (["--name", "x", "--kind", "mlp", "--", "--features", "f.csv"], "set by the kernel"),
    (["--name", "x", "--kind", "cnn", "--", "--resume", "r"], "set by the kernel"),
    (["--name", "x", "--kind", "cnn", "--", "--split", "/home/me/split.json"], "file's name"),
    (["--name", "x", "--kind", "transfer", "--", "--arch", "vgg17", "--weights", "none"], "vgg17"),
    (["--recipe", "transfer-vgg16"], "kaggle_loop.py weights --arch vgg16"),
    (["--recipe", "nope"], "no such recipe"),
    (["--recipe", "mlp", "--size", "64"], "--size"),
    (["--recipe", "cnn", "--feature-set", "extended"], "--feature-set"),
    (["--name", "Bad_Name", "--kind", "cnn"], "--name"),
    (["--name", "x", "--kind", "cnn", "--user", "a/b"], "--user"),
    (["--name", "x", "--kind", "cnn", "--user", "John Doe"], "no spaces"),
    (["--name", "x", "--kind", "cnn", "--competition", "My Comp"], "the competition's slug"),
    (["--name", "x", "--kind", "cnn", "--dataset", "gtzan"], "OWNER/SLUG"),
    (["--name", "x", "--kind", "cnn", "--time-limit", "soon"], "duration"),
    (["--name", "x", "--kind", "cnn", "--time-limit", "11h55m"], "leave at least 10 minutes"),
    (["--name", "x", "--kind", "cnn", "--competition", "c", "--code-competition",
      "--time-limit", "9h"], "code competition notebook at 9 h"),
    (["--name", "x", "--kind", "cnn", "--code-competition"], "needs --competition"),
    (["--name", "x", "--kind", "predict"], "--from NAME"),
    (["--name", "x", "--kind", "predict", "--from", "nope"], "build the training kernel first"),
    (["--name", "x"], "--kind"),
])
def test_bad_recipe_fails_at_build_in_one_line(argv, words, tmp_path, capsys):
    cut = argv.index("--") if "--" in argv else len(argv)
    assert build.cli([*argv[:cut], "--out", str(tmp_path), *argv[cut:]]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# What the kernel does (kernel_main), in this process

def test_kernel_flags_and_trainer_passthrough(tmp_path, monkeypatch):
    recipe = json.loads(built(tmp_path, "--recipe", "cnn").joinpath("recipe.json").read_text())
    monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path / "k"))
    monkeypatch.setenv("KERNEL_ARGS", "--size 48 -- --lr 0.1")
    args, rest = kernel_main.split_argv(["--train", "a", "--epochs", "3", "--", "--size", "9",
                                         "--augment"], recipe)
    assert (args.train, args.size, args.working) == ("a", 48, str(tmp_path / "k" / "working"))
    assert args.input == str(tmp_path / "k" / "input") and args.time_limit == 11.5 * 3600
    assert rest == ["--epochs", "3", "--size", "9", "--augment", "--lr", "0.1"]


def fake_run(folder, epochs=8, done=3, flags=("--epochs", "8")):
    """A run folder as a session leaves it: config.json and checkpoint.json."""
    import train_cnn
    folder.mkdir(parents=True)
    args = vars(train_cnn.parse_args(["--data", "d", *flags], check_paths=False))
    (folder / "config.json").write_text(json.dumps({"args": runs.jsonable(args)}))
    (folder / "checkpoint.json").write_text(json.dumps({"epochs_done": done}))
    return folder


def test_earlier_runs_are_found_wherever_mounted_and_the_furthest_is_taken(tmp_path, capsys):
    """Under any of Kaggle's mount layouts; of several (the partner's output, a rescued run),
    the one made with the same flags that got furthest is copied to working/ (writable)."""
    import train_cnn
    inputs = tmp_path / "input"
    partner = fake_run(inputs / "notebooks" / "me" / "music-genre-x-relay" / "runs" / "x", done=3)
    rescued = fake_run(inputs / "datasets" / "me" / "music-genre-x-rescue" / "runs" / "x", done=5)
    fake_run(inputs / "x-old" / "runs" / "x", done=7, flags=("--epochs", "8", "--lr", "0.1"))
    fake_run(inputs / "y" / "runs" / "y", done=9)
    found = {str(run.relative_to(inputs)): p.epochs_done for run, p in
             kernel_main.earlier_runs(inputs, "x")}
    assert found == {"x-old/runs/x": 7, "notebooks/me/music-genre-x-relay/runs/x": 3,
                     "datasets/me/music-genre-x-rescue/runs/x": 5}
    run_dir = tmp_path / "working" / "runs" / "x"
    argv = ["--data", "d", "--epochs", "8", "--name", "x"]
    assert kernel_main.take_over(kernel_main.earlier_runs(inputs, "x"), run_dir,
                                 train_cnn, argv) is True
    assert f"resuming the run in {rescued} (epoch 5 of 8)" in capsys.readouterr().out
    assert json.loads((run_dir / "checkpoint.json").read_text())["epochs_done"] == 5
    assert partner.exists() and os.access(run_dir, os.W_OK)


def test_a_run_is_the_same_run_wherever_its_input_files_are_mounted_now(tmp_path):
    """CNN14's labels, weights and split are files under input/, mounted elsewhere by the next
    session: compared by name; another trainer flag makes it another run."""
    import train_transfer

    def argv(mount, *extra):
        return ["--data", f"{mount}/train", "--labels", f"{mount}/train.csv", "--arch", "cnn14",
                "--weights", f"{mount}/w/Cnn14_mAP=0.431.pth", "--split", f"{mount}/s.json", *extra]
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    recorded = vars(train_transfer.parse_args(argv("/kaggle/input/comp"), check_paths=False))
    (run / "config.json").write_text(json.dumps({"args": runs.jsonable(recorded)}))
    moved = "/kaggle/input/competitions/comp"
    assert kernel_main.same_run(run, train_transfer, argv(moved))
    assert not kernel_main.same_run(run, train_transfer, argv(moved, "--lr", "0.1"))
    other = argv(moved)
    other[3] = f"{moved}/other.csv"
    assert not kernel_main.same_run(run, train_transfer, other)


def test_processes_auto_uses_both_gpus_only_when_it_pays(tmp_path, monkeypatch):
    """On T4 x2 (two visible GPUs) a recipe trains on both when the estimate says a step gets a
    quarter faster; else one line says why the other idles. Only the GPUs are faked here."""
    from PIL import Image

    import train_cnn
    import train_transfer
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    (tmp_path / "img" / "a").mkdir(parents=True)
    Image.new("P", (130, 128)).save(tmp_path / "img" / "a" / "x.png")
    data = ["--data", str(tmp_path / "img")]

    def plan(kind, *flags):
        trainer = {"cnn": train_cnn, "transfer": train_transfer}[kind]
        parsed = trainer.parse_args(list(flags), check_paths=False)
        return kernel_main.plan_processes("auto", {"kind": kind}, trainer, parsed, data)
    processes, why = plan("cnn", "--img-size", "512")
    assert processes == 1 and "the other idles" in why and "201.6 M weights" in why
    processes, why = plan("cnn", "--model", "specnet")
    assert processes == 1 and "the other idles" in why
    processes, why = plan("transfer", "--arch", "cnn14", "--finetune", "--weights", "none")
    assert processes == 2 and "training on 2 GPUs" in why
    processes, why = plan("transfer", "--arch", "vgg16", "--weights", "none")
    assert processes == 1 and "frozen backbone runs once" in why
    assert kernel_main.plan_processes("auto", {"kind": "mlp"}, None, None, data)[0] == 1
    assert kernel_main.plan_processes("2", {"kind": "cnn"}, None, None, data)[0] == 2


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
    assert err.count("\n") == 1 and "vgg16-397923af.pth" in err and "kaggle_loop.py weights" in err
    assert not (tmp_path / "temp").exists()  # nothing converted


def test_a_split_file_is_found_by_name_under_input(tmp_path, monkeypatch, capsys):
    """--split NAME of a recipe is looked for under input/ (an attached data set), the path given
    to the trainer; missing, it is one line before any work."""
    recipe = json.loads(built(tmp_path / "k", "--name", "s", "--kind", "mlp", "--", "--split",
                              "my-split.json").joinpath("recipe.json").read_text())
    split = tmp_path / "input" / "datasets" / "me" / "splits" / "my-split.json"
    with pytest.raises(common.SuiteError, match="--split my-split.json: no file of that name"):
        kernel_main.trainer_flags(recipe, [], tmp_path / "input")
    split.parent.mkdir(parents=True)
    split.write_text("{}")
    assert kernel_main.trainer_flags(recipe, ["--epochs", "2"], tmp_path / "input") == [
        "--split", str(split), "--epochs", "2"]


def test_the_kernels_log_reaches_a_pipe_line_by_line(tmp_path):
    """Run as a command with its output into a pipe (as a script kernel's reaches Kaggle's log):
    each stage's line arrives while the kernel is still running, not at its end."""
    recipe = built(tmp_path / "k", "--name", "piped", "--kind", "cnn", "--size", "32", "--",
                   "--epochs", "30", "--img-size", "16") / "recipe.json"
    audio_set(tmp_path / "audio", 3, 0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("PYTHONUNBUFFERED", None)  # Kaggle's image does not set it
    process = subprocess.Popen(
        [sys.executable, str(KERNELS_DIR / "kernel_main.py"), str(recipe), "--train",
         str(tmp_path / "audio"), "--temp", str(tmp_path / "temp"), "--working",
         str(tmp_path / "working"), "--input", str(tmp_path)], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = []
    for line in process.stdout:
        seen.append((line, process.poll()))
        if line.startswith("epoch   2"):
            break
    running = [line for line, code in seen if code is None]
    process.kill()
    process.communicate()
    assert any(line.startswith("train: ") for line in running)
    assert any(line.startswith("epoch   1") for line in running)


# ----------------------------------------------------------------------------------------------
# Kaggle's sessions: the twin runs the notebooks as Kaggle runs them

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


def files_of(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


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


def log_of(version):
    return "".join(entry["data"] for entry in json.loads(version["log"]))


def executed_outputs(version):
    """{cell id: [output types and their data's types]} of the session's executed notebook."""
    notebook = nbformat.reads(version["executed"], as_version=4)
    return {c.id: [o.output_type + ":" + ",".join(o.get("data", {})) for o in c.get("outputs", [])]
            for c in notebook.cells if c.cell_type == "code"}


@pytest.fixture(scope="module")
def kaggle_world(tmp_path_factory):
    """The twin running sessions (module-wide) with GTZAN's data set (no test folder), a
    competition (train/ in genre folders, test/, sample_submission.csv), the same competition
    with a flat train/ + train.csv, and a data set of torchvision weights made by
    `kaggle_loop.py weights` (resnet18, random weights as torchvision names them)."""
    import torchvision

    import kaggle_twin
    base = tmp_path_factory.mktemp("kaggle")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOME", str(base / "home"))
        env.setenv("KAGGLE_CONFIG_DIR", str(base / "home" / ".kaggle"))
        env.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
        env.setenv("KAGGLE_API_TOKEN", kaggle_twin.TOKEN)
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("TORCH_HOME", str(base / "torch"))
        env.delenv("KERNEL_ARGS", raising=False)
        with kaggle_twin.KaggleTwin(root=base / "sessions") as twin:
            gtzan_dataset(base / "gtzan")
            twin.add_dataset("someone/gtzan-genres", files_of(base / "gtzan"))
            tests = {}
            for slug, flat in (("genre-quest", False), ("flat-quest", True)):
                tests[slug] = competition(base / slug, flat_train=flat)
                twin.add_competition(slug, files=files_of(base / slug))
            weights = Path(torch.hub.get_dir()) / "checkpoints" / Path(
                torchvision.models.get_model_weights("resnet18").DEFAULT.url).name
            weights.parent.mkdir(parents=True)
            torch.save(torchvision.models.resnet18().state_dict(), weights)
            assert loop.cli(["weights", "--arch", "resnet18", "--user", USER]) == 0
            torch.save(models.Cnn14().state_dict(), base / "Cnn14_mAP=0.431.pth")
            twin.add_dataset(f"{USER}/panns", {"Cnn14_mAP=0.431.pth":
                                               (base / "Cnn14_mAP=0.431.pth").read_bytes()})
            yield twin, base, tests


def newest_version(twin, folder):
    """The version pushed last of the folder's kernel or its relay partner."""
    metadata = [folder / "kernel-metadata.json", folder / "relay" / "kernel-metadata.json"]
    ids = [json.loads(m.read_text())["id"] for m in metadata if m.is_file()]
    return max((twin.kernels[i][-1] for i in ids if i in twin.kernels), key=lambda v: v["pushed"])


def push_and_wait(twin, folder, *flags):
    assert loop.cli(["push", str(folder), *flags]) == 0
    pushed = newest_version(twin, folder)
    pushed["done"].wait(900)
    return pushed


# (recipe, build flags): tiny settings, the inputs as sources
TWIN_RUNS = {
    ("gtzan", "specnet-mel"): ["--dataset", "someone/gtzan-genres", "--size", "0", "--mel", "16",
                               "--segment-seconds", "0.5", "--", "--epochs", "2"],
    ("gtzan", "mlp"): ["--dataset", "someone/gtzan-genres", "--", "--epochs", "2", "--hidden",
                       "16:relu"],
    ("comp", "cnn"): ["--competition", "genre-quest", "--size", "32", "--", "--epochs", "1",
                      "--img-size", "16"],
    ("comp", "transfer-vgg16"): ["--competition", "genre-quest", "--weights-dataset",
                                 f"{USER}/resnet18-weights", "--size", "32", "--", "--epochs", "1",
                                 "--arch", "resnet18", "--img-size", "32"],
    ("comp-flat", "mlp"): ["--competition", "flat-quest", "--", "--epochs", "2", "--hidden",
                           "16:relu"],
    ("comp-flat", "specnet-mel"): ["--competition", "flat-quest", "--size", "0", "--mel", "16",
                                   "--segment-seconds", "0.5", "--", "--epochs", "1"],
    ("comp-flat", "cnn14"): ["--competition", "flat-quest", "--weights-dataset", f"{USER}/panns",
                             "--", "--epochs", "1", "--clip-seconds", "1", "--batch-size", "4"],
}


@pytest.fixture(scope="module")
def kaggle_runs(kaggle_world):
    """Each (layout, recipe) built and pushed to the twin, all sessions at once."""
    twin, base, _ = kaggle_world
    pushed = {}
    for (layout, recipe), flags in TWIN_RUNS.items():
        name = f"{recipe}-{layout}"[:40]
        folder = built(base / "kernels", "--recipe", recipe, "--name", name, "--user", USER,
                       "--allow-cpu", *flags)  # the twin's sessions have no GPU
        assert loop.cli(["push", str(folder)]) == 0
        pushed[layout, recipe] = folder, newest_version(twin, folder)
    for _, version in pushed.values():
        version["done"].wait(900)
    return pushed


@pytest.mark.slow
@pytest.mark.parametrize("layout,recipe", list(TWIN_RUNS))
def test_kernel_on_kaggle(layout, recipe, kaggle_world, kaggle_runs):
    """Run as Kaggle runs it: the notebook top to bottom, no arguments, input/ read-only (its
    sources mounted by Kaggle's rules); the output holds the run and submission.csv, and the
    executed notebook shows the results as a table and pictures."""
    twin, base, tests = kaggle_world
    folder, version = kaggle_runs[layout, recipe]
    output, log = version["output"], log_of(version)
    assert version["status"] == "COMPLETE", log[-3000:]
    name = folder.name
    metrics = json.loads(output[f"runs/{name}/metrics.json"])
    assert metrics["n_test"] >= 1 and metrics["complete"]
    assert f"runs/{name}/checkpoint.pt" not in output and f"runs/{name}/model.pt" in output
    assert {p.split("/")[0] for p in output} <= {"runs", "submission.csv"}
    assert "no earlier run attached: training from the start" in log
    if recipe in ("transfer-vgg16", "cnn14"):
        assert "weights: " in log and metrics["weights"] == "file"
    shown = executed_outputs(version)
    assert "display_data:text/markdown,text/plain" in shown["results"]
    assert shown["results"].count("display_data:image/png,text/plain") == 2  # curves, confusion
    notebook = nbformat.reads(version["executed"], as_version=4)
    table = next(c for c in notebook.cells if c.id == "results").outputs[0]["data"]["text/markdown"]
    assert f"| test clips | {metrics['n_test']} (" in table and "| device | cpu |" in table
    assert "device: cpu: this kernel asked for a GPU" in log or recipe == "mlp"
    if layout == "gtzan":
        assert "jazz.00054.wav" in log  # the corrupt clip: skipped with a warning
        assert "submission.csv" not in output
        assert log.count("no test folder") == 1
        return
    rows = list(csv.reader(output["submission.csv"].decode().splitlines()))
    assert rows[0] == ["track_id", "genre_label"]  # sample_submission's columns
    slug = "genre-quest" if layout == "comp" else "flat-quest"
    assert [r[0] for r in rows[1:]] == tests[slug]  # its ids, its order: every test file
    assert {r[1] for r in rows[1:]} <= set(GENRES)
    assert "00004.wav" in log and "00005.wav" in log  # unreadable: warned, fallback label
    assert f"runs/{name}/prediction.json" in output  # the prediction's record, for compare.py


RELAY_FLAGS = ["--competition", "genre-quest", "--size", "128", "--allow-cpu", "--", "--epochs", "6",
               "--img-size", "128", "--batch-size", "2", "--schedule", "cosine", "--augment",
               "specaugment", "--mixup", "0.2"]


def epochs_in_checkpoint(output, name="relay"):
    import io
    state = torch.load(io.BytesIO(output[f"runs/{name}/checkpoint.pt"]), weights_only=True)
    return len(state["history"])


def history_and_weights(output, name):
    history = without_seconds(csv.DictReader(output[f"runs/{name}/history.csv"].decode().splitlines()))
    import io
    state = torch.load(io.BytesIO(output[f"runs/{name}/model.pt"]), weights_only=True)["state_dict"]
    return history, state


@pytest.mark.slow
def test_a_run_longer_than_a_session_finishes_through_the_relay(kaggle_world, tmp_path):
    """The run of a session killed mid-training (Kaggle's limit: an error, the output kept but
    not attachable) goes on from its rescued output; a session stopped cleanly by the time limit
    shows its results so far marked incomplete, and its partner resumes from it; a second kill
    is passed over (--no-rescue) to the last complete version. The relay ends with the history
    and weights of a session never stopped, and every log line arrived as it was printed."""
    twin, base, _ = kaggle_world
    kernels = tmp_path / "kernels"
    whole = push_and_wait(twin, built(kernels, "--name", "whole", "--kind", "cnn", "--user", USER,
                                      "--time-limit", "1h", *RELAY_FLAGS))
    assert whole["status"] == "COMPLETE", log_of(whole)[-2000:]

    def relay(limit, *push_flags):
        folder = built(kernels, "--name", "relay", "--kind", "cnn", "--user", USER,
                       "--time-limit", limit, *RELAY_FLAGS)
        return push_and_wait(twin, folder, *push_flags)
    twin.kill_at = ["epoch   3"]
    first = relay("1h")  # A v1: killed after epoch 3's line reached the log
    assert first["status"] == "CANCEL_ACKNOWLEDGED" and "runs/relay/checkpoint.pt" in first["output"]
    killed_at = epochs_in_checkpoint(first["output"])  # the kill may land between the
    assert 3 <= killed_at < 6                            # checkpoint and its .json: .pt is the truth
    second = relay("1s")  # A v2: the rescued run, stopped by its time limit
    log = log_of(second)
    assert second["status"] == "COMPLETE" and "music-genre-relay-rescue/runs/relay" in log
    assert f"after epoch {killed_at}" in log and "time limit: stopping before epoch" in log
    stopped_at = epochs_in_checkpoint(second["output"])  # 1 s: an epoch may start on a fast machine
    assert json.loads(second["output"]["runs/relay/checkpoint.json"])["epochs_done"] == stopped_at
    table = next(c for c in nbformat.reads(second["executed"], as_version=4).cells
                 if c.id == "results").outputs[0]["data"]["text/markdown"]
    assert table.startswith("**Incomplete: training stopped at the time limit")
    assert killed_at <= stopped_at <= killed_at + 1 < 6  # the time limit: at most one epoch
    twin.kill_at = [f"epoch {stopped_at + 1:3d}"]
    third = relay("1h")  # B v1: attaches A v2, killed again
    assert third["request"]["slug"].endswith("-relay") and third["status"] == "CANCEL_ACKNOWLEDGED"
    assert "music-genre-relay/runs/relay" in log_of(third)
    last = relay("1h", "--no-rescue")  # B v2: from A v2 again, to the end
    assert last["status"] == "COMPLETE" and f"(epoch {stopped_at} of 6)" in log_of(last)
    assert loop.cli(["push", str(kernels / "relay")]) == 0  # finished: nothing pushed
    assert history_and_weights(last["output"], "relay")[0] == \
        history_and_weights(whole["output"], "whole")[0]
    mine, reference = (history_and_weights(v["output"], n)[1] for v, n in
                       ((last, "relay"), (whole, "whole")))
    assert all(torch.equal(mine[k], reference[k]) for k in mine)
    epochs = [e["time"] for e in json.loads(whole["log"]) if e["data"].startswith("epoch")]
    assert epochs == sorted(epochs) and epochs[-1] - epochs[0] > 0.5  # line by line, not at once


@pytest.mark.slow
def test_two_processes_train_under_torchrun_in_a_session(kaggle_world, tmp_path):
    twin, _, _ = kaggle_world
    folder = built(tmp_path, "--name", "two", "--kind", "cnn", "--user", USER, "--competition",
                   "genre-quest", "--size", "32", "--processes", "2", "--allow-cpu", "--", "--epochs", "2",
                   "--img-size", "16")
    version = push_and_wait(twin, folder)
    log = log_of(version)
    assert version["status"] == "COMPLETE", log[-3000:]
    assert "training in 2 processes" in log and "torch.distributed.run" in log
    config = json.loads(version["output"]["runs/two/config.json"])
    assert config["world_size"] == 2 and "submission.csv" in version["output"]


@pytest.mark.slow
def test_a_code_competition_reruns_the_predict_kernel_on_the_hidden_test_set(kaggle_world, tmp_path,
                                                                           capsys):
    """The training kernel finishes; the predict kernel attaches it and, its commit run seeing no
    test audio, completes with a placeholder submission.csv (the sample submission); submitted,
    Kaggle's rerun on the hidden test set trains nothing, and `submit --wait` prints the score.
    Submitting the training kernel itself is refused unless --retrain-in-rerun."""
    twin, base, _ = kaggle_world
    truth = {Path(name).stem: genre for name, genre in audio_set(base / "hidden", 1, 90, flat=True)}
    visible = {p: data for p, data in files_of(base / "genre-quest").items()
               if not p.startswith("test/")}  # the commit run sees no test
    visible["sample_submission.csv"] = ("id,genre\n" + "".join(f"{i},blues\n" for i in truth)).encode()
    twin.add_competition("hidden-quest", code=True, files=visible,
                         hidden=files_of(base / "hidden"), labels=truth)
    kernels = tmp_path / "kernels"
    train = push_and_wait(twin, built(kernels, "--name", "coder", "--kind", "cnn", "--user", USER,
                                      "--competition", "hidden-quest", "--code-competition",
                                      "--size", "32", "--allow-cpu", "--", "--epochs", "3", "--img-size", "16"))
    assert train["status"] == "COMPLETE", log_of(train)[-3000:]
    infer_folder = built(kernels, "--name", "coder-infer", "--kind", "predict", "--from", "coder",
                         "--allow-cpu")
    infer = push_and_wait(twin, infer_folder)
    assert infer["status"] == "COMPLETE", log_of(infer)[-3000:]
    assert infer["output"]["submission.csv"] == visible["sample_submission.csv"]  # placeholder
    assert "commit run, which does not see the hidden test" in log_of(infer)
    assert "epoch" not in log_of(infer)
    assert loop.cli(["submit", str(infer_folder), "--competition", "hidden-quest", "--wait",
                      "--interval", "0.5", "--runs", str(tmp_path / "runs")]) == 0
    submission = twin.submissions[-1]
    rerun = log_of(submission["rerun"])
    assert "epoch" not in rerun and submission["status"] == "COMPLETE"
    assert f"public score {submission['publicScore']}" in capsys.readouterr().out
    # the training kernel itself, submitted, would train again: its own output is not attached
    command = ["submit", str(kernels / "coder"), "--competition", "hidden-quest", "--wait",
               "--interval", "0.5", "--runs", str(tmp_path / "runs2")]
    assert loop.cli(command) == 2
    assert "--kind predict --from coder" in capsys.readouterr().err
    assert loop.cli(command + ["--retrain-in-rerun"]) == 0
    assert "no finished run attached, so it trains again" in log_of(twin.submissions[-1]["rerun"])
