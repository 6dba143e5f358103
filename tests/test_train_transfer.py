import json
import urllib.error

import pytest
import torch
import torchvision

import common
import train_transfer


def run(data, tmp_path, *extra, name="t"):
    return train_transfer.main(["--data", str(data), "--img-size", "32", "--epochs", "2",
                                "--batch-size", "6", "--out", str(tmp_path), "--name", name,
                                *map(str, extra)])


@pytest.mark.parametrize("arch", ["vgg16", "googlenet", "resnet50"])
def test_study_architectures_train_and_write_run_folder(arch, tiny_images, tmp_path):
    assert run(tiny_images, tmp_path, "--arch", arch, "--weights", "none", name=arch) == 0
    m = json.loads((tmp_path / arch / "metrics.json").read_text())
    assert m["model"] == arch and m["fast_path"] is True and m["weights"] == "none"
    model, ckpt = common.load_model(tmp_path / arch / "model.pt")
    assert ckpt["spec"]["arch"] == arch
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 3)


def test_any_torchvision_name_and_augment_slow_path(tiny_images, tmp_path):
    assert run(tiny_images, tmp_path, "--arch", "mobilenet_v3_small", "--weights", "none",
               "--augment", name="m") == 0
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["fast_path"] is False


def test_cached_features_give_same_logits_as_full_model():
    net, _ = common.build_transfer("resnet18", 4, "none", 0.5)
    net.eval()
    x = torch.randint(0, 255, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(net.head(net.features(x)), net(x), atol=1e-6)
    net.train()  # frozen backbone stays in eval mode: BatchNorm uses running stats
    assert not net.backbone.training and net.head.training


def test_frozen_backbone_unchanged_finetune_changes_it(tiny_images, tmp_path):
    for flag, name in (([], "frozen"), (["--finetune"], "ft")):
        assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", "none", "--seed", "0",
                   *flag, name=name) == 0
    frozen, _ = common.load_model(tmp_path / "frozen" / "model.pt")
    tuned, _ = common.load_model(tmp_path / "ft" / "model.pt")
    common.seed_everything(0)  # the random backbone both runs started from
    start = common.build_transfer("resnet18", 3, "none")[0]
    w = "backbone.conv1.weight"
    assert torch.equal(frozen.state_dict()[w], start.state_dict()[w])
    assert not torch.equal(tuned.state_dict()[w], start.state_dict()[w])


def test_weights_from_local_state_dict(tiny_images, tmp_path, capsys):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", path, name="w") == 0
    model, _ = common.load_model(tmp_path / "w" / "model.pt")
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    # a state dict of another architecture: one clear line naming the missing keys
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "other.pth")
    capsys.readouterr()
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", tmp_path / "other.pth") == 1
    err = capsys.readouterr().err
    assert "does not fit resnet18" in err and "missing keys" in err and err.count("\n") == 1


def test_download_failure_says_what_to_do(tiny_images, tmp_path, capsys, monkeypatch):
    real = torchvision.models.get_model

    def offline(name, weights=None, **kw):
        if weights is not None:
            raise urllib.error.URLError("no network")
        return real(name, weights=None, **kw)
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    assert run(tiny_images, tmp_path, "--arch", "vgg16") == 2
    err = capsys.readouterr().err
    assert "could not download ImageNet weights for vgg16" in err
    assert "--weights PATH" in err and "--weights none" in err and "Traceback" not in err


def test_unknown_arch_lists_valid_names(tiny_images, tmp_path, capsys):
    assert run(tiny_images, tmp_path, "--arch", "vgg17") == 1
    err = capsys.readouterr().err
    assert "unknown --arch 'vgg17'" in err and "vgg16" in err and "resnet50" in err


def test_feature_cache_reused(tiny_images, tmp_path, capsys):
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", "none", name="c1") == 0
    assert len(list((tmp_path / ".cache").glob("features-*.pt"))) == 1
    capsys.readouterr()
    assert run(tiny_images, tmp_path, "--arch", "resnet18", "--weights", "none", name="c2") == 0
    assert "features from" in capsys.readouterr().out
