"""Tiny audio and image data made with numpy, so the tests need nothing from outside."""
import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_GTZAN = ROOT.parent / "shared" / "gtzan"

import torch  # noqa: E402

import audio  # noqa: E402
import conversion  # noqa: E402
import models  # noqa: E402

torch.set_num_threads(1)  # tiny models: a second thread only adds waiting (36x slower under load)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of whole scripts or kernels "
                                       "(python -m pytest -m 'not slow' leaves them out)")


@pytest.fixture(autouse=True, scope="session")
def suite_cache(tmp_path_factory):
    """The suite's cache (common.cache_dir) in a folder of the test session, never the user's."""
    import os
    os.environ["SUITE_CACHE"] = str(tmp_path_factory.mktemp("suite_cache"))


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test its own cache: a test sees only what it computed."""
    monkeypatch.setenv("SUITE_CACHE", str(tmp_path / "suite_cache"))


def without_seconds(history):
    """History rows (from history.csv or FitResult) without their timings, which never repeat."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def write_tone(path, freq=440.0, seconds=1.0, sr=audio.SR, channels=1, noise=0.0, seed=0):
    import soundfile
    t = np.arange(int(seconds * sr)) / sr
    y = 0.5 * np.sin(2 * np.pi * freq * t) + noise * np.random.default_rng(seed).standard_normal(t.size)
    if channels == 2:
        y = np.stack([y, 0.5 * y], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, y.astype(np.float32), sr, subtype="PCM_16")
    return path


@pytest.fixture
def tiny_audio(tmp_path):
    """Three genres x 3 clips of 1 s tones, each genre its own pitch range."""
    root = tmp_path / "audio"
    for g, base in (("blues", 200.0), ("metal", 2000.0), ("pop", 800.0)):
        for i in range(3):
            write_tone(root / g / f"{g}.{i:05d}.wav", base * (1 + 0.1 * i), noise=0.01, seed=i)
    return root


def make_images(root, n_per_class=6, size=16, classes=("a", "b", "c"), segments=0, seed=0,
                palette=False):
    """Class-separable tiny PNGs: each class brightens its own third of the image. RGB, or
    (palette) levels in a palette PNG as data_conversion.py writes them."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            names = [f"{c}{i:03d}"] if not segments else [f"{c}{i:03d}__s{s:02d}" for s in range(segments)]
            for name in names:
                img = rng.integers(0, 80, (size, size) if palette else (size, size, 3), dtype=np.uint8)
                band = slice(k * size // len(classes), (k + 1) * size // len(classes))
                img[band] += 150
                if palette:
                    conversion.save_spectrogram_png(root / c / f"{name}.png", img)
                else:
                    Image.fromarray(img).save(root / c / f"{name}.png")
    return root


class OnLine:
    """A stdout that passes everything on and calls `action` once, right after a line starting
    with `prefix` has been printed: what happens then happens at that point of the program."""

    def __init__(self, prefix, action, out):
        self.prefix, self.action, self.out, self.line, self.fired = prefix, action, out, "", False

    def write(self, text):
        self.out.write(text)
        self.line += text
        *done, self.line = self.line.split("\n")
        if not self.fired and any(line.startswith(self.prefix) for line in done):
            self.fired = True
            self.action()
        return len(text)

    def flush(self):
        self.out.flush()


def on_line(prefix, action):
    return contextlib.redirect_stdout(OnLine(prefix, action, sys.stdout))


def ctrl_c_after(prefix):
    """Ctrl-C, as a user presses it, right after the program prints a line starting with
    `prefix`: "split:" is before the first epoch (no checkpoint yet), "epoch   2" between epochs
    2 and 3."""
    def press():
        raise KeyboardInterrupt
    return on_line(prefix, press)


@pytest.fixture
def tiny_images(tmp_path):
    return make_images(tmp_path / "images")


@pytest.fixture
def no_kaggle_credentials(tmp_path, monkeypatch):
    """A user without any Kaggle credentials (fresh HOME, no token or key variables)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_ENVIRONMENT",
                "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def kaggle_twin(no_kaggle_credentials, monkeypatch):
    """The Kaggle API twin on localhost:7777, and a user whose token it accepts; the real kaggle
    client talks to it (KAGGLE_API_ENVIRONMENT=TEST)."""
    import kaggle_twin as twin
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLE_API_TOKEN", twin.TOKEN)
    with twin.KaggleTwin() as server:
        yield server


@pytest.fixture
def kaggle_sessions(kaggle_twin, tmp_path, monkeypatch):
    """The Kaggle API twin that also runs each pushed version as a Kaggle session, by Kaggle's
    rules (tests/kaggle_twin.py), in folders under tmp_path/sessions; one thread per process."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kaggle_twin.root = tmp_path / "sessions"
    return kaggle_twin


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    return tmp_path_factory.mktemp("torch_home")


@pytest.fixture
def imagenet_twin(torch_home, monkeypatch):
    """torchvision's ImageNet weights served offline. `serve(arch)` builds a state dict for the
    architecture as torchvision ships it (1000 classes, auxiliary heads included), seeded, and
    puts it where torchvision's Weights.get_state_dict() finds it: the hub cache under
    $TORCH_HOME, named as the weights' URL. Unserved weights cannot be downloaded: https goes to
    a closed local port, as on a machine without network. Returns the served state dict."""
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)

    def serve(arch):
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        path = torch_home / "hub" / "checkpoints" / Path(weights.url).name
        if not path.exists():
            extra = {"aux_logits": True, "init_weights": True} if arch in models.AUX_ARCHS else {}
            torch.manual_seed(1234)
            model = torchvision.models.get_model(arch, weights=None,
                                                 num_classes=len(weights.meta["categories"]), **extra)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        return torch.load(path, weights_only=True)
    return serve
