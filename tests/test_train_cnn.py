import contextlib
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

import common
import data
import predict
import runs
import train_cnn
import training
from conftest import ctrl_c_after, make_images, on_line, without_seconds


def fit(model, train, val, **kw):
    """training.fit with small defaults (the study's plateau schedule, early stopping after 5
    epochs) and no log."""
    base = dict(criterion=torch.nn.CrossEntropyLoss(), lr=1e-3, epochs=20, batch_size=8, seed=0,
                early_stopping=training.EarlyStopping(5), device=torch.device("cpu"),
                log=lambda *_: None)
    return training.fit(model, train, val, **{**base, **kw})


def tiny_sets(n=24, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, d, generator=g) + 2 * torch.nn.functional.one_hot(y, d).float()
    ds = data.ArrayDataset(x, y.numpy(), [f"c{i}" for i in range(n)])
    return ds.subset(range(0, n, 2)), ds.subset(range(1, n, 2))


def scripted_sets(n_per_class=4, classes=3):
    """Items whose features say their class (one-hot) and their rank within it (last column)."""
    y = torch.arange(n_per_class * classes) % classes
    rank = torch.arange(n_per_class * classes) // classes
    x = torch.cat([torch.nn.functional.one_hot(y, classes).float(), rank[:, None].float()], 1)
    ds = data.ArrayDataset(x, y.numpy(), [f"c{i}" for i in range(len(y))])
    return ds, ds.subset(range(len(y)))


class ScriptedNet(torch.nn.Module):
    """A linear model that learns as any other while training, but whose validation answers at
    epoch k are right for the first right[k - 1] items of each class (balanced accuracy
    right[k - 1] / items per class). It counts epochs by fit putting it into training mode, and
    keeps its weights as validation saw them."""

    def __init__(self, right, classes=3):
        super().__init__()
        self.linear = torch.nn.Linear(classes + 1, classes)
        self.right, self.epoch, self.seen = list(right), 0, {}  # epoch -> weights
        self.eval()  # the first switch to training mode is epoch 1

    def train(self, mode=True):
        self.epoch += mode and not self.training
        return super().train(mode)

    def forward(self, x):
        if self.training:
            return self.linear(x)
        self.seen[self.epoch] = self.linear.weight.detach().clone()
        truth = x[:, :-1].argmax(1)
        answer = torch.where(x[:, -1] < self.right[self.epoch - 1], truth, (truth + 1) % 3)
        return torch.nn.functional.one_hot(answer, 3).float() * 10


class Clock:
    """A clock each reading of which is `step` seconds after the one before (fit reads it when
    an epoch starts and when it ends)."""

    def __init__(self, start=1000.0, step=10.0):
        self.now, self.step = start, step

    def __call__(self):
        self.now += self.step
        return self.now


def test_progress_in_a_log_is_a_line_with_the_count_and_the_time_to_go(monkeypatch, capsys):
    monkeypatch.setenv("SUITE_PROGRESS_SECONDS", "0")  # a line after every item
    assert list(common.progress(range(3), "train", unit="batch")) == [0, 1, 2]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"train: {k}/3 batches" for k in (1, 2, 3)]
    assert lines[0].endswith("to go") and "0s" in lines[0]


def test_plateau_lowers_lr_after_3_flat_epochs_and_stops_after_5():
    train, val = tiny_sets()
    model = torch.nn.Linear(6, 3)
    # lr 1e-7: the weights barely move, and the drop is seen (ReduceLROnPlateau ignores a drop
    # smaller than its eps, 1e-8: from 1e-12 the lr never fell, which approx's default absolute
    # tolerance of 1e-12 hid)
    result = fit(model, train, val, lr=1e-7)
    assert result.best_epoch == 1 and len(result.history) == 6  # then 5 without improvement
    assert [h["lr"] for h in result.history] == pytest.approx([1e-7] * 5 + [1e-8], abs=0)


def test_min_epochs_delays_early_stopping():
    train, val = tiny_sets()
    result = fit(torch.nn.Linear(6, 3), train, val, lr=1e-12,
                 early_stopping=training.EarlyStopping(5, min_epochs=9))
    assert result.best_epoch == 1 and len(result.history) == 9


def test_early_stopping_restores_best_weights():
    train, val = scripted_sets()
    model = ScriptedNet(right=[1, 2, 1, 1, 1, 1, 1, 4])  # best at epoch 2, then 5 worse
    result = fit(model, train, val, lr=0.1)
    assert result.best_epoch == 2 and len(result.history) == 7
    assert [h["val_balanced_acc"] for h in result.history] == [0.25, 0.5] + [0.25] * 5
    assert not torch.equal(model.seen[2], model.seen[7])  # training moved the weights
    assert torch.equal(model.linear.weight, model.seen[2])


def test_cosine_trains_every_epoch_and_keeps_the_last():
    """--schedule cosine: lr from lr to 0 over the epochs, no early stopping however the
    validation goes, and the model ends with the last epoch's weights, not the best one's."""
    train, val = scripted_sets()
    model = ScriptedNet(right=[1, 4, 0, 0, 0, 0, 0])
    result = fit(model, train, val, lr=0.1, epochs=7, schedule="cosine", early_stopping=None)
    assert len(result.history) == 7 and result.best_epoch == 7
    expected = [0.05 * (1 + np.cos(np.pi * e / 7)) for e in range(7)]
    assert [h["lr"] for h in result.history] == pytest.approx(expected)
    assert torch.equal(model.linear.weight, model.seen[7])
    assert not torch.equal(model.linear.weight, model.seen[2])


def test_cosine_run_resumes_from_its_last_epoch(tmp_path):
    """A cosine run checkpoints every epoch: stopped after epoch 4, it goes on from epoch 5 and
    ends as the run that was never stopped (history, lr and weights)."""
    train, val = tiny_sets()

    def run(checkpoint, log=lambda *_: None):
        training.seed_everything(0)
        model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(6, 3))
        result = fit(model, train, val, epochs=8, schedule="cosine", early_stopping=None,
                     mixup=0.2, lr=0.05, checkpoint=checkpoint, log=log)
        return result, model

    whole, whole_model = run(None)

    def stop_after_4(line):
        if line.startswith("epoch   4"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "checkpoint.pt", stop_after_4)
    logged = []
    resumed, resumed_model = run(tmp_path / "checkpoint.pt", logged.append)
    assert "after epoch 4" in logged[0]
    assert without_seconds(resumed.history) == without_seconds(whole.history)
    assert all(torch.equal(a, b) for a, b in zip(whole_model.state_dict().values(),
                                                 resumed_model.state_dict().values()))


def test_specnet_has_its_own_defaults_and_flags_win(tiny_images):
    def parsed(*flags):
        args = train_cnn.parse_args(["--data", str(tiny_images), *flags])
        return args.schedule, args.epochs, args.mixup
    assert parsed() == ("plateau", 20, 0.0)  # the study's ConvolNeuNet
    assert parsed("--model", "specnet") == ("cosine", 30, 0.2)
    assert parsed("--model", "specnet", "--epochs", "5", "--mixup", "0") == ("cosine", 5, 0.0)
    assert parsed("--model", "specnet", "--schedule", "plateau") == ("plateau", 30, 0.2)


def test_same_seed_same_history(tiny_images, tmp_path):
    histories = []
    for name in ("a", "b"):
        assert train_cnn.cli(["--data", str(tiny_images), "--img-size", "16", "--epochs", "3",
                               "--out", str(tmp_path), "--name", name]) == 0
        with open(tmp_path / name / "history.csv") as f:
            histories.append(without_seconds(csv.DictReader(f)))
    assert histories[0] == histories[1] and len(histories[0]) == 3


def test_run_folder_complete_and_metrics_match_sklearn(tiny_images, tmp_path):
    assert train_cnn.cli(["--data", str(tiny_images), "--img-size", "16", "--epochs", "4",
                           "--lr", "3e-3", "--out", str(tmp_path), "--name", "r"]) == 0
    run = tmp_path / "r"
    for f in ("config.json", "history.csv", "metrics.json", "curves.png", "confusion.png",
              "report.txt", "model.pt"):
        assert (run / f).stat().st_size > 0, f
    m = json.loads((run / "metrics.json").read_text())
    assert m["device"] == training.device_label(training.pick_device())  # what it ran on
    with open(run / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    true, pred = [r["true"] for r in rows], [r["predicted"] for r in rows]
    assert m["test_accuracy"] == accuracy_score(true, pred)
    assert m["test_balanced_accuracy"] == balanced_accuracy_score(true, pred)
    assert m["n_test"] == len(rows) == 3 and m["n_train"] + m["n_val"] + m["n_test"] == 18
    assert np.array(m["confusion"]).sum() == 3 and m["kaggle_score"] is None
    assert 1 <= m["best_epoch"] <= m["epochs_run"] <= 4 and m["predict_seconds_per_clip"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["img_size"] == 16 and config["split_hash"] == m["split_hash"]
    assert "torch" in config["versions"]


def test_clip_vote_averages_segment_logits():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 1, 1])
    clips, clip_logits, clip_labels = training.clip_vote(logits, labels, ["x", "x", "x", "y", "y"])
    # x: mean (0.667, 0.833) -> class 1 although 1 of 3 segments says 0; y: (0.5, 1.5) -> 1
    assert clips == ["x", "y"] and clip_logits.argmax(1).tolist() == [1, 1]
    assert np.allclose(clip_logits[0], [2 / 3, 2.5 / 3]) and clip_labels.tolist() == [0, 1]
    s = training.clip_scores(logits, labels, ["x", "x", "x", "y", "y"])
    assert s["accuracy"] == 0.5 and s["balanced_accuracy"] == 0.5


def test_scores_balance_the_classes_and_confusion_rows_are_the_truth():
    """Three clips of class 0 and one of class 1, all predicted 0: accuracy 0.75, balanced
    accuracy 0.5 (the mean of the recalls 1 and 0), confusion[true][predicted]."""
    s = training.classification_scores(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]), 3)
    assert s["accuracy"] == 0.75 and s["balanced_accuracy"] == 0.5
    assert s["confusion"] == [[3, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_segments_scored_per_clip(tmp_path):
    data = make_images(tmp_path / "seg", n_per_class=5, segments=3)
    assert train_cnn.cli(["--data", str(data), "--img-size", "16", "--epochs", "2",
                           "--out", str(tmp_path), "--name", "s"]) == 0
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["n_test"] == 3 and m["n_test_segments"] == 9
    assert "segment_test_balanced_accuracy" in m


def test_reloaded_model_reproduces_the_run_predictions(tiny_images, tmp_path):
    """model.pt, rebuilt from its spec, gives the test predictions the run recorded."""
    assert train_cnn.cli(["--data", str(tiny_images), "--img-size", "16", "--epochs", "3",
                           "--lr", "3e-3", "--out", str(tmp_path), "--name", "m"]) == 0
    model, ckpt = predict.load_model(tmp_path / "m" / "model.pt")
    assert ckpt["spec"]["kind"] == "cnn" and ckpt["classes"] == ["a", "b", "c"]
    with open(tmp_path / "m" / "predictions.csv") as f:
        recorded = list(csv.DictReader(f))
    for row in recorded:
        path = next(tiny_images.glob(f"*/{row['clip_id']}.png"))
        x = data.decode_image(path, 16)[None]
        with torch.no_grad():
            probabilities = torch.softmax(model(x), 1)[0]
        assert ckpt["classes"][int(probabilities.argmax())] == row["predicted"]
        for c, p in zip(ckpt["classes"], probabilities.tolist()):
            assert float(row[f"p_{c}"]) == pytest.approx(p, abs=1e-5)


def test_folds_write_each_fold_and_summary(tiny_images, tmp_path):
    assert train_cnn.cli(["--data", str(tiny_images), "--img-size", "16", "--epochs", "1",
                           "--folds", "3", "--out", str(tmp_path), "--name", "k"]) == 0
    summary = json.loads((tmp_path / "k" / "summary.json").read_text())
    assert summary["folds"] == 3 and len(summary["per_fold_balanced_accuracy"]) == 3
    assert summary["balanced_accuracy_mean"] == pytest.approx(np.mean(summary["per_fold_balanced_accuracy"]))
    tests = [json.loads((tmp_path / "k" / f"fold{i}" / "metrics.json").read_text()) for i in (1, 2, 3)]
    assert sum(t["n_test"] for t in tests) == 18


def test_cnn_learns_separable_images(tmp_path):
    data = make_images(tmp_path / "sep", n_per_class=10)
    assert train_cnn.cli(["--data", str(data), "--img-size", "16", "--epochs", "15",
                           "--lr", "3e-3", "--out", str(tmp_path), "--name", "l"]) == 0
    m = json.loads((tmp_path / "l" / "metrics.json").read_text())
    assert m["test_balanced_accuracy"] >= 0.66


@pytest.mark.parametrize("argv,message", [
    (["--data", "/nonexistent"], "no such folder"),
    (["--img-size", "20"], "multiple of 8"),
    (["--device", "cuda:0"], "CUDA is not available"),
])
def test_bad_input(argv, message, tiny_images, tmp_path, capsys):
    args = ["--data", str(tiny_images), "--out", str(tmp_path), "--epochs", "1", "--img-size", "16"]
    if torch.cuda.is_available() and "cuda:0" in argv:
        pytest.skip("has CUDA")
    assert train_cnn.cli(args + argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mixup_mixes_pairs_and_their_losses():
    """The model sees w*x + (1-w)*x[partner], and the loss is w*loss(y) + (1-w)*loss(y[partner])
    with the same w and partner."""
    x, y = torch.arange(24.0).view(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mixed, partner_y, weight = training.mixup_pairs(x, y, 0.4, np.random.default_rng(1))
    partner = [int((x[:, 0] - (mixed[i, 0] - weight * x[i, 0]) / (1 - weight)).abs().argmin())
               for i in range(8)]
    assert 0 < weight < 1 and sorted(partner) == list(range(8)) and partner != list(range(8))
    assert torch.allclose(mixed, weight * x + (1 - weight) * x[partner])
    assert torch.equal(partner_y, y[partner])

    train, _ = scripted_sets()  # features: the class one-hot, then the rank
    model = torch.nn.Linear(4, 3)  # it reads a mix as its larger share's class
    with torch.no_grad():
        model.weight.copy_(torch.cat([torch.eye(3), torch.zeros(3, 1)], 1))
        model.bias.zero_()
    loader = training.make_loader(train, 4, False, 0, 0, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no step: the loss is what is seen
    autocast, scaler = training.amp_tools(torch.device("cpu"))
    out = training.train_epoch(model, loader, torch.nn.CrossEntropyLoss(), optimizer, scaler,
                               autocast, torch.device("cpu"), mixup=0.4,
                               rng=np.random.default_rng(0))
    replay = np.random.default_rng(0)  # the same draws, batch by batch, in the loader's order
    seen = [(m, y, py, w) for x, y, _ in loader for m, py, w in [training.mixup_pairs(x, y, 0.4, replay)]]
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        expected = sum((w * ce(model(m), y) + (1 - w) * ce(model(m), py)).item() * len(y)
                       for m, y, py, w in seen)
        # accuracy: the label of the larger share (a w of 0.1 makes it the partner's)
        right = sum((model(m).argmax(1) == (y if w >= 0.5 else py)).sum().item()
                    for m, y, py, w in seen)
    assert len(seen) == 3 and out["loss"] == pytest.approx(expected / len(train), rel=1e-6)
    assert {w >= 0.5 for *_, w in seen} == {True, False}  # seed 0 draws a weight each side
    assert out["acc"] == right / len(train)


def test_specaugment_masks_bands_and_spans_then_shifts_in_time():
    """On a batch, each image: whole frequency bands (rows) and time spans (columns) set to level
    0, at most 2 of 15 % each, then a circular shift in time; the input is left as it was.
    Column t of the input holds t + 1 (never 0), so the shift can be read off any unmasked
    pixel."""
    height, width, n = 40, 60, 8
    images = (torch.arange(width) + 1).to(torch.uint8).repeat(n, 1, height, 1)
    before = images.clone()
    augment = data.SpecAugment()
    out = augment(images, data.item_uniforms(0, 1, torch.arange(n), augment.draws))
    masked_rows, masked_columns, shifts = [], [], []
    for image in out:
        zero = image[0] == 0
        rows, columns = zero.all(1), zero.all(0)
        assert torch.equal(zero, rows[:, None] | columns[None, :])  # whole bands and spans only
        assert rows.sum() <= 2 * 6 and columns.sum() <= 2 * 9
        kept = (~zero).nonzero()
        shift = {(t - int(image[0, f, t]) + 1) % width for f, t in kept.tolist()}
        assert len(shift) == 1  # one circular shift of the masked image
        masked_rows.append(int(rows.sum()))
        masked_columns.append(int(columns.sum()))
        shifts.append(shift.pop())
    assert torch.equal(images, before)
    assert sum(n > 0 for n in masked_rows) >= 5, masked_rows
    assert sum(n > 0 for n in masked_columns) >= 5, masked_columns
    assert len(set(shifts)) >= 7, shifts


def test_an_items_draws_are_its_own_whatever_its_batch():
    """item_uniforms is a function of (seed, epoch, item): the same numbers for an item alone, in
    another batch or order; others for another epoch, seed or item; spread over [0, 1)."""
    items = torch.arange(1000)
    u = data.item_uniforms(3, 7, items, 5)
    assert u.shape == (1000, 5) and 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.std()) - 12 ** -0.5) < 0.02
    shuffled = torch.tensor([999, 4, 500])
    assert torch.equal(data.item_uniforms(3, 7, shuffled, 5), u[shuffled])
    assert not torch.equal(data.item_uniforms(3, 8, items, 5), u)
    assert not torch.equal(data.item_uniforms(4, 7, items, 5), u)
    assert len({tuple(row) for row in u.tolist()}) == 1000


class BlowsUp(torch.nn.Module):
    """Linear, with infinite outputs (so infinite gradients) for items whose last feature is set."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x) * torch.where(x[:, -1:] > 0, float("inf"), 1.0)


def test_steps_gradscaler_skips_are_counted_per_epoch():
    """A batch with infinite gradients is a step GradScaler skips (CUDA's AMP, here on the CPU's
    scaler): counted, and the other batches train."""
    x = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 0]])
    loader = training.Batches(data.ArrayDataset(x, np.array([0, 1, 0, 1]), list("abcd")), 1,
                              True, 0, torch.device("cpu"))
    model = BlowsUp()
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    scaler = torch.amp.GradScaler("cpu")
    for epoch in (1, 2):
        result = training.train_epoch(model, loader, torch.nn.CrossEntropyLoss(), optimizer, scaler,
                                      contextlib.nullcontext, torch.device("cpu"), epoch=epoch)
        assert result["skipped"] == 1 and training.optimizer_steps(optimizer) == 3 * epoch


def test_the_parts_of_a_set_share_one_copy_on_the_device():
    """Train, validation and test batches gather from one copy of the inputs on the device
    (the meta device copies as a GPU would, without memory), and give each part's own items."""
    ds = data.ArrayDataset(torch.arange(12.0)[:, None], np.arange(12) % 3,
                             [f"c{i}" for i in range(12)])
    train, val, _ = data.split_parts(ds, {"train": range(8), "val": [8, 9], "test": [10, 11]})
    meta = torch.device("meta")
    assert training.Batches(train, 4, True, 0, meta).x is training.Batches(val, 4, False, 0, meta).x
    batches = training.Batches(val, 4, False, 0, torch.device("cpu"))
    assert [x.flatten().tolist() for x, _, _ in batches] == [[8.0, 9.0]]


def test_rotate_turns_the_image_by_the_drawn_angle_within_15_degrees():
    """The study's RandomRotation(15): a horizontal line through the centre comes out turned
    counter-clockwise by its angle, 30 * u - 15 degrees for its uniform u."""
    size = 65
    image = torch.zeros(1, 1, size, size, dtype=torch.uint8)
    image[0, 0, size // 2, :] = 255
    for u in (0.76, 0.61, 0.003, 0.83):
        out = data.Rotate()(image, torch.tensor([[u]]))
        rows, columns = (out[0, 0] > 0).nonzero(as_tuple=True)
        slope = np.polyfit(columns.numpy() - size // 2, size // 2 - rows.numpy(), 1)[0]
        assert np.degrees(np.arctan(slope)) == pytest.approx(30 * u - 15, abs=1.0), u


def test_lazy_loading_above_memory_budget_gives_same_run(tiny_images, tmp_path, capsys):
    histories = []
    for name, budget in (("memory", "4096"), ("lazy", "0")):
        assert train_cnn.cli(["--data", str(tiny_images), "--img-size", "16", "--epochs", "2",
                               "--cache-mb", budget, "--out", str(tmp_path), "--name", name]) == 0
        with open(tmp_path / name / "history.csv") as f:
            histories.append(without_seconds(csv.DictReader(f)))
    assert "decoding per batch instead" in capsys.readouterr().err
    assert histories[0] == histories[1]


@pytest.mark.parametrize("capability,supported", [((6, 0), False), ((7, 5), True), ((8, 9), True),
                                                  ((9, 0), True), ((12, 1), True), ((7, 0), False)])
def test_gpu_too_old_for_this_torch_build_falls_back_to_cpu(capability, supported, monkeypatch, capsys):
    """Kaggle's P100 (sm_60) with a build for sm_75+: CUDA says it is available, the first CUDA
    operation would fail. The card is the only thing faked here (this machine has none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90",
                                                              "sm_120"])
    assert training.pick_device("auto").type == ("cuda" if supported else "cpu")
    err = capsys.readouterr().err
    assert ("not supported by this torch build" in err) is not supported
    if not supported:
        assert err.count("\n") == 1 and "sm_" in err
        with pytest.raises(common.SuiteError, match="not supported"):
            training.pick_device("cuda")


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """A real training process (SpecAugment, mixup, images decoded per batch by 2 loader
    workers) killed with SIGKILL after an epoch that did not improve, so the resumed run must
    replay epochs after its checkpoint: the history and weights of a run never stopped."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT
    data = make_images(tmp_path / "img", n_per_class=8, size=64)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    train = [sys.executable, str(ROOT / "train_cnn.py"), "--data", str(data), "--img-size", "64",
             "--epochs", "10", "--patience", "10", "--lr", "3e-4", "--augment", "specaugment",
             "--mixup", "0.2", "--cache-mb", "0", "--workers", "2", "--out", str(tmp_path / "runs")]

    def history(name):
        with open(tmp_path / "runs" / name / "history.csv") as f:
            return without_seconds(csv.DictReader(f))
    subprocess.run(train + ["--name", "whole"], env=env, check=True, capture_output=True)
    scores = [float(h["val_balanced_acc"]) for h in history("whole")]
    kill_after = next(e for e in range(3, 10) if scores[e - 1] <= max(scores[:e - 1]))
    killed = subprocess.Popen(train + ["--name", "killed"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in killed.stdout:
        if line.startswith(f"epoch {kill_after:3d}"):
            killed.send_signal(signal.SIGKILL)
            break
    killed.communicate(timeout=60)
    run = tmp_path / "runs" / "killed"
    assert killed.returncode == -signal.SIGKILL and not (run / "metrics.json").exists()
    resumed = subprocess.run([sys.executable, str(ROOT / "train_cnn.py"), "--resume", str(run)],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    checkpoint_epoch = int(resumed.stdout.split("after epoch ")[1].split()[0])
    assert checkpoint_epoch < kill_after  # epochs were replayed
    assert history("killed") == history("whole") and len(history("whole")) == 10
    weights = [torch.load(tmp_path / "runs" / n / "model.pt", weights_only=True)["state_dict"]
               for n in ("whole", "killed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not (run / "checkpoint.pt").exists()  # done: model.pt holds the weights


def test_another_seed_gives_another_run(tiny_images, tmp_path):
    """--seed changes the initial weights and the batch order (here on the same split)."""
    histories = []
    for seed, split in (("0", []), ("1", ["--split", str(tiny_images / "split.json")])):
        assert train_cnn.cli(["--data", str(tiny_images), "--img-size", "16", "--epochs", "2",
                               "--seed", seed, *split, "--out", str(tmp_path), "--name", seed]) == 0
        with open(tmp_path / seed / "history.csv") as f:
            histories.append([r["train_loss"] for r in csv.DictReader(f)])
    assert histories[0] != histories[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_amp_on_cuda(tmp_path):
    """On CUDA the loop runs under autocast (float16) with a GradScaler; the run records how
    many steps the scaler skipped, and the saved weights are float32."""
    data = make_images(tmp_path / "img", n_per_class=8, size=32)
    assert train_cnn.cli(["--data", str(data), "--img-size", "32", "--epochs", "2", "--device",
                           "cuda", "--out", str(tmp_path), "--name", "amp"]) == 0
    m = json.loads((tmp_path / "amp" / "metrics.json").read_text())
    steps = 2 * -(-m["n_train"] // 32)  # 2 epochs of batches of 32
    assert m["amp_skipped_steps"] < steps  # GradScaler skips a few at first, never every step
    state = torch.load(tmp_path / "amp" / "model.pt", weights_only=True)["state_dict"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    training.seed_everything(0)  # the weights it started from, as the run built them
    start = train_cnn.common.build_model({"kind": "cnn", "model": "convolneunet", "img_size": 32,
                                          "n_classes": 3, "in_channels": 3}).state_dict()
    assert not torch.equal(start["classifier.1.weight"], state["classifier.1.weight"].cpu())


def folder_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_changes_nothing(tiny_images, tmp_path, capsys):
    run = tmp_path / "r"
    assert train_cnn.cli(["--data", str(tiny_images), "--img-size", "16", "--epochs", "2",
                           "--out", str(tmp_path), "--name", "r"]) == 0
    before = folder_bytes(run)
    capsys.readouterr()
    assert train_cnn.cli(["--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "finished before; nothing to do" in out and "epoch" not in out.split("nothing")[0]
    assert folder_bytes(run) == before


def test_the_end_of_a_run_resumes_at_every_instant(tiny_images, tmp_path):
    """Stopped after model.pt but before the report (here report.txt cannot be written), or with
    the report but not the model (as an older order left it): --resume finishes the run as if
    it had never stopped."""
    argv = ["--data", str(tiny_images), "--img-size", "16", "--epochs", "3", "--lr", "3e-3",
            "--out", str(tmp_path)]
    assert train_cnn.cli(argv + ["--name", "whole"]) == 0
    whole = folder_bytes(tmp_path / "whole")
    run = tmp_path / "a"
    with on_line("epoch   3", lambda: (run / "report.txt").mkdir()):  # never renamed over: 1 line
        assert train_cnn.cli(argv + ["--name", "a"]) == 1
    assert (run / "model.pt").exists() and (run / "checkpoint.pt").exists()
    assert not (run / "metrics.json").exists()
    (run / "report.txt").rmdir()
    assert train_cnn.cli(["--resume", str(run)]) == 0
    for name in ("predictions.csv", "report.txt"):
        assert folder_bytes(run)[Path(name)] == whole[Path(name)]
    with open(run / "history.csv") as a, open(tmp_path / "whole" / "history.csv") as b:
        assert without_seconds(csv.DictReader(a)) == without_seconds(csv.DictReader(b))
    assert not (run / "checkpoint.pt").exists()
    # the report without the model
    (run / "model.pt").unlink()
    assert train_cnn.cli(["--resume", str(run)]) == 0
    weights = [torch.load(tmp_path / n / "model.pt", weights_only=True)["state_dict"] for n in ("whole", "a")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_may_change_workers_and_device(tiny_images, tmp_path):
    with ctrl_c_after("epoch   1"):
        assert train_cnn.cli(["--data", str(tiny_images), "--img-size", "16", "--epochs", "3",
                               "--out", str(tmp_path), "--name", "r", "--workers", "2"]) == 130
    assert train_cnn.cli(["--resume", str(tmp_path / "r"), "--workers", "1", "--device", "cpu",
                           "--time-limit", "1h"]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["epochs_run"] == 3


def test_time_limit_stops_between_epochs_and_resume_finishes(tmp_path):
    """fit(deadline=): no epoch starts that would end after it (the longest so far, with a 20 %
    margin); the state is checkpointed, the result is incomplete, and fit again from the
    checkpoint ends as the run never stopped. On the test's clock an epoch takes 10 s and 10 s
    pass between epochs: epoch 3 starts at 1050 and would end by 1062, epoch 4 at 1070."""
    train, val = tiny_sets()

    def run(checkpoint, deadline=None):
        training.seed_everything(0)
        model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(6, 3))
        result = fit(model, train, val, epochs=6, batch_size=4, schedule="cosine",
                     early_stopping=None, mixup=0.2, lr=0.05, checkpoint=checkpoint,
                     deadline=deadline, clock=Clock(1000.0, 10.0))
        return result, model
    whole, whole_model = run(None)
    for deadline, epochs in ((1062.0, 3), (1061.9, 2)):  # the margin decides
        (tmp_path / "checkpoint.pt").unlink(missing_ok=True)
        stopped, _ = run(tmp_path / "checkpoint.pt", deadline=deadline)
        assert not stopped.complete and len(stopped.history) == epochs
    resumed, resumed_model = run(tmp_path / "checkpoint.pt")
    assert resumed.complete and without_seconds(resumed.history) == without_seconds(whole.history)
    assert all(torch.equal(a, b) for a, b in zip(whole_model.state_dict().values(),
                                                 resumed_model.state_dict().values()))


def test_a_part_stopped_by_the_time_limit_is_not_finished(tiny_images, tmp_path):
    """A part stopped at the time limit has its report and model.pt, and keeps its checkpoint:
    it is not finished, so --resume trains it to the end."""
    import time
    argv = ["--data", str(tiny_images), "--img-size", "16", "--epochs", "2", "--out",
            str(tmp_path), "--name", "r"]
    assert train_cnn.cli(argv + ["--time-limit", "1h"], started=time.time() - 7200) == 0  # over
    run = tmp_path / "r"
    m = json.loads((run / "metrics.json").read_text())
    assert (m["complete"], m["epochs_run"]) == (False, 0)
    assert (run / "model.pt").exists() and (run / "checkpoint.pt").exists()
    assert not runs.part_finished(run)
    assert train_cnn.cli(["--resume", str(run)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert (m["complete"], m["epochs_run"]) == (True, 2)
    assert runs.part_finished(run) and not (run / "checkpoint.pt").exists()


def test_plateau_run_stopped_by_the_time_limit_resumes_to_the_uninterrupted_result(tmp_path):
    """--schedule plateau, validation scripted (best at epoch 1, then flat) and a clock on which
    an epoch takes 10 s: a limit at 1065 stops it after epoch 3 holding epoch 1's weights; fit
    again from the checkpoint stops early at epoch 6 (patience 5) with epoch 1 still the best,
    as the run never stopped: history, best epoch and weights."""
    train, val = scripted_sets()
    validation = [4] + [1] * 5

    def run(right, checkpoint=None, deadline=None):
        training.seed_everything(0)
        model = ScriptedNet(right)
        return fit(model, train, val, lr=0.1, checkpoint=checkpoint, deadline=deadline,
                   clock=Clock(1000.0, 10.0)), model
    whole, whole_model = run(validation)
    assert (len(whole.history), whole.best_epoch) == (6, 1)
    stopped, stopped_model = run(validation, tmp_path / "checkpoint.pt", deadline=1065.0)
    assert not stopped.complete and (len(stopped.history), stopped.best_epoch) == (3, 1)
    assert torch.equal(whole_model.linear.weight, stopped_model.linear.weight)
    resumed, resumed_model = run(validation[3:], tmp_path / "checkpoint.pt")  # epochs 4 to 6
    assert resumed.complete and resumed.best_epoch == 1
    assert without_seconds(resumed.history) == without_seconds(whole.history)
    assert torch.equal(whole_model.linear.weight, resumed_model.linear.weight)


def test_a_resumed_run_rewrites_a_checkpoint_summary_left_behind_by_a_kill(tmp_path):
    """A kill between checkpoint.pt and checkpoint.json leaves the .json an epoch behind; the
    run that resumes from the .pt says where it really stands."""
    train, val = tiny_sets()
    checkpoint = tmp_path / "checkpoint.pt"
    fit(torch.nn.Linear(6, 3), train, val, epochs=3, early_stopping=None, checkpoint=checkpoint)
    common.write_json(tmp_path / "checkpoint.json", {"epochs_done": 2, "best_epoch": 2})
    fit(torch.nn.Linear(6, 3), train, val, epochs=3, early_stopping=None, checkpoint=checkpoint)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epochs_done"] == 3
