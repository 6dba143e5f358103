import csv
import json

import pytest
import torch
import torchvision

import common
import data
import data_conversion
import models
import predict
import train_transfer
import training
from conftest import without_seconds, write_tone


def run(data, tmp_path, *extra, name="t"):
    return train_transfer.cli(["--data", str(data), "--img-size", "32", "--epochs", "2",
                                "--batch-size", "6", "--out", str(tmp_path), "--name", name,
                                *map(str, extra)])


@pytest.fixture(scope="module")
def spectrograms(tmp_path_factory):
    """Spectrogram PNGs of 3 genres x 3 tone clips (conversion.json included), and a flat
    folder of 3 new clips to predict."""
    root = tmp_path_factory.mktemp("transfer")
    audio = root / "audio"
    for g, base in (("blues", 200.0), ("metal", 2000.0), ("pop", 800.0)):
        for i in range(3):
            write_tone(audio / g / f"{g}.{i:05d}.wav", base * (1 + 0.1 * i), noise=0.01, seed=i)
            if i == 0:
                write_tone(root / "test" / f"{g}-new.wav", base * 1.05, noise=0.01, seed=9)
    assert data_conversion.cli([str(audio), str(root / "images"), "--size", "32",
                                 "--workers", "1"]) == 0
    return root / "images", root / "test"


# The study's three, inception_v3 (same auxiliary-head trap as googlenet), and a sample of others.
IMAGENET_ARCHS = ["googlenet", "resnet50", "inception_v3", "mobilenet_v3_small",
                  *(pytest.param(arch, marks=pytest.mark.slow) for arch in
                    ("vgg16", "efficientnet_b0", "densenet121", "convnext_tiny", "swin_t"))]


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_imagenet_weights_frozen_then_predict(arch, imagenet_twin, spectrograms, tmp_path):
    """--weights imagenet through torchvision's own weights code (served offline): the backbone
    holds the served weights, input size, mean and std are the weights' transforms', and
    predict rebuilds the model from model.pt and labels new audio."""
    import torchvision
    served = imagenet_twin(arch)
    images, test_audio = spectrograms
    assert train_transfer.cli(["--data", str(images), "--arch", arch, "--epochs", "1",
                                "--batch-size", "9", "--out", str(tmp_path), "--name", "r"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["weights"] == "imagenet" and m["fast_path"] is True
    model, ckpt = predict.load_model(tmp_path / "r" / "model.pt")
    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    assert ckpt["spec"]["preprocess"]["img_size"] == transforms.crop_size[0]
    assert model.norm.mean.flatten().tolist() == pytest.approx(transforms.mean)
    assert model.norm.std.flatten().tolist() == pytest.approx(transforms.std)
    backbone = model.backbone.state_dict()
    same = [k for k in backbone if k in served and torch.equal(backbone[k], served[k])]
    assert len(same) >= 0.9 * len(backbone)  # all but the replaced classifier
    assert predict.cli([str(tmp_path / "r" / "model.pt"), str(test_audio),
                         "--workers", "1"]) == 0
    with open(tmp_path / "r" / "submission.csv") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == ["blues-new.wav", "metal-new.wav", "pop-new.wav"]
    assert {r[1] for r in rows[1:]} <= {"blues", "metal", "pop"}


@pytest.mark.parametrize("arch", ["googlenet", pytest.param("inception_v3", marks=pytest.mark.slow)])
def test_imagenet_weights_finetune(arch, imagenet_twin, spectrograms, tmp_path):
    served = imagenet_twin(arch)
    images, _ = spectrograms
    assert train_transfer.cli(["--data", str(images), "--arch", arch, "--epochs", "1",
                                "--batch-size", "9", "--finetune", "--out", str(tmp_path),
                                "--name", "ft"]) == 0
    model, _ = predict.load_model(tmp_path / "ft" / "model.pt")
    first = next(k for k in served if k.endswith("conv.weight"))
    assert not torch.equal(model.backbone.state_dict()[first], served[first])  # it trained


def test_any_torchvision_name_and_augment_slow_path(tiny_images, tmp_path):
    assert run(tiny_images, tmp_path, "--arch", "mobilenet_v3_small", "--weights", "none",
               "--augment", name="m") == 0
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["fast_path"] is False


def test_a_random_backbone_says_so_when_it_predicts(spectrograms, tmp_path, capsys):
    images, test = spectrograms
    assert run(images, tmp_path, "--arch", "resnet18", "--weights", "none", "--predict", test,
               "--workers", "1", name="r") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note")]
    assert "note: this model has a backbone with random weights (--weights none): no " \
           "pretraining" in notes


def test_fast_path_trains_what_the_full_frozen_model_would(tiny_images):
    """The head fitted on cached backbone features follows, epoch by epoch, the run of the whole
    frozen model on the images (same seed): the fast path is an optimization, not a change."""
    images = data.load_image_data(tiny_images, 32)
    parts = {"train": list(range(0, 18, 2)), "val": list(range(1, 18, 2))}
    runs = []
    for fast in (False, True):
        training.seed_everything(0)
        net, _ = models.build_transfer("resnet18", 3, "none", head_dropout=0.5)
        train, val = (images.dataset.subset(parts[p]) for p in ("train", "val"))
        if fast:
            with torch.no_grad():  # the backbone as the fast path runs it (channels-last)
                backbone = training.on_device(net, torch.device("cpu"), images=True).eval()
                features = data.ArrayDataset(backbone.features(images.dataset.x),
                                             images.dataset.labels, images.dataset.clip_ids)
            train, val = (features.subset(parts[p]) for p in ("train", "val"))
        training.seed_everything(1)
        result = training.fit(net.head if fast else net, train, val,
                              criterion=torch.nn.CrossEntropyLoss(), epochs=3, lr=3e-3,
                              batch_size=4, early_stopping=training.EarlyStopping(5), seed=0,
                              device=torch.device("cpu"),
                              log=lambda *_: None)
        runs.append((result.history, net.head.state_dict()))
    (slow, slow_head), (fast, fast_head) = runs
    for a, b in zip(slow, fast):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    assert all(torch.allclose(slow_head[k], fast_head[k], atol=1e-5) for k in slow_head)


def test_frozen_backbone_untouched_on_the_slow_path(tiny_images, tmp_path):
    """--augment trains the whole model on images with the backbone frozen: its weights and
    BatchNorm statistics stay as they started, and no gradient is computed for them;
    --finetune changes them."""
    for flag, name in ((["--augment"], "frozen"), (["--finetune"], "ft")):
        assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", "none", "--seed", "0",
                   *flag, name=name) == 0
    frozen = predict.load_model(tmp_path / "frozen" / "model.pt")[0].backbone.state_dict()
    tuned = predict.load_model(tmp_path / "ft" / "model.pt")[0].backbone.state_dict()
    training.seed_everything(0)  # the random backbone both runs started from
    start = models.build_transfer("resnet18", 3, "none")[0].backbone.state_dict()
    assert all(torch.equal(frozen[k], start[k]) for k in start)
    for k in ("conv1.weight", "bn1.running_mean"):
        assert not torch.equal(tuned[k], start[k])
    net = models.build_transfer("resnet18", 3, "none")[0].train()
    torch.nn.functional.cross_entropy(net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
                                      torch.tensor([0, 1])).backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.head.parameters())


def test_weights_from_local_state_dict(tiny_images, tmp_path, capsys):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", path, name="w") == 0
    model, _ = predict.load_model(tmp_path / "w" / "model.pt")
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    # a state dict of another architecture: one clear line naming the missing keys
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "other.pth")
    capsys.readouterr()
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", tmp_path / "other.pth") == 1
    err = capsys.readouterr().err
    assert "does not fit resnet18" in err and "missing keys" in err and err.count("\n") == 1
    # same key names, another shape in the backbone
    state = reference.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(state, tmp_path / "narrow.pth")
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", tmp_path / "narrow.pth") == 1
    err = capsys.readouterr().err
    assert "other shape" in err and "layer1.0.conv1.weight" in err and err.count("\n") == 1
    # another classifier (7 classes) is no misfit: the classifier is replaced anyway
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), tmp_path / "seven.pth")
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", tmp_path / "seven.pth",
               name="seven") == 0


def test_download_failure_says_what_to_do(tiny_images, tmp_path, capsys, imagenet_twin):
    """Weights not in the cache and no network (imagenet_twin serves nothing for vgg11)."""
    assert run(tiny_images, tmp_path, "--arch", "vgg11") == 2
    err = capsys.readouterr().err
    assert "could not download ImageNet weights for vgg11" in err
    assert "--weights PATH" in err and "--weights none" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_unknown_arch_lists_valid_names(tiny_images, tmp_path, capsys):
    assert run(tiny_images, tmp_path, "--arch", "vgg17") == 1
    err = capsys.readouterr().err
    assert "unknown --arch 'vgg17'" in err and "vgg16" in err and "resnet50" in err


def test_feature_cache_reused(tiny_images, tmp_path, capsys):
    """The second run reads the backbone's features from the cache and trains exactly as the
    first, and its time to converge still counts the backbone pass."""
    import csv
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", "none", name="c1") == 0
    cached = list(common.cache_dir("backbone").glob("features-*.pt"))
    assert len(cached) == 1 and not (tmp_path / ".cache").exists()  # one place for caches
    capsys.readouterr()
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", "none", name="c2") == 0
    assert "features from" in capsys.readouterr().out
    cached[0].write_bytes(cached[0].read_bytes()[:100])  # damaged: computed again, one warning
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", "none", name="c3") == 0
    captured = capsys.readouterr()
    assert "is damaged" in captured.err and "Traceback" not in captured.err
    assert "features from" not in captured.out and cached[0].stat().st_size > 100
    histories, backbone_seconds = [], []
    for name in ("c1", "c2", "c3"):
        with open(tmp_path / name / "history.csv") as f:
            rows = list(csv.DictReader(f))
        histories.append(without_seconds(rows))
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        backbone_seconds.append(metrics["train_seconds"] - float(rows[-1]["seconds"]))
    assert histories[0] == histories[1] == histories[2]
    assert backbone_seconds[1] == pytest.approx(backbone_seconds[0]) and backbone_seconds[0] > 0


def test_fast_path_on_images_decoded_per_batch_trains_as_in_memory(tiny_images, tmp_path, capsys):
    """Above --cache-mb the backbone pass reads images decoded per batch, to the same end."""
    histories = []
    for name, budget in (("memory", "4096"), ("lazy", "0")):
        assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", "none", "--cache-mb",
                   budget, "--cache-dir", tmp_path / f"cache-{name}", name=name) == 0
        with open(tmp_path / name / "history.csv") as f:
            histories.append(without_seconds(csv.DictReader(f)))
    assert "decoding per batch instead" in capsys.readouterr().err
    assert histories[0] == histories[1]
