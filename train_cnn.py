"""Train a CNN from scratch on spectrogram images: the study's ConvolNeuNet, or SpecNet.

    python train_cnn.py --data data/images --img-size 256               # the study's CNN
    python train_cnn.py --data data/seg3 --img-size 256 --augment       # + RandomRotation(15)
    python train_cnn.py --data data/mel3 --model specnet                 # the better CNN
    python train_cnn.py --data data/seg3 --img-size 256 --folds 5
    torchrun --nproc_per_node 2 train_cnn.py --data data/images --img-size 256

--model convolneunet (default) is the study's network on the RGB images, faithful to it.
At --img-size 512 its first FC layer alone has 96*64*64*512 = 201 M weights (0.8 GB in fp32,
3.2 GB with gradients and Adam's state; 6.4 GB peak RSS measured on CPU at batch 16, with the
best-weights copy and activations); 256 needs a quarter (2.1 GB peak) and trains 4-6x faster.
--model specnet is a small modern CNN (0.29 M weights, batch norm, pooling over frequency and
time, so any image size) that reads the dB levels the PNGs store (--input levels), with its
own defaults: --schedule cosine --epochs 30 --mixup 0.2 (MODEL_DEFAULTS; measured in the README).
Images of <clip>__sNN segments are scored per clip (mean of the segment logits). Writes
runs/<name>/ with config, history, metrics, curves, confusion, model.pt; --resume continues it.
"""
import sys
from pathlib import Path

import common

# Optimization defaults per model, where they differ from the study's (common.add_common_args).
# SpecNet: on 30 training clips, choosing an epoch by 10 validation clips picks noise; a fixed
# cosine run with mixup does better (bench/bench_accuracy.py, README).
MODEL_DEFAULTS = {"convolneunet": {}, "specnet": {"schedule": "cosine", "epochs": 30, "mixup": 0.2}}


def build_parser(model="convolneunet"):
    p = common.ArgumentParser(prog="train_cnn.py", description=__doc__)
    common.add_common_args(p, data_default="data/images",
                           data_help="images from data_conversion.py: DATA/<genre>/*.png")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=list(common.CNN_MODELS), default="convolneunet",
                   help="convolneunet: the study's (default); specnet: small, batch norm, any size")
    m.add_argument("--input", choices=["auto", "rgb", "levels"], default="auto",
                   help="rgb: the colormap picture (the study's); levels: the dB level the PNG "
                        "stores, one channel (default auto: rgb for convolneunet, levels for specnet)")
    common.add_image_args(m, "resize images to this square side; 0 keeps their size (default: "
                             "the size the images were made at)", img_size_minimum=0)
    p.set_defaults(**MODEL_DEFAULTS[model])
    return p


def parse_args(argv):
    """--model first, for its defaults; then every flag, checked."""
    model = build_parser().parse_known_args(argv)[0].model
    return common.parse_run_args(build_parser(model), argv)


def images_size(data):
    """The side the images were made at (conversion.json), else their own side when square,
    else 0 (each its own size)."""
    if (Path(data) / common.CONVERSION_FILE).exists():
        return common.read_conversion(data)["size"]
    height, width = common.native_size(common.list_images(data)[0])
    return height if height == width else 0


@common.user_errors
def main(argv=None):
    args = parse_args(argv)
    channels = args.input if args.input != "auto" else \
        ("rgb" if args.model == "convolneunet" else "levels")
    img_size = args.img_size if args.img_size is not None else images_size(args.data)
    spec = {"kind": "cnn", "model": args.model, "img_size": img_size,
            "in_channels": 1 if channels == "levels" else 3}
    common.build_model({**spec, "n_classes": 2})  # a bad --img-size fails now, in one line
    data = common.load_image_data(args.data, img_size, channels, args.cache_mb)
    spec.update(n_classes=len(data.classes), preprocess={
        "type": "image", **data.conversion, "img_size": img_size, "channels": channels})
    dataset = data.dataset
    with common.start_run(args, argv, "train_cnn.py", args.model, classes=data.classes,
                          clip_ids=dataset.clip_ids, labels=dataset.labels,
                          split_dir=args.data) as run:
        for part in run.parts():
            train, val, test = common.image_parts(dataset, part.indices, args.augment)
            part.train_and_test(common.build_model(spec), spec, train, val, test,
                                criterion=common.make_criterion("ce", len(data.classes)),
                                notes={"input": channels, "augment": args.augment})
        run.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
