"""Train a CNN from scratch on spectrogram images: the study's ConvolNeuNet, or SpecNet.

    python train_cnn.py --data data/images --img-size 256               # the study's CNN
    python train_cnn.py --data data/seg3 --img-size 256 --augment       # + RandomRotation(15)
    python train_cnn.py --data data/mel3 --model specnet                 # the better CNN
    python train_cnn.py --data data/mel3 --model specnet --split gtzan-filtered
    torchrun --nproc_per_node 2 train_cnn.py --data data/images --img-size 256

--model convolneunet (default) is the study's network on the RGB images, faithful to it.
At --img-size 512 its first FC layer alone has 96*64*64*512 = 201 M weights (0.8 GB in fp32,
3.2 GB with gradients and Adam's state; 6.4 GB peak RSS measured on CPU at batch 16, with the
best-weights copy and activations); 256 needs a quarter (2.1 GB peak) and trains 4-6x faster.
--model specnet is a small modern CNN (0.29 M weights, batch norm, pooling over frequency and
time, so any image size of 16 px or more) that reads the dB levels the PNGs store (--input
levels), with its own defaults: --schedule cosine --epochs 30 --mixup 0.2 (MODEL_DEFAULTS).
Images of <clip>__sNN segments are scored per clip (mean of the segment logits). Writes
runs/<name>/ with config, history, metrics, curves, confusion, model.pt; --resume continues it.
"""
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

# Optimization defaults per model, where they differ from the study's (runs.add_common_args).
# SpecNet: on 30 training clips, choosing an epoch by 10 validation clips picks noise; a fixed
# cosine run with mixup does better (bench/bench_accuracy.py, README).
MODEL_DEFAULTS = {"convolneunet": {}, "specnet": {"schedule": "cosine", "epochs": 30, "mixup": 0.2}}


def build_parser(model="convolneunet"):
    p = common.ArgumentParser(prog="train_cnn.py", description=__doc__)
    runs.add_common_args(p, data_default="data/images",
                         data_help="images from data_conversion.py: DATA/<genre>/*.png")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=list(models.CNN_MODELS), default="convolneunet",
                   help="convolneunet: the study's (default); specnet: small, batch norm, any size")
    m.add_argument("--input", choices=["auto", "rgb", "levels"], default="auto",
                   help="rgb: the colormap picture (the study's); levels: the dB level the PNG "
                        "stores, one channel (default auto: rgb for convolneunet, levels for specnet)")
    runs.add_image_args(m, "resize images to this square side; 0 keeps their size (default: "
                             "the size the images were made at)", img_size_minimum=0)
    p.set_defaults(**MODEL_DEFAULTS[model])
    return p


def parse_args(argv, check_paths=True):
    """--model first, for its defaults; then every flag, checked (and every path)."""
    model = build_parser().parse_known_args(argv)[0].model
    return runs.parse_run_args(build_parser(model), argv, check_model=check_model,
                               paths=check_paths)


def check_model(args, image_shape=None):
    """The network can take the images: --img-size (else the data's (height, width), when
    known) is checked by a forward pass of an empty batch, before any work."""
    channels = 1 if models.input_channels(args.model, args.input) == "levels" else 3
    if args.img_size is not None:
        shape, what = (args.img_size, args.img_size), f"--img-size {args.img_size}"
    elif image_shape is not None:
        shape, what = image_shape, f"the images of {args.data} ({image_shape[0]}x{image_shape[1]}, no --img-size)"
    else:
        return
    if args.model == "convolneunet" and (shape[0] != shape[1] or not shape[0] or shape[0] % 8):
        raise common.SuiteError(f"{what}: ConvolNeuNet needs square images whose side is a "
                                "multiple of 8: give --img-size 128 (or 256, 512), or use "
                                "--model specnet, which takes any size")
    model = models.CNN_MODELS[args.model](2, shape[0], channels)
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, *shape, dtype=torch.uint8))
    except RuntimeError:
        raise common.SuiteError(f"{what}: too small for {args.model} (its four 2x2 poolings need "
                                "16 px or more on each side)") from None


def images_size(data_dir):
    """The side the images were made at (conversion.json), else their own side when square,
    else 0 (each its own size)."""
    if (Path(data_dir) / audio.CONVERSION_FILE).exists():
        return audio.read_conversion(data_dir)["size"]
    height, width = data.native_size(data.list_images(data_dir)[0])
    return height if height == width else 0


def main(argv=None, started=None):
    """The command; started: the time.time() --time-limit counts from (default: now)."""
    started = started or time.time()
    args = parse_args(argv)
    channels = models.input_channels(args.model, args.input)
    img_size = args.img_size if args.img_size is not None else images_size(args.data)
    if args.img_size is None:  # the data's own size: check it as a given --img-size is
        check_model(args, (img_size, img_size) if img_size else
                    data.native_size(data.list_images(args.data)[0]))

    # data: every image decoded once into memory (or per batch above --cache-mb)
    images = data.load_image_data(args.data, img_size, channels, args.cache_mb)
    dataset, classes = images.dataset, images.classes
    spec = {"kind": "cnn", "model": args.model, "img_size": img_size, "n_classes": len(classes),
            "in_channels": 1 if channels == "levels" else 3,
            "preprocess": {"type": "image", **images.conversion, "img_size": img_size,
                           "channels": channels}}

    # processes (torchrun's, or this one), device, and the clips each part trains and tests on
    dist = training.Dist.from_env()
    device = dist.setup(training.pick_device(args.device))
    splits = data.resolve_splits(args, dataset.clip_ids, dataset.labels, args.data, dist.log)
    with runs.start_run(args, argv, "train_cnn.py", args.model, classes=classes, splits=splits,
                        clip_ids=dataset.clip_ids, device=device, dist=dist,
                        started=started) as run:
        for part in run.parts():  # the split, or each of the --folds not finished before
            training.seed_everything(args.seed)  # each part starts as an uninterrupted run's did
            train, val, test = data.split_parts(dataset, part.indices)
            model = models.build_model(spec)
            result = training.fit(model, train, val, criterion=torch.nn.CrossEntropyLoss(),
                                  augment=args.augment, device=device, dist=dist,
                                  checkpoint=part.checkpoint, deadline=run.deadline,
                                  **training.fit_options(args))
            tested = reports.test_model(model, test, device=device, dist=dist,
                                        batch_size=args.batch_size)
            report = reports.test_report(part, args.model, classes, tested, result, train=train,
                                         val=val, test=test,
                                         notes={"input": channels, "augment": args.augment})
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
