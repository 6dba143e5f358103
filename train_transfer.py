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
import sys
import time
from pathlib import Path

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


def check_model(args):
    """--arch is a torchvision classification model or cnn14, and its weights, augmentation and
    other flags fit it (before any work)."""
    archs = models.classification_archs()
    if args.arch not in archs + ["cnn14"]:
        raise common.SuiteError(f"unknown --arch {args.arch!r}; choose from: {', '.join(archs)}, cnn14")
    audio = args.arch == "cnn14"
    parser = build_parser()
    if audio:
        common.refuse_unused(parser, args, ("img_size", "cache_mb"), "cnn14 reads audio, not "
                           "images (--clip-seconds sets its input)")
    else:
        common.refuse_unused(parser, args, ("clip_seconds",), "only --arch cnn14 reads audio "
                           "in windows; images are resized to --img-size")
    if args.finetune or args.augment != "none":
        common.refuse_unused(parser, args, ("cache_dir",), "nothing is cached when the backbone "
                           "trains or sees augmented images (--finetune, --augment)")
    if models.pretrained_weights(args.arch, args.weights) == ("imagenet" if audio else "panns"):
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
# Audio for CNN14: every clip decoded once at 32 kHz, cut into windows of --clip-seconds

def window_job(job):
    """Worker: (path, sr, seconds) -> (path, windows or None, error)."""
    path, sr, seconds = job
    try:
        return path, audio.audio_windows(path, sr, seconds), None
    except Exception as e:
        return path, None, common.file_failure(e)


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
    dataset = data.ArrayDataset(torch.cat(windows), labels, clip_ids, paths=paths)
    return dataset, classes


# ----------------------------------------------------------------------------------------------
# The fast path: a frozen backbone runs once per image, the head trains on its cached features

def feature_cache_key(args, paths, img_size):
    """Same backbone, weights, input size (image side, or window seconds) and files -> same
    cached features (the seed matters only to a random backbone)."""
    seed = args.seed if models.pretrained_weights(args.arch, args.weights) == "none" else ""
    h = hashlib.sha256(f"{args.arch}|{models.pretrained_weights(args.arch, args.weights)}|{img_size}|{args.clip_seconds}|{seed}".encode())
    weights = Path(models.pretrained_weights(args.arch, args.weights))
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
    pristine, input_size = models.build_transfer(args.arch, len(classes), models.pretrained_weights(args.arch, args.weights),
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
    weights = models.pretrained_weights(args.arch, args.weights)
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


cli = common.user_errors(main)  # the command line: a SuiteError is one line and an exit code


if __name__ == "__main__":
    sys.exit(cli())
