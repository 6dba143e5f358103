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
    return p


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


def backbone_features(net, dataset, args, img_size, device):
    """Run the frozen backbone once over every image (each rank its share), cached on disk.
    Returns (features, seconds the pass took: part of the time to converge, cached or not)."""
    cache = Path(args.out) / ".cache" / f"features-{feature_cache_key(args, dataset.paths, img_size)}.pt"
    if cache.exists():
        print(f"features from {cache}")
        saved = torch.load(cache, weights_only=True)
        return saved["features"], saved["seconds"]
    start = time.time()
    autocast, _ = common.amp_tools(device)
    loader = common.make_loader(dataset, args.batch_size, False, args.seed, 0, device)
    net = net.to(device)
    features = torch.from_numpy(common.predict_logits(net, loader, autocast, device, net.features,
                                                      desc=f"{args.arch} backbone"))
    seconds = time.time() - start
    if common.DIST.main:
        common.atomic_write(cache, lambda f: torch.save({"features": features, "seconds": seconds},
                                                        f), mode="wb")
    return features, seconds


@common.user_errors
def main(argv=None):
    args = common.parse_run_args(build_parser(), argv)
    classes = common.list_images(args.data)[2]
    common.seed_everything(args.seed)  # --weights none: the random backbone follows --seed
    pristine, crop = common.build_transfer(args.arch, len(classes), args.weights,
                                           args.head_dropout, args.finetune)
    img_size = args.img_size or crop
    try:  # a size the backbone cannot take fails now, in one line
        with torch.no_grad():
            pristine.eval().features(torch.zeros(1, 3, img_size, img_size, dtype=torch.uint8))
    except RuntimeError as e:
        raise common.SuiteError(f"--img-size {img_size}: {args.arch} cannot take images of this "
                                f"size ({str(e).splitlines()[0][:120]}); try {crop}") from None
    data = common.load_image_data(args.data, img_size, "rgb", args.cache_mb)
    dataset, classes = data.dataset, data.classes
    fast = not args.finetune and args.augment == "none"
    spec = {"kind": "transfer", "arch": args.arch, "n_classes": len(classes),
            "head_dropout": args.head_dropout, "finetune": args.finetune,
            "preprocess": {"type": "image", **data.conversion, "img_size": img_size}}
    notes = {"weights": args.weights if args.weights in ("imagenet", "none") else "file",
             "fast_path": fast, "img_size": img_size, "augment": args.augment}
    features = None
    with common.start_run(args, argv, "train_transfer.py", args.arch, classes=classes,
                          clip_ids=dataset.clip_ids, labels=dataset.labels,
                          split_dir=args.data) as run:
        for part in run.parts():
            model = copy.deepcopy(pristine)
            train, val, test = common.image_parts(dataset, part.indices, args.augment)
            criterion = common.make_criterion("ce", len(classes))
            if not fast:
                groups = [{"params": model.head.parameters(), "lr": args.lr}]
                if args.finetune:
                    groups.append({"params": model.backbone.parameters(), "lr": args.lr / 10})
                part.train_and_test(model, spec, train, val, test, criterion=criterion,
                                    param_groups=groups, notes=notes)
                continue
            if features is None:  # once for all folds
                outputs, backbone_seconds = backbone_features(model, dataset, args, img_size,
                                                              run.device)
                features = common.ArrayDataset(outputs, dataset.labels, dataset.clip_ids)
            part.train_and_test(model, spec, train, val, test, criterion=criterion,
                                fit_model=model.head, fit_train=features.subset(part.indices["train"]),
                                fit_val=features.subset(part.indices["val"]),
                                prepare_seconds=backbone_seconds, notes=notes)
        run.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
