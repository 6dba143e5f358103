"""What kernels/build.py and kernels/kernel_main.py add for Kaggle's limits (issue 35): a GPU
recipe in a session with none stops first (unless --allow-cpu), a predict kernel's commit run in
a code competition writes a placeholder, a quick test, Kaggle's 1 MB source limit, and one source
for session limits and conversion defaults."""
import json
from pathlib import Path

import pytest
import torch

import common
import runs
from test_kernels import GENRES, audio_set, build, built, cells, kernel_main


def test_conversion_defaults_and_session_limits_have_one_source(tmp_path, monkeypatch):
    """audio.CONVERSION_DEFAULTS gives data_conversion.py's, the recipe's and the kernel's
    conversion defaults; kernel_main's session limits give build's default time limits and
    kaggle_loop's check: a change in one place reaches all of them."""
    import data_conversion
    conversion = {"size": 48, "mel": 8, "segment_seconds": 1.5}
    monkeypatch.setitem(kernel_main.IMAGE_CONVERSION, "size", 48)  # what the kernel side reads
    monkeypatch.setitem(kernel_main.IMAGE_CONVERSION, "mel", 8)
    monkeypatch.setitem(kernel_main.IMAGE_CONVERSION, "segment_seconds", 1.5)
    recipe = json.loads((built(tmp_path, "--name", "c", "--kind", "cnn") / "recipe.json")
                        .read_text())
    assert recipe["conversion"] == conversion
    parsed = kernel_main.build_parser({**recipe, "conversion": {}}).parse_args([])
    assert (parsed.size, parsed.mel, parsed.segment_seconds) == (48, 8, 1.5)
    defaults = vars(data_conversion.build_parser().parse_args(["src", "out"]))
    assert {k: defaults[k] for k in ("size", "mel", "segment_seconds", "cmap")} == {
        k: data_conversion.audio.CONVERSION_DEFAULTS[k] for k in ("size", "mel", "segment_seconds",
                                                                  "cmap")}
    monkeypatch.setattr(kernel_main, "SESSION_HOURS", 6)
    monkeypatch.setattr(kernel_main, "CODE_COMPETITION_HOURS", 4)
    assert json.loads((built(tmp_path, "--recipe", "mlp", "--name", "short") / "recipe.json")
                      .read_text())["time_limit"] == "5h30m"
    assert not kernel_main.fits_session(common.duration("3h55m"), code_competition=True)
    assert kernel_main.fits_session(common.duration("3h50m"), code_competition=True)

def test_a_notebook_of_1_mb_or_more_is_refused_at_build(tmp_path, monkeypatch, capsys):
    """Kaggle refuses a kernel source of 1 MB or more: one line at build, nothing written."""
    size = len((built(tmp_path / "a", "--recipe", "cnn") / "kernel.ipynb").read_bytes())
    monkeypatch.setattr(build, "SOURCE_LIMIT", size)  # this notebook, at the limit
    assert build.cli(["--recipe", "cnn", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Kaggle refuses a kernel source of" in err
    assert not (tmp_path / "b" / "cnn").exists()
    monkeypatch.setattr(build, "SOURCE_LIMIT", size + 1)
    assert build.cli(["--recipe", "cnn", "--out", str(tmp_path / "b")]) == 0

@pytest.mark.parametrize("case", ["no gpu", "no gpu, --allow-cpu", "gpu", "mlp", "local"])
def test_a_gpu_kernel_without_a_gpu_stops_in_its_first_lines(case, tmp_path, monkeypatch,
                                                            capsys):
    """In a Kaggle session (KAGGLE_KERNEL_RUN_TYPE set) a recipe whose metadata asks for a GPU
    and finds none says so first and stops before any work, unless built with --allow-cpu; the
    first line names the device either way. A local run picks its own device."""
    recipe = json.loads(built(tmp_path / "k", "--recipe", "mlp" if case == "mlp" else "cnn",
                              *(["--allow-cpu"] if "allow" in case else []))
                        .joinpath("recipe.json").read_text())
    assert recipe["allow_cpu"] == ("allow" in case)
    capsys.readouterr()  # build's line
    monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path / "kaggle"))  # no input/: fails after the check
    monkeypatch.delenv("KERNEL_ARGS", raising=False)
    if case != "local":
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    else:
        monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: case == "gpu")
    if case == "gpu":
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla T4")
        monkeypatch.setattr(build.kernel_main.training, "cuda_unsupported_reason",
                            lambda index=0: None)
    assert kernel_main.main([], recipe) == 1
    out, err = capsys.readouterr()
    first = out.splitlines()[0] if out else ""
    if case == "no gpu":
        assert out == "" and err.count("\n") == 1 and "asked for a GPU and the session has none" \
            in err and "--allow-cpu" in err
        return
    assert "--input" in err  # went on, to the next thing missing
    assert first == {"no gpu, --allow-cpu": "device: cpu: this kernel asked for a GPU and the "
                     "session has none; training on the CPU, as its recipe allows (--allow-cpu)",
                     "gpu": "device: 2 x cuda (Tesla T4)",
                     "mlp": "device: cpu (this kernel asks for no GPU)", "local": ""}[case]

@pytest.mark.parametrize("rerun", [False, True])
def test_a_predict_kernel_without_test_audio_writes_a_placeholder_in_its_commit_run(
        rerun, tmp_path, monkeypatch, capsys):
    """A code competition's commit run sees no test audio: the predict kernel completes with the
    sample submission as submission.csv and says so; in Kaggle's rerun that is an error."""
    built(tmp_path / "k", "--recipe", "cnn", "--competition", "comp", "--code-competition")
    recipe = json.loads(built(tmp_path / "k", "--name", "cnn-infer", "--kind", "predict",
                              "--from", "cnn").joinpath("recipe.json").read_text())
    kaggle = tmp_path / "kaggle"
    sample = kaggle / "input" / "competitions" / "comp" / "sample_submission.csv"
    sample.parent.mkdir(parents=True)
    sample.write_text("track_id,genre\nh1,blues\nh2,blues\n")
    monkeypatch.setenv("KAGGLE_ROOT", str(kaggle))
    monkeypatch.delenv("KERNEL_ARGS", raising=False)
    monkeypatch.setenv(kernel_main.RERUN, "True") if rerun else monkeypatch.delenv(
        kernel_main.RERUN, raising=False)
    finished = runs.RunProgress(True, 1, 1, 3, 3)  # a finished run attached, its model there
    monkeypatch.setattr(kernel_main, "earlier_runs", lambda *a: [(tmp_path / "run", finished)])
    monkeypatch.setattr(kernel_main.runs, "model_in", lambda folder: Path(folder) / "model.pt")
    capsys.readouterr()
    code = kernel_main.main([], recipe)
    out, err = capsys.readouterr()
    if rerun:
        assert code == 1 and err.count("\n") == 1 and "in Kaggle's rerun" in err
        assert not (kaggle / "working" / "submission.csv").exists()
        return
    assert code == 0 and (kaggle / "working" / "submission.csv").read_text() == sample.read_text()
    assert "commit run, which does not see the hidden test" in out and "placeholder" in out
    assert "(2 rows)" in out

def test_a_quick_test_trains_one_epoch_on_a_few_clips_per_genre_apart_from_the_run(
        tmp_path, monkeypatch, capsys):
    """RECIPE["quick_test"] = True in the recipe cell: one epoch on QUICK_CLIPS clips of each
    genre, into runs/NAME-quick/ (the relay never resumes it), and the notebook says so."""
    recipe = json.loads(built(tmp_path / "k", "--name", "quick", "--kind", "cnn", "--size", "32",
                              "--", "--epochs", "30", "--img-size", "16")
                        .joinpath("recipe.json").read_text())
    assert recipe["quick_test"] is False and '"quick_test": True' in cells(tmp_path / "k" /
                                                                          "quick")[0].source
    monkeypatch.setattr(kernel_main, "QUICK_CLIPS", 4)
    audio_set(tmp_path / "audio", 6, 0, seconds=1.0)
    monkeypatch.delenv("KERNEL_ARGS", raising=False)
    working = tmp_path / "working"
    assert kernel_main.main(["--train", str(tmp_path / "audio"), "--temp", str(tmp_path / "temp"),
                             "--working", str(working), "--input", str(tmp_path)],
                            {**recipe, "quick_test": True}) == 0
    out = capsys.readouterr().out
    assert "quick test: 1 epoch on 4 clips per genre into runs/quick-quick/" in out
    metrics = json.loads((working / "runs" / "quick-quick" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 4 * len(GENRES)
    assert not (working / "runs" / "quick").exists()
    assert "quick test" in kernel_main.next_steps({**recipe, "quick_test": True},
                                                  working / "runs" / "quick-quick")


def test_a_finished_run_with_other_trainer_flags_is_trained_anew(tmp_path, monkeypatch, capsys):
    """kernel_main ... -- --epochs 2 over a run finished with --epochs 1: new work, said in one
    line, never 'finished before' with the old model submitted; the same flags again: nothing."""
    recipe = json.loads(built(tmp_path / "k", "--name", "again", "--kind", "cnn", "--size", "16",
                              "--allow-cpu", "--", "--epochs", "1", "--img-size", "16")
                        .joinpath("recipe.json").read_text())
    audio_set(tmp_path / "audio", 3, 0, seconds=1.0)
    monkeypatch.delenv("KERNEL_ARGS", raising=False)
    working = tmp_path / "working"
    argv = ["--train", str(tmp_path / "audio"), "--temp", str(tmp_path / "temp"), "--working",
            str(working), "--input", str(tmp_path)]
    assert kernel_main.main(argv, recipe) == 0
    capsys.readouterr()
    assert kernel_main.main([*argv, "--", "--epochs", "2"], recipe) == 0
    out = capsys.readouterr().out
    assert "was finished with other flags; training anew" in out and "finished before" not in out
    assert json.loads((working / "runs" / "again" / "metrics.json").read_text())["epochs_run"] == 2
    assert kernel_main.main([*argv, "--", "--epochs", "2"], recipe) == 0
    assert "finished before; nothing to train" in capsys.readouterr().out
