"""Every network of the suite, each starting with its own input preprocessing, so model.pt is all
prediction needs: ConvolNeuNet and SpecNet, torchvision backbones with a new head, PANNs' CNN14,
the features MLP; build_model(spec) rebuilds any of them, and the pretrained weights are found,
checked and loaded here.

Used by the trainers, predict.py and the kernels.
"""

import hashlib
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import SuiteError


def check_torchvision():
    """torchvision imports with this torch: a pair installed from two indexes does not
    ('operator torchvision::nms does not exist'). One line before any work, not a traceback
    minutes into it."""
    import importlib
    try:
        importlib.import_module("torchvision")  # a plain import would be an unused name
    except Exception as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise SuiteError(f"torch {torch.__version__} and the installed torchvision do not work "
                         f"together ({first}); reinstall both from one index, e.g. pip install "
                         "--force-reinstall torch torchvision --index-url "
                         "https://download.pytorch.org/whl/cpu") from None
# ----------------------------------------------------------------------------------------------
# Models: every model starts with its own input preprocessing, so model.pt is all predict needs

class InputNorm(nn.Module):
    """uint8 or float input -> float, scaled to 0..1 for images, then (x - mean) / std."""

    def __init__(self, mean, std, scale=1 / 255):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.scale = scale

    def forward(self, x):
        return (x.float() * self.scale - self.mean) / self.std


class ConvolNeuNet(nn.Module):
    """The study's CNN from scratch: conv 3->32->64->96 (3x3, pad 1, ReLU, 2x2 max-pool each),
    FC ->512->256->128->64->classes with dropout 0.5 after the first and third FC layers.
    fc1 has 96*(s/8)^2*512 weights: 201 M at 512x512 (0.8 GB, ~3.2 GB with Adam)."""

    def __init__(self, n_classes, img_size=512, in_channels=3):
        super().__init__()
        if not img_size or img_size % 8:
            raise SuiteError(f"--img-size {img_size}: ConvolNeuNet needs square images whose side "
                             "is a multiple of 8 (e.g. 256 or 512)")
        self.norm = InputNorm([0.0] * in_channels, [1.0] * in_channels)
        layers, width = [], in_channels
        for out in (32, 64, 96):
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            width = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(96 * (img_size // 8) ** 2, 512), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(512, 256), nn.ReLU(inplace=True),
            nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Linear(64, n_classes))

    def forward(self, x):
        return self.classifier(self.features(self.norm(x)))


class SpecNet(nn.Module):
    """A small modern CNN for spectrograms (0.29 M weights): four blocks of two 3x3 conv +
    batch norm + ReLU and a 2x2 max-pool (16, 32, 64, 128 channels), then the mean and the
    max over frequency and time (any input size), dropout 0.3 and one linear layer."""

    def __init__(self, n_classes, img_size=0, in_channels=1):
        super().__init__()
        self.norm = InputNorm([0.5] * in_channels, [0.25] * in_channels)
        layers, width = [], in_channels
        for out in (16, 32, 64, 128):
            for _ in range(2):
                layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                width = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * width, n_classes))

    def forward(self, x):
        maps = self.features(self.norm(x)).flatten(2)
        return self.classifier(torch.cat([maps.mean(2), maps.amax(2)], dim=1))


CNN_MODELS = {"convolneunet": ConvolNeuNet, "specnet": SpecNet}


def input_channels(model, given="auto"):
    """What a CNN reads from the PNGs: 'rgb' (the colormap's picture, the study's) or 'levels'
    (the dB level, one channel); --input auto: rgb for ConvolNeuNet, levels for the others."""
    return given if given != "auto" else ("rgb" if model == "convolneunet" else "levels")


def mlp_head(in_features, n_classes, dropout, widths=(512, 256, 128, 64)):
    layers = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, n_classes))


class TransferNet(nn.Module):
    """ImageNet backbone (its classifier replaced by Identity), or CNN14 on waveforms (no mean and
    std), + a new head. A frozen backbone stays in eval mode (BatchNorm statistics untouched), so
    head(backbone(x)) can be cached."""

    def __init__(self, backbone, head, mean=None, std=None, frozen=True, replaced_classifier=None):
        super().__init__()
        self.norm = nn.Identity() if mean is None else InputNorm(mean, std)
        self.backbone, self.head, self.frozen = backbone, head, frozen
        self.replaced_classifier = replaced_classifier  # its pretrained weights have no place here
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x):
        return self.backbone(self.norm(x))

    def forward(self, x):
        return self.head(self.features(x))


def classification_archs():
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


# GoogLeNet and Inception v3 are built as torchvision builds them for their ImageNet weights
# (transform_input on), whatever the weights' source, so model.pt rebuilds the same network;
# their auxiliary heads are dropped (not used by the frozen-backbone study, not pretrained).
AUX_ARCHS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


def transfer_network(arch, n_classes, head_dropout=0.5, finetune=False, spec_augment=False):
    """(TransferNet with random weights, input size) for any torchvision classification model by
    name, built as torchvision builds it for its ImageNet weights, or for PANNs' CNN14 ('cnn14').
    train_transfer.py loads the pretrained weights into it; model.pt rebuilds it. Input size:
    for torchvision models an image side, and mean and std, from the weights' own transforms
    (their crop size; the image is resized to it, not cropped: a spectrogram's edges are data);
    for cnn14 the sample rate (CNN14_SR) of the (batch, samples) float32 waveforms it takes."""
    if arch == "cnn14":
        net = TransferNet(Cnn14(spec_augment), mlp_head(2048, n_classes, head_dropout),
                          frozen=not finetune)
        return net, CNN14_SR
    import torchvision
    archs = classification_archs()
    if arch not in archs:
        raise SuiteError(f"unknown --arch {arch!r}; choose from: {', '.join(archs)}, cnn14")
    kwargs = {"transform_input": True, "aux_logits": False, "init_weights": True} \
        if arch in AUX_ARCHS else {}
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    for name in AUX_ARCHS.get(arch, ()):
        model.aux_logits = False
        setattr(model, name, None)
    in_features, classifier = replace_classifier(model, arch)
    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    net = TransferNet(model, mlp_head(in_features, n_classes, head_dropout), transforms.mean,
                      transforms.std, frozen=not finetune, replaced_classifier=classifier)
    return net, transforms.crop_size[0]


def replace_classifier(model, arch):
    """Swap the classifier for Identity; return (the feature width it received, its name in the
    model). For VGG and AlexNet the whole FC block goes (the study kept only the convolutional
    part); otherwise the last Linear layer."""
    if arch.startswith(("vgg", "alexnet")):
        in_features = next(m for m in model.classifier if isinstance(m, nn.Linear)).in_features
        model.classifier = nn.Identity()
        return in_features, "classifier"
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SuiteError(f"--arch {arch}: no Linear classifier to replace; pick another model")
    *parents, leaf = linears[-1].split(".")
    owner = model.get_submodule(".".join(parents)) if parents else model
    in_features = getattr(owner, leaf).in_features
    setattr(owner, leaf, nn.Identity())
    return in_features, linears[-1]


# PANNs' CNN14 (Kong et al. 2020), pretrained on AudioSet at 32 kHz: waveform -> 2048-d embedding.
# Names follow the published state dict, so its file loads as it is (train_transfer.py); its front
# end (the STFT as conv1d kernels, the mel matrix) is part of that file, used from it and frozen.
CNN14_SR = 32000


class Cnn14Block(nn.Module):
    """(3x3 conv without bias -> BatchNorm -> ReLU) x 2 -> average pooling."""

    def __init__(self, in_channels, out_channels, pool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(out_channels), nn.BatchNorm2d(out_channels)
        self.pool = pool
        nn.init.xavier_uniform_(self.conv1.weight)  # PANNs' initialisation
        nn.init.xavier_uniform_(self.conv2.weight)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return nn.functional.avg_pool2d(x, self.pool)


class Cnn14(nn.Module):
    """PANNs' CNN14 up to its embedding: (batch, samples) float32 at 32 kHz -> (batch, 2048).
    Log-mel: STFT 1024 / hop 320 (periodic Hann, centered, reflect padding), power, 64 Slaney mel
    bands 50-14000 Hz, 10*log10 (ref 1, amin 1e-10, no top_db). Then bn0 over the mel bands, six
    conv blocks (64 ... 2048 channels, 2x2 average pooling, 1x1 after the last, dropout 0.2 after
    each), mean over frequency, max + mean over time, dropout 0.5, fc1 + ReLU and dropout 0.5 (the
    published embedding, which PANNs fine-tunes from). spec_augment: PANNs' training-time
    SpecAugmentation after bn0 (2 time stripes < 64 frames, 2 frequency stripes < 8 bands), off
    by default. Mixup is the training loop's.

    The front end is written here rather than imported from torchlibrosa (as PANNs does): Kaggle's
    image does not ship torchlibrosa (Kaggle/docker-python's kaggle_requirements.txt lists no
    torchlibrosa) and an offline kernel installs nothing. tests/test_cnn14.py
    holds it equal to torchlibrosa's Spectrogram + LogmelFilterBank, key for key."""

    def __init__(self, spec_augment=False):
        super().__init__()
        import librosa
        n_fft, hop = 1024, 320
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * (k * n % n_fft) / n_fft  # mod first: exact for large k * n
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        stft = nn.ModuleDict({part: nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
                              for part in ("conv_real", "conv_imag")})
        stft.conv_real.weight.data = (torch.cos(angle) * window).float()[:, None]
        stft.conv_imag.weight.data = (-torch.sin(angle) * window).float()[:, None]
        self.spectrogram_extractor = nn.ModuleDict({"stft": stft})
        mel = librosa.filters.mel(sr=CNN14_SR, n_fft=n_fft, n_mels=64, fmin=50, fmax=14000)
        self.logmel_extractor = nn.ParameterDict({"melW": nn.Parameter(torch.from_numpy(mel.T))})
        self.spectrogram_extractor.requires_grad_(False)
        self.logmel_extractor.requires_grad_(False)
        self.bn0 = nn.BatchNorm2d(64)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(1, 7):
            setattr(self, f"conv_block{i}", Cnn14Block(widths[i - 1], widths[i], 2 if i < 6 else 1))
        self.fc1 = nn.Linear(2048, 2048)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        self.spec_augment = spec_augment

    def logmel(self, waveform):
        """(batch, samples) -> (batch, 1, frames, 64) dB, in float32 even under autocast: a
        full-scale tone's power overflows float16."""
        stft = self.spectrogram_extractor.stft
        with torch.autocast(waveform.device.type, enabled=False):
            x = nn.functional.pad(waveform.float()[:, None], (512, 512), mode="reflect")
            power = stft.conv_real(x) ** 2 + stft.conv_imag(x) ** 2      # (batch, 513, frames)
            mel = power.transpose(1, 2) @ self.logmel_extractor.melW     # (batch, frames, 64)
            return 10 * torch.log10(mel.clamp(min=1e-10))[:, None]

    def forward(self, waveform):
        x = self.bn0(self.logmel(waveform).transpose(1, 3)).transpose(1, 3)
        if self.spec_augment and self.training:
            x = drop_stripes(drop_stripes(x, 2, 64, 2), 3, 8, 2)
        for i in range(1, 7):
            x = nn.functional.dropout(getattr(self, f"conv_block{i}")(x), 0.2, self.training)
        x = x.mean(dim=3)                   # over frequency
        x = x.amax(dim=2) + x.mean(dim=2)   # over time
        x = torch.relu(self.fc1(nn.functional.dropout(x, 0.5, self.training)))
        return nn.functional.dropout(x, 0.5, self.training)


def drop_stripes(x, dim, max_width, stripes):
    """Zero `stripes` stripes of 0 to max_width - 1 rows along dim, placed at random in each
    example, as PANNs' SpecAugmentation (torchlibrosa's DropStripes) does, but not in place."""
    batch, size = x.shape[0], x.shape[dim]
    width = torch.randint(0, max_width, (batch, stripes, 1), device=x.device).clamp(max=size)
    start = (torch.rand(batch, stripes, 1, device=x.device) * (size - width)).long()
    index = torch.arange(size, device=x.device)
    drop = ((index >= start) & (index < start + width)).any(dim=1)  # (batch, size)
    shape = [batch, 1, 1, 1]
    shape[dim] = size
    return x.masked_fill(drop.view(shape), 0.0)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
               "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}


class FeatureMLP(nn.Module):
    """StandardScaler and PCA (fitted with scikit-learn on training rows, stored as buffers)
    followed by Linear/activation/dropout layers."""

    def __init__(self, n_inputs, n_components, hidden, n_classes, dropout=0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("scale", torch.ones(n_inputs))
        self.register_buffer("pca_mean", torch.zeros(n_inputs))
        self.register_buffer("components", torch.eye(n_inputs)[:n_components])
        layers, width = [], n_components
        for out, act in hidden:
            layers += [nn.Linear(width, out), ACTIVATIONS[act]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = out
        self.net = nn.Sequential(*layers, nn.Linear(width, n_classes))

    def set_preprocessing(self, scaler, pca=None):
        self.mean.copy_(torch.as_tensor(scaler.mean_))
        self.scale.copy_(torch.as_tensor(scaler.scale_))
        if pca is not None:
            self.pca_mean.copy_(torch.as_tensor(pca.mean_))
            self.components.copy_(torch.as_tensor(pca.components_))

    def preprocess(self, x):
        return ((x - self.mean) / self.scale - self.pca_mean) @ self.components.T

    def forward(self, x):
        return self.net(self.preprocess(x.float()))


# Model kinds: model.pt's spec["kind"] -> the function that rebuilds the network from the spec.
MODEL_KINDS = {
    "cnn": lambda spec: CNN_MODELS[spec.get("model", "convolneunet")](spec["n_classes"], spec["img_size"],
                                                  spec.get("in_channels", 3)),
    "transfer": lambda spec: transfer_network(spec["arch"], spec["n_classes"], spec["head_dropout"],
                                              spec.get("finetune", False))[0],
    "mlp": lambda spec: FeatureMLP(spec["n_inputs"], spec["n_components"], spec["hidden"],
                                   spec["n_classes"], spec["dropout"]),
}


def build_model(spec):
    """Rebuild a model from the plain-dict spec stored in model.pt (random weights)."""
    if spec.get("kind") not in MODEL_KINDS:
        raise SuiteError(f"unknown model kind {spec.get('kind')!r}; known: {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[spec["kind"]](spec)


# ----------------------------------------------------------------------------------------------
# Submissions: what the trainers' flag checks and predict.py share

def estimator_scores(estimator, x):
    """A scikit-learn classifier's decision scores as (n, classes), standing in for logits."""
    scores = np.asarray(estimator.decision_function(x), np.float32)
    return np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores


# ----------------------------------------------------------------------------------------------
# Pretrained weights: torchvision's ImageNet file (downloaded once into its cache), or a file

def pretrained_weights(arch, weights=None):
    """--weights, or when left out the architecture's pretrained ones."""
    return weights or ("panns" if arch == "cnn14" else "imagenet")


def imagenet_file_name(arch):
    """torchvision's file for the architecture's default weights (vgg16-397923af.pth): the name
    a data set must hold them under (the hex is the start of the file's SHA-256)."""
    import torchvision
    return Path(torchvision.models.get_model_weights(arch).DEFAULT.url).name


def imagenet_state_dict(arch):
    """torchvision's weights, downloaded once into torch's hub cache; a download is kept only
    when its SHA-256 starts with the hash in the file's name (torch.hub's check_hash)."""
    import torchvision
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT.get_state_dict(
            progress=True, check_hash=True)
    except Exception as e:
        raise SuiteError(
            f"could not download ImageNet weights for {arch} ({type(e).__name__}: {e}); "
            f"pass --weights PATH (a torchvision state dict for {arch}, e.g. attached to a "
            "Kaggle kernel as a dataset) or --weights none", code=2) from None


def file_state_dict(path, arch):
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"--weights {path}: no such file (or use imagenet / none)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SuiteError(f"--weights {path}: not a loadable state dict ({type(e).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise SuiteError(f"--weights {path}: expected a state dict of {arch}")
    return state


def load_backbone_weights(net, arch, state, source):
    """torchvision's weights into the backbone; their classifier and auxiliary heads (replaced
    and dropped here) are left out; a file of another network is refused in one line."""
    unused = (net.replaced_classifier, *AUX_ARCHS.get(arch, ()))
    state = {k: v for k, v in state.items()
             if not any(k == u or k.startswith(u + ".") for u in unused)}
    own = net.backbone.state_dict()
    wrong = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    if wrong:
        raise SuiteError(f"{source} does not fit {arch}: {len(wrong)} tensors of another "
                         f"shape (e.g. {wrong[0]}: {tuple(getattr(state[wrong[0]], 'shape', ()))} "
                         f"there, {tuple(own[wrong[0]].shape)} in {arch})")
    result = net.backbone.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise SuiteError(f"{source} does not fit {arch}: {len(result.missing_keys)} missing "
                         f"keys (e.g. {', '.join(result.missing_keys[:3])}), "
                         f"{len(result.unexpected_keys)} unexpected")
    if result.unexpected_keys:
        print(f"warning: {source}: ignored {len(result.unexpected_keys)} unexpected keys "
              f"(e.g. {', '.join(result.unexpected_keys[:3])})", file=sys.stderr)


def build_transfer(arch, n_classes, weights="imagenet", head_dropout=0.5, finetune=False,
                   spec_augment=False):
    """(network, input size) for any torchvision classification model by name, with weights
    'imagenet' (torchvision's, downloaded once), 'none' (random) or a state-dict PATH; or for
    PANNs' CNN14 ('cnn14', input: its sample rate) with 'panns' (downloaded once), 'none' or
    PATH (the published file, or a state dict), and PANNs' SpecAugmentation when training if
    spec_augment."""
    net, size = transfer_network(arch, n_classes, head_dropout, finetune, spec_augment)
    if arch == "cnn14":
        if weights == "imagenet":
            raise SuiteError("--arch cnn14 is pretrained on AudioSet, not ImageNet: "
                             "--weights panns, PATH or none")
        if weights != "none":
            load_cnn14_weights(net.backbone, cnn14_weights_path() if weights == "panns" else weights)
    elif weights == "imagenet":
        load_backbone_weights(net, arch, imagenet_state_dict(arch), f"ImageNet weights of {arch}")
    elif weights != "none":
        load_backbone_weights(net, arch, file_state_dict(weights, arch), f"--weights {weights}")
    return net, size


# PANNs' CNN14 weights: the published file (Zenodo record 3987831), downloaded once into torch's
# hub cache, or a file (e.g. attached to a Kaggle kernel as a data set)
CNN14_URL = "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
CNN14_FILE = "Cnn14_mAP=0.431.pth"
CNN14_MD5 = "541141fa2ee191a88f24a3219fff024e"  # Zenodo's checksum of the file


def cnn14_numpy_globals():
    """What a weights-only load must allow for PANNs' checkpoint beyond tensors: its sampler's
    state holds int64 index arrays and a RandomState.get_state() tuple (a uint32 array and plain
    numbers), pickled by NumPy 1.x as numpy.core..., which NumPy 2 calls numpy._core."""
    reconstruct = np.zeros(0).__reduce__()[0]  # what an ndarray is pickled with
    return [np.ndarray, np.dtype, type(np.dtype(np.int64)), type(np.dtype(np.uint32)),
            (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct")]


def load_cnn14_weights(model, path):
    """Load CNN14 weights into a Cnn14: PANNs' published file (a dict whose "model" is the state
    dict) or a plain state dict. Its AudioSet head (fc_audioset) is skipped; any other tensor
    missing, extra or of another shape refuses the file."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"--weights {path}: no such file (or use panns / none)")
    try:
        with torch.serialization.safe_globals(cnn14_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        found = re.search(r"(GLOBAL \S+|got <class '[^']+'>)", str(e))
        why = f"{found[1]}, refused by a weights-only load" if found else type(e).__name__
        raise SuiteError(f"--weights {path}: not a loadable CNN14 file ({why})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise SuiteError(f"--weights {path}: expected PANNs' CNN14 checkpoint or a state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc_audioset.")}
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise SuiteError(f"--weights {path} is not CNN14: it holds {key}, which CNN14 has not")
        if getattr(value, "shape", None) != own[key].shape:
            raise SuiteError(f"--weights {path} does not fit CNN14: {key} is "
                             f"{tuple(getattr(value, 'shape', ()))} there, "
                             f"{tuple(own[key].shape)} in CNN14")
    missing = [k for k in own if k not in state]
    if missing:
        raise SuiteError(f"--weights {path} does not fit CNN14: {len(missing)} tensors "
                         f"missing (e.g. {missing[0]})")
    model.load_state_dict(state)


def cnn14_weights_path():
    """PANNs' published CNN14 file in torch's hub cache, downloaded once (and kept only when it
    has Zenodo's MD5 and loads as CNN14)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / CNN14_FILE
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(CNN14_URL, str(path))
        except Exception as e:
            raise SuiteError(
                f"could not download PANNs' CNN14 weights ({type(e).__name__}: "
                f"{' '.join(str(e).split())}); pass --weights PATH ({CNN14_FILE} from "
                "zenodo.org/record/3987831, e.g. attached to a Kaggle kernel as a data set) or "
                "--weights none", code=2) from None
        try:
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest != CNN14_MD5:
                raise SuiteError(f"{path}: not the published file (its MD5 is {digest}, "
                                 f"Zenodo lists {CNN14_MD5}); not kept", code=2)
            load_cnn14_weights(Cnn14(), path)
        except SuiteError:
            path.unlink()
            raise
    return path
