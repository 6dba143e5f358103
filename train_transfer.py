"""Transfer learning on spectrogram images: an ImageNet torchvision backbone + a new head.

    python train_transfer.py --arch vgg16 --data data/images               # the study's best
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
features are cached (in memory and under OUT/.cache) and only the head trains.
"""
import copy
import hashlib
import sys
import time
from pathlib import Path

import torch

import common


def build_parser():
    p = common.ArgumentParser(prog="train_transfer.py", description=__doc__)
    common.add_common_args(p, data_default="data/images",
                           data_help="images from data_conversion.py: DATA/<genre>/*.png")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="vgg16", help="torchvision model name: vgg16, googlenet, "
                                                   "resnet50, resnet18, efficientnet_b0, ... (default vgg16)")
    m.add_argument("--weights", default="imagenet",
                   help="imagenet (torchvision download, cached), none (random init), or PATH "
                        "of a state dict for --arch (default imagenet)")
    m.add_argument("--finetune", action="store_true",
                   help="also train the backbone, at lr/10 (default: frozen, as in the study)")
    m.add_argument("--head-dropout", type=common.number(float, minimum=0, below=1), default=0.5,
                   help="dropout in the new head (default %(default)s)")
    common.add_image_args(m, "input side in pixels (default: the weights' own, 224 for most)",
                          img_size_minimum=1)
    m.add_argument("--cache-dir", help="where the frozen backbone's features are cached "
                                       "(default OUT/.cache)")
    return p


def parse_args(argv, check_paths=True):
    """Every flag, checked (and every path)."""
    return common.parse_run_args(build_parser(), argv, check_model=check_model, paths=check_paths)


def check_model(args):
    """--arch is a torchvision classification model (before any work)."""
    archs = common.classification_archs()
    if args.arch not in archs:
        raise common.SuiteError(f"unknown --arch {args.arch!r}; choose from: {', '.join(archs)}")


# ----------------------------------------------------------------------------------------------
# Pretrained weights: torchvision's ImageNet file (downloaded once into its cache), or a file

def imagenet_state_dict(arch):
    import torchvision
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT.get_state_dict(progress=True)
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
    unused = (net.replaced_classifier, *common.AUX_ARCHS.get(arch, ()))
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


def build_transfer(arch, n_classes, weights="imagenet", head_dropout=0.5, finetune=False):
    """(network, input size) for any torchvision classification model by name, with weights
    'imagenet' (torchvision's, downloaded once), 'none' (random) or a state-dict PATH."""
    net, size = common.transfer_network(arch, n_classes, head_dropout, finetune)
    if weights == "imagenet":
        load_backbone_weights(net, arch, imagenet_state_dict(arch), f"ImageNet weights of {arch}")
    elif weights != "none":
        load_backbone_weights(net, arch, file_state_dict(weights, arch), f"--weights {weights}")
    return net, size


# ----------------------------------------------------------------------------------------------
# The fast path: a frozen backbone runs once per image, the head trains on its cached features

def feature_cache_key(args, paths, img_size):
    """Same backbone, weights, size and image files -> same cached features (the seed matters
    only to a random backbone)."""
    seed = args.seed if args.weights == "none" else ""
    h = hashlib.sha256(f"{args.arch}|{args.weights}|{img_size}|{seed}".encode())
    weights = Path(args.weights)
    if weights.is_file():
        h.update(f"{weights.resolve()}|{weights.stat().st_mtime_ns}".encode())
    for path in paths:
        st = path.stat()
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def backbone_features(net, dataset, args, img_size, device, dist):
    """Run the frozen backbone once over every image (each rank its share), cached on disk.
    Returns (features, seconds the pass took: part of the time to converge, cached or not)."""
    folder = Path(args.cache_dir) if args.cache_dir else Path(args.out) / ".cache"
    cache = folder / f"features-{feature_cache_key(args, dataset.paths, img_size)}.pt"
    if cache.exists():
        print(f"features from {cache}")
        saved = torch.load(cache, weights_only=True)
        return saved["features"], saved["seconds"]
    start = time.time()
    autocast, _ = common.amp_tools(device)
    loader = common.make_loader(dataset, args.batch_size, False, args.seed, 0, device, dist)
    net = net.to(device)
    features = torch.from_numpy(common.predict_logits(net, loader, autocast, device, net.features,
                                                      desc=f"{args.arch} backbone", dist=dist))
    seconds = time.time() - start
    if dist.main:
        common.atomic_write(cache, lambda f: torch.save({"features": features, "seconds": seconds},
                                                        f), mode="wb")
    return features, seconds


@common.user_errors
def main(argv=None):
    args = parse_args(argv)
    classes = common.list_images(args.data)[2]
    common.seed_everything(args.seed)  # --weights none: the random backbone follows --seed
    pristine, crop = build_transfer(args.arch, len(classes), args.weights, args.head_dropout,
                                    args.finetune)
    img_size = args.img_size or crop
    try:  # a size the backbone cannot take fails now, in one line
        with torch.no_grad():
            pristine.eval().features(torch.zeros(1, 3, img_size, img_size, dtype=torch.uint8))
    except RuntimeError as e:
        raise common.SuiteError(f"--img-size {img_size}: {args.arch} cannot take images of this "
                                f"size ({str(e).splitlines()[0][:120]}); try {crop}") from None

    # data: every image decoded once into memory at the backbone's input size
    data = common.load_image_data(args.data, img_size, "rgb", args.cache_mb)
    dataset, classes = data.dataset, data.classes
    fast = not args.finetune and args.augment == "none"
    spec = {"kind": "transfer", "arch": args.arch, "n_classes": len(classes),
            "head_dropout": args.head_dropout, "finetune": args.finetune,
            "preprocess": {"type": "image", **data.conversion, "img_size": img_size}}
    notes = {"weights": args.weights if args.weights in ("imagenet", "none") else "file",
             "fast_path": fast, "img_size": img_size, "augment": args.augment}

    dist = common.Dist.from_env()
    with common.start_run(args, argv, "train_transfer.py", args.arch, classes=classes,
                          clip_ids=dataset.clip_ids, labels=dataset.labels, split_dir=args.data,
                          dist=dist) as run:
        features, backbone_seconds = None, 0.0
        for part in run.parts():  # the split, or each of the --folds
            train, val, test = common.image_parts(dataset, part.indices, args.augment, args.seed)
            model = copy.deepcopy(pristine)
            trained, fit_train, fit_val, groups = model, train, val, None
            if fast:  # the head trains on the backbone's features, computed once for all folds
                if features is None:
                    outputs, backbone_seconds = backbone_features(model, dataset, args, img_size,
                                                                  run.device, dist)
                    features = common.ArrayDataset(outputs, dataset.labels, dataset.clip_ids)
                trained = model.head
                fit_train, fit_val = (features.subset(part.indices[p]) for p in ("train", "val"))
            elif args.finetune:  # the backbone at a tenth of the head's learning rate
                groups = [{"params": model.head.parameters(), "lr": args.lr},
                          {"params": model.backbone.parameters(), "lr": args.lr / 10}]
            result = common.fit(trained, fit_train, fit_val, criterion=torch.nn.CrossEntropyLoss(),
                                param_groups=groups, device=run.device, dist=dist,
                                checkpoint=part.checkpoint, deadline=run.deadline,
                                **common.fit_options(args))
            tested = common.test_model(model, test, device=run.device, dist=dist,
                                       batch_size=args.batch_size)
            common.save(part, model, spec, tested, result, train=train, val=val, test=test,
                        prepare_seconds=backbone_seconds, notes=notes)
        common.summarize_folds(run)
    if args.predict and dist.main:
        common.predict_and_submit(run.model_file, args.predict, device=run.device,
                                  **common.predict_options(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
