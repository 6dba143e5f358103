"""torchrun with 2 CPU processes (gloo) gives the results of 1 process with the same global batch."""
import csv
import json
import os
import subprocess
import sys

import pytest

import predict
from conftest import ROOT, make_images

TOLERANCE = 1e-4  # float summation order differs between 1 and 2 processes; nothing else does


def launch(nproc, script, args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / script), *args]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def history(run):
    with open(run / "history.csv") as f:
        return [{k: float(v) for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    data = make_images(tmp_path / "img", n_per_class=8, size=32)
    common_args = ["--data", str(data), "--arch", "resnet18", "--weights", "none", "--img-size", "32",
                   "--head-dropout", "0", "--epochs", "4", "--batch-size", "8", "--lr", "3e-3",
                   "--out", str(tmp_path / "runs")]
    one = launch(1, "train_transfer.py", common_args + ["--name", "one"], tmp_path)
    two = launch(2, "train_transfer.py", common_args + ["--name", "two"], tmp_path)
    h1, h2 = history(tmp_path / "runs" / "one"), history(tmp_path / "runs" / "two")
    assert ", 1 processes" in one.stdout  # one torchrun process also joins a process group (DDP)
    assert len(h1) == len(h2) and len(h1) >= 2
    for a, b in zip(h1, h2):
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=TOLERANCE), (key, a, b)
    m1, m2 = (json.loads((tmp_path / "runs" / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert m1["test_balanced_accuracy"] == m2["test_balanced_accuracy"]
    assert m1["confusion"] == m2["confusion"]
    config = json.loads((tmp_path / "runs" / "two" / "config.json").read_text())
    assert config["world_size"] == 2 and config["args"]["batch_size"] == 8
    # rank 0 alone printed and wrote: one "test:" line, one run folder
    assert two.stdout.count("test: balanced accuracy") == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")) == ["one", "two"]
    model, ckpt = predict.load_model(tmp_path / "runs" / "two" / "model.pt")  # no DDP "module." prefix
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
