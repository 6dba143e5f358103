"""Train the study's CNN from scratch ("ConvolNeuNet") on spectrogram images.

    python train_cnn.py --data data/images                      # 512x512, as in the study
    python train_cnn.py --data data/images --img-size 256 --augment
    python train_cnn.py --data data/seg3 --img-size 256 --folds 5
    torchrun --nproc_per_node 2 train_cnn.py --data data/images --img-size 256

Memory: at --img-size 512 the first FC layer alone has 96*64*64*512 = 201 M weights (0.8 GB in
fp32, 3.2 GB with gradients and Adam's state; 6.4 GB peak RSS measured on CPU at batch 16, with
the best-weights copy and activations); --img-size 256 needs a quarter of the weights (2.1 GB
peak measured) and trains about 4-6x faster. Images of <clip>__sNN segments are scored per clip (mean of the segment
logits). Writes runs/<name>/ with config, history, metrics, curves, confusion and model.pt.
"""
import argparse
import sys

import common


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, data_help="images from data_conversion.py: DATA/<genre>/*.png")
    m = p.add_argument_group("model")
    m.add_argument("--img-size", type=int, default=512,
                   help="images are resized to this square side; 256 is the lighter option "
                        "(fc1: 50 M instead of 201 M weights) (default %(default)s)")
    m.add_argument("--augment", action="store_true", help="RandomRotation(15) on training images")
    m.add_argument("--cache-mb", type=int, default=4096,
                   help="decode all images into memory up to this size, else per batch")
    return p


@common.user_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    dataset, clip_ids, classes, conversion = common.load_image_data(args, args.img_size)
    spec = {"kind": "cnn", "n_classes": len(classes), "img_size": args.img_size,
            "preprocess": {"type": "image", **conversion, "img_size": args.img_size}}

    def prepare(indices, device):
        train, val, test = common.image_parts(dataset, indices, args.augment)
        model = common.ConvolNeuNet(len(classes), args.img_size)
        return common.Job(model, spec, train, val, test, common.make_criterion("ce", len(classes)))

    common.run_training(args, "cnn", "convolneunet", clip_ids, dataset.labels, classes,
                        args.data, prepare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
