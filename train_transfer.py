"""Transfer learning: an ImageNet torchvision backbone on spectrogram images, or PANNs' CNN14
(pretrained on AudioSet) on the audio itself, + a new head.

    python train_transfer.py --arch vgg16 --data data/images               # the study's best
    python train_transfer.py --arch cnn14 --data data/gtzan/Data/genres_original   # audio
    python train_transfer.py --arch vgg16 --data data/images --augment     # + RandomRotation(15)
    python train_transfer.py --arch googlenet --data data/images
    python train_transfer.py --arch resnet50 --data data/images --finetune
    python train_transfer.py --arch vgg16 --weights none ...               # offline, no ImageNet
    python train_transfer.py --arch resnet50 --weights /kaggle/input/w/resnet50-11ad3fa6.pth ...

--arch: vgg16, googlenet, resnet50 (the study's), or any torchvision classification model by name
(resnet18, efficientnet_b0, convnext_tiny, ...). The backbone is frozen (as in the study) and
its classifier replaced by in_features -> 512 -> 256 -> 128 -> 64 -> classes (ReLU, dropout).
Input size, mean and std are the weights' own (224 for most, 299 for inception_v3); the image
is resized to that size, not cropped. --finetune also trains the backbone at a 10x smaller
learning rate. With a frozen backbone and no --augment the backbone runs once per image: its
features are cached (in memory and in the suite's cache, common.cache_dir) and only the head
trains.

--arch cnn14 reads audio (genre sub-folders, or flat with --labels), decoded to mono at 32 kHz
as PANNs does (not normalized) and cut into --clip-seconds windows (scored per clip); its
embedding (2048) feeds the head. --weights panns downloads PANNs' published file once into
torch's hub cache; offline, attach Cnn14_mAP=0.431.pth and pass --weights PATH. --finetune
trains the whole network; --augment specaugment then adds PANNs' SpecAugmentation, and
--mixup A mixes waveforms (PANNs mixes log-mels inside the network).
"""
import copy
import hashlib
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

import audio
import common
import data
import models
import predict
import reports
import runs
import training


def build_parser():
    p = common.ArgumentParser(prog="train_transfer.py", description=__doc__)
    runs.add_common_args(p, data_default="data/images",
                           data_help="images from data_conversion.py: DATA/<genre>/*.png; for "
                                     "--arch cnn14 audio: DATA/<genre>/*.wav (or flat + --labels)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="vgg16", help="torchvision model name: vgg16, googlenet, "
                   "resnet50, resnet18, efficientnet_b0, ...; or cnn14, PANNs' audio network "
                   "(default vgg16)")
    m.add_argument("--weights", help="imagenet (torchvision's, downloaded once), panns (CNN14's "
                   "AudioSet weights, downloaded once), none (random init), or PATH of a weights "
                   "file for --arch (default: imagenet, or panns for cnn14)")
    m.add_argument("--finetune", action="store_true",
                   help="also train the backbone, at lr/10 (default: frozen, as in the study)")
    m.add_argument("--head-dropout", type=common.bounded(float, minimum=0, below=1), default=0.5,
                   help="dropout in the new head (default %(default)s)")
    runs.add_image_args(m, "input side in pixels (default: the weights' own, 224 for most)",
                          img_size_minimum=1)
    m.add_argument("--cache-dir", help="where the frozen backbone's features are cached "
                                       "(default: the suite's cache, $SUITE_CACHE/backbone or "
                                       "~/.cache/music-genre-suite/backbone)")
    a = p.add_argument_group("audio (--arch cnn14)")
    a.add_argument("--labels", help="CSV id,label for a flat folder of audio (Kaggle style)")
    a.add_argument("--clip-seconds", type=common.bounded(float, above=0), default=30.0,
                   help="window length: longer clips are cut into windows scored per clip, "
                        "shorter ones padded with silence (default %(default)s, GTZAN's clips)")
    return p


def parse_args(argv, check_paths=True):
    """Every flag, checked (and every path)."""
    return runs.parse_run_args(build_parser(), argv, check_model=check_model, paths=check_paths)


def weights_of(args):
    """--weights, or when left out the architecture's pretrained ones."""
    return args.weights or ("panns" if args.arch == "cnn14" else "imagenet")


def check_model(args):
    """--arch is a torchvision classification model or cnn14, and its weights, augmentation and
    other flags fit it (before any work)."""
    archs = models.classification_archs()
    if args.arch not in archs + ["cnn14"]:
        raise common.SuiteError(f"unknown --arch {args.arch!r}; choose from: {', '.join(archs)}, cnn14")
    audio = args.arch == "cnn14"
    parser = build_parser()
    if audio:
        runs.refuse_unused(parser, args, ("img_size", "cache_mb"), "cnn14 reads audio, not "
                             "images (--clip-seconds sets its input)")
    else:
        runs.refuse_unused(parser, args, ("clip_seconds",), "only --arch cnn14 reads audio "
                             "in windows; images are resized to --img-size")
    if args.finetune or args.augment != "none":
        runs.refuse_unused(parser, args, ("cache_dir",), "nothing is cached when the backbone "
                             "trains or sees augmented images (--finetune, --augment)")
    if weights_of(args) == ("imagenet" if audio else "panns"):
        raise common.SuiteError(f"--weights {args.weights}: {args.arch} is pretrained on "
                                + ("AudioSet: --weights panns, PATH or none" if audio else
                                   "ImageNet: --weights imagenet, PATH or none"))
    if audio and args.augment == "rotate":
        raise common.SuiteError("--augment rotate: cnn14 reads audio, not images; use --augment "
                                "specaugment (with --finetune)")
    if audio and args.augment == "specaugment" and not args.finetune:
        raise common.SuiteError("--augment specaugment: a frozen CNN14 runs in eval mode, where "
                                "PANNs' SpecAugmentation is off; add --finetune")
    if not audio and args.labels:
        raise common.SuiteError("--labels: only --arch cnn14 reads audio; images carry their "
                                "labels in their folders")


# ----------------------------------------------------------------------------------------------
# Pretrained weights: torchvision's ImageNet file (downloaded once into its cache), or a file

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
        raise common.SuiteError(
            f"could not download ImageNet weights for {arch} ({type(e).__name__}: {e}); "
            f"pass --weights PATH (a torchvision state dict for {arch}, e.g. attached to a "
            "Kaggle kernel as a dataset) or --weights none", code=2) from None


def file_state_dict(path, arch):
    path = Path(path)
    if not path.is_file():
        raise common.SuiteError(f"--weights {path}: no such file (or use imagenet / none)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise common.SuiteError(f"--weights {path}: not a loadable state dict ({type(e).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise common.SuiteError(f"--weights {path}: expected a state dict of {arch}")
    return state


def load_backbone_weights(net, arch, state, source):
    """torchvision's weights into the backbone; their classifier and auxiliary heads (replaced
    and dropped here) are left out; a file of another network is refused in one line."""
    unused = (net.replaced_classifier, *models.AUX_ARCHS.get(arch, ()))
    state = {k: v for k, v in state.items()
             if not any(k == u or k.startswith(u + ".") for u in unused)}
    own = net.backbone.state_dict()
    wrong = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    if wrong:
        raise common.SuiteError(f"{source} does not fit {arch}: {len(wrong)} tensors of another "
                                f"shape (e.g. {wrong[0]}: {tuple(getattr(state[wrong[0]], 'shape', ()))} "
                                f"there, {tuple(own[wrong[0]].shape)} in {arch})")
    result = net.backbone.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise common.SuiteError(f"{source} does not fit {arch}: {len(result.missing_keys)} missing "
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
    net, size = models.transfer_network(arch, n_classes, head_dropout, finetune, spec_augment)
    if arch == "cnn14":
        if weights == "imagenet":
            raise common.SuiteError("--arch cnn14 is pretrained on AudioSet, not ImageNet: "
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
        raise common.SuiteError(f"--weights {path}: no such file (or use panns / none)")
    try:
        with torch.serialization.safe_globals(cnn14_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        found = re.search(r"(GLOBAL \S+|got <class '[^']+'>)", str(e))
        why = f"{found[1]}, refused by a weights-only load" if found else type(e).__name__
        raise common.SuiteError(f"--weights {path}: not a loadable CNN14 file ({why})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise common.SuiteError(f"--weights {path}: expected PANNs' CNN14 checkpoint or a state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc_audioset.")}
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise common.SuiteError(f"--weights {path} is not CNN14: it holds {key}, which CNN14 has not")
        if getattr(value, "shape", None) != own[key].shape:
            raise common.SuiteError(f"--weights {path} does not fit CNN14: {key} is "
                                    f"{tuple(getattr(value, 'shape', ()))} there, "
                                    f"{tuple(own[key].shape)} in CNN14")
    missing = [k for k in own if k not in state]
    if missing:
        raise common.SuiteError(f"--weights {path} does not fit CNN14: {len(missing)} tensors "
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
            raise common.SuiteError(
                f"could not download PANNs' CNN14 weights ({type(e).__name__}: "
                f"{' '.join(str(e).split())}); pass --weights PATH ({CNN14_FILE} from "
                "zenodo.org/record/3987831, e.g. attached to a Kaggle kernel as a data set) or "
                "--weights none", code=2) from None
        try:
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest != CNN14_MD5:
                raise common.SuiteError(f"{path}: not the published file (its MD5 is {digest}, "
                                        f"Zenodo lists {CNN14_MD5}); not kept", code=2)
            load_cnn14_weights(models.Cnn14(), path)
        except common.SuiteError:
            path.unlink()
            raise
    return path


# ----------------------------------------------------------------------------------------------
# Audio for CNN14: every clip decoded once at 32 kHz, cut into windows of --clip-seconds

def window_job(job):
    """Worker: (path, sr, seconds) -> (path, windows or None, error)."""
    path, sr, seconds = job
    try:
        return path, audio.audio_windows(path, sr, seconds), None
    except common.BadAudio as e:
        return path, None, e.reason
    except Exception as e:  # a decoder crash must not stop the other files
        return path, None, f"{type(e).__name__}: {e}"


def load_audio_windows(audio_dir, labels_csv, sr, seconds, workers):
    """(ArrayDataset of float32 windows, classes) for a labeled audio folder; an unreadable file
    is named in a warning and left out."""
    root = Path(audio_dir)
    items = audio.list_labeled_audio(root, labels_csv)
    classes = sorted({label for _, label in items})
    label_of = {path: label for path, label in items}
    windows, labels, clip_ids, paths = [], [], [], []
    for path, clip, error in common.parallel_map(window_job, [(p, sr, seconds) for p, _ in items],
                                                 workers, "audio"):
        if error:
            print(f"warning: skipped {path}: {error}", file=sys.stderr)
            continue
        windows.append(torch.from_numpy(clip))
        labels += [classes.index(label_of[path])] * len(clip)
        clip_ids += [audio.clip_id_of(path.name)] * len(clip)
        paths += [path] * len(clip)
    if len(set(labels)) < 2:
        raise common.SuiteError(f"--data {root}: audio of fewer than two classes could be read")
    dataset = data.ArrayDataset(torch.cat(windows), labels, clip_ids)
    dataset.paths = paths
    return dataset, classes


# ----------------------------------------------------------------------------------------------
# The fast path: a frozen backbone runs once per image, the head trains on its cached features

def feature_cache_key(args, paths, img_size):
    """Same backbone, weights, input size (image side, or window seconds) and files -> same
    cached features (the seed matters only to a random backbone)."""
    seed = args.seed if weights_of(args) == "none" else ""
    h = hashlib.sha256(f"{args.arch}|{weights_of(args)}|{img_size}|{args.clip_seconds}|{seed}".encode())
    weights = Path(weights_of(args))
    if weights.is_file():
        h.update(f"{weights.resolve()}|{weights.stat().st_mtime_ns}".encode())
    for path in paths:
        st = path.stat()
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def backbone_features(net, dataset, args, img_size, device, dist, folder):
    """Run the frozen backbone once over every image (each rank its share), cached on disk in
    `folder` (None: not cached). Returns (features, seconds the pass took: part of the time to
    converge, cached or not)."""
    cache = folder / f"features-{feature_cache_key(args, dataset.paths, img_size)}.pt" \
        if folder else None
    if cache and cache.exists():
        try:
            saved = torch.load(cache, weights_only=True)
            if len(saved["features"]) == len(dataset):
                print(f"features from {cache}")
                return saved["features"], saved["seconds"]
        except Exception as e:  # cut short by a full disk or a killed copy: computed again
            print(f"warning: {cache} is damaged ({type(e).__name__}); computing the features again",
                  file=sys.stderr)
    start = time.time()
    autocast, _ = training.amp_tools(device)
    loader = training.make_loader(dataset, args.batch_size, False, args.seed, 0, device, dist)
    net = training.on_device(net, device, images=dataset.holds_images)
    features = torch.from_numpy(training.predict_logits(net, loader, autocast, device, net.features,
                                                      desc=f"{args.arch} backbone", dist=dist))
    seconds = time.time() - start
    if dist.main and cache:
        common.atomic_write(cache, lambda f: torch.save({"features": features, "seconds": seconds},
                                                        f), mode="wb")
    return features, seconds


@common.user_errors
def main(argv=None, started=None):
    """The command; started: the time.time() --time-limit counts from (default: now)."""
    started = started or time.time()
    args = parse_args(argv)
    fast = not args.finetune and args.augment == "none"
    cache = common.usable_cache("backbone", args.cache_dir, "--cache-dir") if fast else None
    reads_audio = args.arch == "cnn14"
    if reads_audio and (next(Path(args.data).glob("*/*.png"), None) or
                  (Path(args.data) / audio.CONVERSION_FILE).exists()):
        raise common.SuiteError(f"--data {args.data}: spectrogram images; --arch cnn14 reads the "
                                "audio they were made from: give that folder")
    classes = sorted({label for _, label in audio.list_labeled_audio(args.data, args.labels)}) \
        if reads_audio else data.list_images(args.data)[2]
    training.seed_everything(args.seed)  # --weights none: the random backbone follows --seed
    pristine, input_size = build_transfer(args.arch, len(classes), weights_of(args),
                                          args.head_dropout, args.finetune,
                                          spec_augment=reads_audio and args.augment == "specaugment")
    img_size = None if reads_audio else args.img_size or input_size
    if not reads_audio:
        try:  # a size the backbone cannot take fails now, in one line
            with torch.no_grad():
                pristine.eval().features(torch.zeros(1, 3, img_size, img_size, dtype=torch.uint8))
        except RuntimeError as e:
            raise common.SuiteError(f"--img-size {img_size}: {args.arch} cannot take images of "
                                    f"this size ({str(e).splitlines()[0][:120]}); try {input_size}") from None

    # data: every image decoded once into memory at the backbone's input size; or every clip's
    # audio windows at CNN14's sample rate
    if reads_audio:
        dataset, classes = load_audio_windows(args.data, args.labels, input_size,
                                              args.clip_seconds, args.workers)
        preprocess = {"type": "audio", "sr": input_size, "clip_seconds": args.clip_seconds}
    else:
        images = data.load_image_data(args.data, img_size, "rgb", args.cache_mb)
        dataset, classes = images.dataset, images.classes
        preprocess = {"type": "image", **images.conversion, "img_size": img_size}
    spec = {"kind": "transfer", "arch": args.arch, "n_classes": len(classes),
            "head_dropout": args.head_dropout, "finetune": args.finetune, "preprocess": preprocess}
    weights = weights_of(args)
    notes = {"weights": weights if weights in ("imagenet", "panns", "none") else "file",
             "fast_path": fast, "img_size": img_size, "augment": args.augment}

    # processes (torchrun's, or this one), device, and the clips each part trains and tests on
    dist = training.Dist.from_env()
    device = dist.setup(training.pick_device(args.device))
    splits = data.resolve_splits(args, dataset.clip_ids, dataset.labels, args.data, dist.log)
    with runs.start_run(args, argv, "train_transfer.py", args.arch, classes=classes,
                          splits=splits, clip_ids=dataset.clip_ids, device=device, dist=dist,
                          started=started) as run:
        features, backbone_seconds = None, 0.0
        for part in run.parts():  # the split, or each of the --folds not finished before
            training.seed_everything(args.seed)  # each part starts as an uninterrupted run's did
            train, val, test = data.split_parts(dataset, part.indices)
            model = copy.deepcopy(pristine)
            trained, fit_train, fit_val, groups = model, train, val, None
            if fast:  # the head trains on the backbone's features, computed once for all folds
                if features is None:
                    outputs, backbone_seconds = backbone_features(model, dataset, args, img_size,
                                                                  device, dist, cache)
                    features = data.ArrayDataset(outputs, dataset.labels, dataset.clip_ids)
                trained = model.head
                fit_train, fit_val = (features.subset(part.indices[p]) for p in ("train", "val"))
            elif args.finetune:  # the backbone at a tenth of the head's learning rate
                groups = [{"params": model.head.parameters(), "lr": args.lr},
                          {"params": model.backbone.parameters(), "lr": args.lr / 10}]
            result = training.fit(trained, fit_train, fit_val, criterion=torch.nn.CrossEntropyLoss(),
                                augment="none" if reads_audio or fast else args.augment,
                                param_groups=groups, device=device, dist=dist,
                                checkpoint=part.checkpoint, deadline=run.deadline,
                                **training.fit_options(args))
            tested = reports.test_model(model, test, device=device, dist=dist,
                                       batch_size=args.batch_size)
            report = reports.test_report(part, args.arch, classes, tested, result, train=train,
                                        val=val, test=test, prepare_seconds=backbone_seconds,
                                        notes=notes)
            runs.save(part, model, spec, report, train=train)
            if not result.complete:
                break  # stopped by --time-limit: the other parts wait for --resume
        runs.summarize_folds(run)
    if args.predict and dist.main:
        predict.predict_and_submit(run.model_file, args.predict, device=device,
                                   **predict.options(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
