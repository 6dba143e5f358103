"""PANNs' CNN14: the published tensors' names and shapes, the forward against PANNs' own way
(torchlibrosa's front end and Cnn14.forward written out here), the published file's make-up, its
download (offline twins), and the transfer model built on it."""
import functools
import hashlib
import json
import math
import pickle
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import audio
import common
import models
import predict
import train_transfer
from conftest import ctrl_c_after

# Cnn14_mAP=0.431.pth's "model": key -> (shape, dtype), listed from the published file
PUBLISHED = {}
for line in (Path(__file__).parent / "cnn14_state_dict_keys.txt").read_text().splitlines():
    if not line.startswith("#"):
        key, shape, dtype = line.split("\t")
        PUBLISHED[key] = (tuple(int(d) for d in shape.strip("(,)").split(",") if d), dtype)


def torchlibrosa_front_end():
    """torchlibrosa's modules with the arguments PANNs' Cnn14.__init__ gives them."""
    stft = pytest.importorskip("torchlibrosa.stft")
    spectrogram = stft.Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann",
                                   center=True, pad_mode="reflect", freeze_parameters=True)
    logmel = stft.LogmelFilterBank(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000, ref=1.0,
                                   amin=1e-10, top_db=None, freeze_parameters=True)
    return spectrogram, logmel


def published_embedding(state, waveform, training=False, seed=0):
    """PANNs' Cnn14.forward (pytorch/models.py) up to its embedding, on torchlibrosa's front end
    holding the state's tensors; in training (dropout drawn from `seed`) without its
    SpecAugmentation (ours is optional)."""
    spectrogram, logmel = torchlibrosa_front_end()
    spectrogram.load_state_dict({k: state[f"spectrogram_extractor.{k}"]
                                 for k in ("stft.conv_real.weight", "stft.conv_imag.weight")})
    logmel.load_state_dict({"melW": state["logmel_extractor.melW"]})

    def bn(x, name):
        return F.batch_norm(x, state[f"{name}.running_mean"].clone(),
                            state[f"{name}.running_var"].clone(), state[f"{name}.weight"],
                            state[f"{name}.bias"], training=training)

    torch.manual_seed(seed)  # after building the front end, whose init draws
    x = logmel(spectrogram(waveform))   # (batch, 1, time, mel)
    x = bn(x.transpose(1, 3), "bn0").transpose(1, 3)
    for i in range(1, 7):
        block = f"conv_block{i}"
        x = F.relu(bn(F.conv2d(x, state[f"{block}.conv1.weight"], padding=1), f"{block}.bn1"))
        x = F.relu(bn(F.conv2d(x, state[f"{block}.conv2.weight"], padding=1), f"{block}.bn2"))
        x = F.avg_pool2d(x, kernel_size=(2, 2) if i < 6 else (1, 1))
        x = F.dropout(x, p=0.2, training=training)
    x = torch.mean(x, dim=3)
    x = torch.max(x, dim=2)[0] + torch.mean(x, dim=2)
    x = F.dropout(x, p=0.5, training=training)
    x = F.relu(F.linear(x, state["fc1.weight"], state["fc1.bias"]))
    return F.dropout(x, p=0.5, training=training)


def waveforms(seconds=1.0):
    """Two 32 kHz clips: noise, and a tone whose second half is digital silence (where amin
    decides the level)."""
    n = int(seconds * 32000)
    tone = 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(n) / 32000)
    tone[n // 2:] = 0
    return torch.stack([0.1 * torch.randn(n, generator=torch.Generator().manual_seed(1)), tone])


@pytest.fixture(scope="module")
def published_state():
    """Random tensors of the published names, shapes and dtypes (BatchNorm statistics too), scaled
    as a trained network's; the front end is torchlibrosa's with each value moved by up to 10 %,
    so that only a model that uses the loaded front end agrees."""
    spectrogram, logmel = torchlibrosa_front_end()
    front = {"spectrogram_extractor.stft.conv_real.weight": spectrogram.stft.conv_real.weight,
             "spectrogram_extractor.stft.conv_imag.weight": spectrogram.stft.conv_imag.weight,
             "logmel_extractor.melW": logmel.melW}
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, (shape, dtype) in PUBLISHED.items():
        if key in front:
            value = front[key].detach() * (0.9 + 0.2 * torch.rand(shape, generator=gen))
        elif dtype == "int64":
            value = torch.randint(1, 10**6, shape, generator=gen)
        elif key.endswith(("running_var", "bn1.weight", "bn2.weight", "bn0.weight")):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("weight"):  # conv and linear: He's scale keeps activations O(1)
            value = torch.randn(shape, generator=gen) * math.sqrt(2 / math.prod(shape[1:]))
        else:  # biases and running means
            value = 0.1 * torch.randn(shape, generator=gen)
        state[key] = value.to(getattr(torch, dtype)).contiguous()
    return state


@pytest.fixture(scope="module")
def checkpoint_file(published_state, tmp_path_factory):
    """A file made up as the published one: the state dict under "model" beside the iteration and
    the training sampler's state (NumPy index arrays, plain lists, a RandomState's state), saved
    in torch's legacy format with NumPy 1.x's module names, as PANNs saved it in 2020."""
    path = tmp_path_factory.mktemp("panns") / models.CNN14_FILE
    rng = np.random.RandomState(0)
    sampler = {"indexes_per_class": [np.where(rng.rand(40) < 0.3)[0] for _ in range(3)],
               "queue": [2, 0, 1], "pointers_of_classes": [0, 4, 1],
               "random_state": rng.get_state()}
    torch.save({"iteration": 660000, "model": published_state, "sampler": sampler}, path,
               _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes().replace(b"numpy._core.", b"numpy.core."))
    return path


@pytest.fixture(scope="module")
def fresh_cnn14():
    """A Cnn14 as built, in eval mode; tests only read it."""
    return models.Cnn14().eval()


def test_tensors_are_the_published_ones(fresh_cnn14):
    """Same names, shapes and dtypes as the published state dict, less its AudioSet head; the
    front end frozen, the rest trainable."""
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in fresh_cnn14.state_dict().items()}
    assert ours == {k: v for k, v in PUBLISHED.items() if not k.startswith("fc_audioset.")}
    frozen = {name for name, p in fresh_cnn14.named_parameters() if not p.requires_grad}
    assert frozen == {"spectrogram_extractor.stft.conv_real.weight",
                      "spectrogram_extractor.stft.conv_imag.weight", "logmel_extractor.melW"}


def test_own_front_end_is_torchlibrosas(fresh_cnn14):
    """Built without a file (--weights none), the front end is the one PANNs trained with."""
    spectrogram, logmel = torchlibrosa_front_end()
    stft = fresh_cnn14.spectrogram_extractor.stft
    torch.testing.assert_close(stft.conv_real.weight, spectrogram.stft.conv_real.weight,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(stft.conv_imag.weight, spectrogram.stft.conv_imag.weight,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(fresh_cnn14.logmel_extractor.melW, logmel.melW, rtol=0, atol=1e-9)
    x = waveforms()
    torch.testing.assert_close(fresh_cnn14.logmel(x), logmel(spectrogram(x)), rtol=0, atol=1e-3)


def test_embedding_equals_published_forward(published_state):
    """Same weights: our embedding is PANNs' within 1e-4 of its scale, in eval mode, and in
    training with the same random draws (dropout where PANNs has it, batch statistics)."""
    model = models.Cnn14()
    model.load_state_dict({k: v for k, v in published_state.items() if "fc_audioset" not in k})
    x = waveforms()
    for training in (False, True):
        with torch.no_grad():
            torch.manual_seed(3)
            ours = model.train(training)(x)
            theirs = published_embedding(published_state, x, training, seed=3)
        assert ours.shape == (2, 2048) and theirs.abs().max() > 1
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_front_end_stays_float32_under_autocast(fresh_cnn14):
    """Under AMP the log-mel is still float32 (a full-scale tone's power overflows float16)."""
    x = waveforms()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = fresh_cnn14.logmel(x)
    assert under.dtype == torch.float32 and torch.equal(under, fresh_cnn14.logmel(x))


def test_spec_augment_only_when_asked_and_training(fresh_cnn14):
    """PANNs' stripes (time < 64 frames, frequency < 8 bands, two each) zero what conv_block1
    receives in training with spec_augment on; never by default, never in eval."""
    assert fresh_cnn14.spec_augment is False  # as built
    seen = []
    hook = fresh_cnn14.conv_block1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(3, 48000, generator=torch.Generator().manual_seed(2))  # 151 frames
    try:
        torch.manual_seed(0)
        for augment, training in ((False, True), (True, False), (True, True)):
            fresh_cnn14.spec_augment = augment
            with torch.no_grad():
                fresh_cnn14.train(training)(x)
    finally:
        hook.remove()
        fresh_cnn14.spec_augment = False
        fresh_cnn14.eval()
    zero_frames = [(s == 0).all(dim=3).sum(dim=(1, 2)) for s in seen]  # per clip
    zero_bands = [(s == 0).all(dim=2).sum(dim=(1, 2)) for s in seen]
    assert zero_frames[0].sum() == zero_frames[1].sum() == 0
    assert zero_bands[0].sum() == zero_bands[1].sum() == 0
    assert zero_frames[2].sum() > 0 and zero_frames[2].max() <= 2 * 63
    assert zero_bands[2].sum() > 0 and zero_bands[2].max() <= 2 * 7


def test_published_file_loads_weights_only(checkpoint_file, published_state, tmp_path):
    """A plain weights-only load refuses the published make-up (NumPy objects beside the
    tensors); ours loads it with just the NumPy types it needs, and a plain state dict too."""
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        torch.load(checkpoint_file, weights_only=True)
    model = models.Cnn14()
    models.load_cnn14_weights(model, checkpoint_file)
    for key, value in model.state_dict().items():
        assert torch.equal(value, published_state[key]), key
    plain = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    torch.save(plain, tmp_path / "plain.pt")
    models.load_cnn14_weights(model, tmp_path / "plain.pt")
    assert not model.fc1.weight.any() and not model.logmel_extractor.melW.any()


@pytest.mark.parametrize("content, culprit", [
    ({"fc1.weight": torch.zeros(2048, 1024)}, "fc1.weight is (2048, 1024) there, (2048, 2048)"),
    ({"model": {"fc1.bias": torch.zeros(2048)}}, "missing (e.g. spectrogram_extractor.stft"),
    ({"conv1.weight": torch.zeros(64, 3, 7, 7)}, "conv1.weight, which CNN14 has not"),
    ({"model": {}, "sampler": np.random.RandomState(0)}, "GLOBAL numpy.random"),
    ([torch.zeros(3)], "expected PANNs' CNN14 checkpoint or a state dict"),
    ("text", "not a loadable CNN14 file"),
    (None, "no such file"),
])
def test_other_files_refused_in_one_line(content, culprit, fresh_cnn14, tmp_path):
    path = tmp_path / "weights.pth"
    if content == "text":
        path.write_text("<html>not found</html>")
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(common.SuiteError) as error:
        models.load_cnn14_weights(fresh_cnn14, path)
    assert str(path) in str(error.value) and culprit in str(error.value)
    assert "\n" not in str(error.value) and error.value.code == 1


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A fresh $TORCH_HOME and no network: http(s) goes to a closed local port (as imagenet_twin
    does). Returns where the published file belongs in torch's hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints" / "Cnn14_mAP=0.431.pth"


def test_panns_weights_from_hub_cache_without_network(offline, checkpoint_file, published_state):
    """The file in torch's hub cache (as a first download leaves it) is used, no network."""
    offline.parent.mkdir(parents=True)
    offline.symlink_to(checkpoint_file)
    net, sample_rate = models.build_transfer("cnn14", 3, weights="panns")
    assert sample_rate == 32000
    assert torch.equal(net.backbone.conv_block6.bn2.running_var,
                       published_state["conv_block6.bn2.running_var"])


def test_no_network_says_what_to_attach(offline):
    with pytest.raises(common.SuiteError) as error:
        models.build_transfer("cnn14", 3, weights="panns")
    message = str(error.value)
    assert error.value.code == 2 and "\n" not in message
    assert "could not download PANNs' CNN14 weights" in message
    assert "--weights PATH (Cnn14_mAP=0.431.pth" in message and "--weights none" in message
    assert not offline.parent.exists() or not any(offline.parent.iterdir())


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_kept_only_when_it_loads(offline, checkpoint_file, monkeypatch, tmp_path):
    """From a loopback server standing in for Zenodo: a page that is not the file is named and
    not kept (its MD5 is not Zenodo's); the file, here the twin's stand-in whose MD5 is made the
    published one, is downloaded into the hub cache once."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.html").write_text("<html>too many requests</html>")
    (site / "file.pth").symlink_to(checkpoint_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=site))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        monkeypatch.setattr(models, "CNN14_URL", f"{url}/page.html")
        with pytest.raises(common.SuiteError, match=f"{offline}: not the published file"):
            models.cnn14_weights_path()
        assert not offline.exists()
        monkeypatch.setattr(models, "CNN14_MD5",
                            hashlib.md5(checkpoint_file.read_bytes()).hexdigest())
        monkeypatch.setattr(models, "CNN14_URL", f"{url}/file.pth")
        assert models.cnn14_weights_path() == offline
        assert offline.read_bytes() == checkpoint_file.read_bytes()
        monkeypatch.setattr(models, "CNN14_URL", f"{url}/page.html")  # cached: not asked again
        assert models.cnn14_weights_path() == offline
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("seconds, windows", [(2.6, 3), (2.4, 2), (0.3, 1)])
def test_audio_windows_pad_the_last_one_with_silence(seconds, windows, tmp_path):
    """Windows of 1 s of the decoded audio, in order, not normalized: a tail of half a window or
    more is padded with silence, a shorter one dropped, a clip under a window is one window."""
    from conftest import write_tone
    path = write_tone(tmp_path / "clip.wav", 300, seconds=seconds)
    y, sr = audio.decode_audio(path)
    out = audio.audio_windows(path, sr, 1.0)
    assert out.shape == (windows, sr) and out.dtype == np.float32
    flat, n = out.reshape(-1), min(len(y), windows * sr)
    assert np.array_equal(flat[:n], y[:n]) and not flat[n:].any()


def test_build_transfer_cnn14():
    """features(x) is the embedding, forward the suite's head on it; a frozen backbone stays in
    eval mode and untrainable, a fine-tuned one trains all but the front end; model.pt's spec
    rebuilds it; ImageNet weights are refused in one line."""
    net, sample_rate = models.build_transfer("cnn14", 3, weights="none", head_dropout=0.5)
    assert sample_rate == models.CNN14_SR == 32000
    x = waveforms()
    net.train()
    assert not net.backbone.training and net.head.training
    assert not any(p.requires_grad for p in net.backbone.parameters())
    net.eval()
    with torch.no_grad():
        embedding = net.features(x)
        assert embedding.shape == (2, 2048) and torch.equal(embedding, net.backbone(x))
        assert torch.equal(net(x), net.head(embedding)) and net(x).shape == (2, 3)
    rebuilt = models.build_model({"kind": "transfer", "arch": "cnn14", "n_classes": 3,
                                  "head_dropout": 0.5, "finetune": True})
    rebuilt.load_state_dict(net.state_dict())
    rebuilt.train()
    assert rebuilt.backbone.training
    trainable = {n for n, p in rebuilt.backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n in rebuilt.backbone.state_dict()
                         if "extractor" not in n and "running" not in n and "num_batches" not in n}
    with pytest.raises(common.SuiteError, match="--weights panns, PATH or none"):
        models.build_transfer("cnn14", 3, weights="imagenet")


# ----------------------------------------------------------------------------------------------
# train_transfer.py --arch cnn14: the audio itself, frozen and fine-tuned, resumed, predicted,
# ensembled with another family on the same clips

@pytest.fixture(scope="module")
def audio_clips(tmp_path_factory):
    """3 genres x 3 tone clips of 1.2 s at 22 050 Hz (decoded to 32 kHz), one unreadable file,
    and a flat folder of new clips to predict."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_tone
    root = tmp_path_factory.mktemp("cnn14")
    for g, base in (("blues", 200.0), ("metal", 2000.0), ("pop", 800.0)):
        for i in range(3):
            write_tone(root / "audio" / g / f"{g}.{i:05d}.wav", base * (1 + 0.1 * i), seconds=1.2,
                       noise=0.01, seed=i)
        write_tone(root / "test" / f"{g}-new.wav", base * 1.05, seconds=2.4, noise=0.01, seed=9)
    (root / "audio" / "pop" / "broken.wav").write_bytes(b"RIFF not audio")
    return root


@pytest.mark.slow
def test_cnn14_trains_frozen_and_finetuned_resumes_predicts_and_joins_an_ensemble(
        audio_clips, tmp_path, capsys):
    import compare
    import data_conversion
    import train_mlp
    runs = tmp_path / "runs"
    base = ["--arch", "cnn14", "--weights", "none", "--data", str(audio_clips / "audio"),
            "--clip-seconds", "1", "--batch-size", "4", "--out", str(runs), "--workers", "1"]
    assert train_transfer.cli(base + ["--epochs", "2", "--name", "frozen", "--predict",
                                       str(audio_clips / "test")]) == 0
    err = capsys.readouterr().err
    assert "broken.wav" in err and "Traceback" not in err  # named, left out
    metrics = json.loads((runs / "frozen" / "metrics.json").read_text())
    assert metrics["fast_path"] and metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 9
    _, saved = predict.load_model(runs / "frozen" / "model.pt")
    assert saved["spec"]["preprocess"] == {"type": "audio", "sr": 32000, "clip_seconds": 1.0}
    rows = (runs / "frozen" / "submission.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["blues-new.wav", "metal-new.wav", "pop-new.wav"]
    _, windows, error, _ = predict.model_inputs((audio_clips / "test" / "pop-new.wav", saved["spec"]["preprocess"]))
    assert error is None and windows.shape == (2, 32000)  # 2.4 s: two windows (the 0.4-s tail dropped)

    # fine-tuned with PANNs' SpecAugment and mixup, interrupted after epoch 1, resumed
    tuned = base + ["--finetune", "--augment", "specaugment", "--mixup", "0.2", "--epochs", "2"]
    assert train_transfer.cli(tuned + ["--name", "whole"]) == 0
    with ctrl_c_after("epoch   1"):
        assert train_transfer.cli(tuned + ["--name", "killed"]) == 130
    assert train_transfer.cli(["--resume", str(runs / "killed")]) == 0
    weights = [torch.load(runs / n / "model.pt", weights_only=True)["state_dict"] for n in ("whole", "killed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    backbone = "backbone.conv_block1.conv1.weight"
    frozen = torch.load(runs / "frozen" / "model.pt", weights_only=True)["state_dict"]
    assert not torch.equal(weights[0][backbone], frozen[backbone])  # fine-tuning moved it

    # the MLP on features of the same clips shares the split: an ensemble of the two families
    assert data_conversion.cli([str(audio_clips / "audio"), "--features", str(tmp_path / "f.csv"), "--workers", "1"]) == 0
    assert train_mlp.cli(["--features", str(tmp_path / "f.csv"), "--epochs", "2", "--out",
                           str(runs), "--name", "mlp"]) == 0
    assert compare.cli(["--runs", str(runs), "--out", str(tmp_path / "report"), "--ensemble",
                         "frozen", "mlp", "--ensemble-name", "cnn14+mlp"]) == 0
    ensemble = json.loads((tmp_path / "report" / "cnn14+mlp" / "metrics.json").read_text())
    assert ensemble["n_test"] == metrics["n_test"] and ensemble["members"] == ["frozen", "mlp"]
