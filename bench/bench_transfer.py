"""Benchmark: transfer learning's fast path (backbone once + head on cached features) on the CPU.

    python bench/bench_transfer.py
    python bench/bench_transfer.py --n 32 --epochs 20 --slow-epochs 1

VGG16 built by models.build_transfer("vgg16", 10, "none") (random weights: no download; the
cost does not depend on the weights), random uint8 images in memory, timed side by side:
  (a) fast path: one batched backbone pass over the n images (training.predict_logits with
      forward=net.features, as train_transfer.backbone_features) + --epochs epochs of training.fit
      on the head alone, on the cached features
  (b) one forward pass of the backbone over the same images, nothing else (run before and
      after (a); the faster is kept, to damp noise from other processes)
  (c) slow path: training.fit of the whole TransferNet (frozen backbone) on the images; it runs
      --slow-epochs epochs and is extrapolated linearly to --epochs
Targets: (a) / (b) <= 1.5. slow / fast is printed for information. n - --n-val images train and
--n-val validate, in (a) and (c) alike; early stopping is off (every epoch trained).
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `common`

import torch  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402
import training  # noqa: E402

TARGET = 1.5
N_CLASSES = 10


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vgg16", help="torchvision backbone (default vgg16)")
    p.add_argument("--n", type=int, default=64, help="images (default 64)")
    p.add_argument("--n-val", type=int, default=8, help="of which validation images (default 8)")
    p.add_argument("--img-size", type=int, default=224, help="image side (default 224)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    p.add_argument("--slow-epochs", type=int, default=2,
                   help="epochs actually run on the slow path, extrapolated to --epochs (default 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's own)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"bench_transfer: {args.arch} (weights none) on CPU, {args.n} images of "
          f"{args.img_size}x{args.img_size} ({args.n_val} validation), batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    device = torch.device("cpu")
    training.seed_everything(args.seed)
    net, _ = models.build_transfer(args.arch, N_CLASSES, "none")
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randint(0, 256, (args.n, 3, args.img_size, args.img_size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, N_CLASSES, (args.n,), generator=g).numpy()
    images = data.ArrayDataset(x, labels, [f"clip{i}" for i in range(args.n)])
    train_rows, val_rows = range(args.n - args.n_val), range(args.n - args.n_val, args.n)
    criterion = torch.nn.CrossEntropyLoss()
    autocast, _ = training.amp_tools(device)
    fit_args = dict(criterion=criterion, lr=1e-3, epochs=args.epochs, batch_size=args.batch_size,
                    seed=args.seed, early_stopping=None, device=device, log=lambda *_: None)

    net.eval()
    with torch.no_grad():
        net.features(x[:2])  # untimed warm-up: kernels
    training.classification_scores([0, 1], [0, 1], 2)  # and fit's one-time import of sklearn.metrics

    @torch.no_grad()
    def backbone_pass():
        start = time.perf_counter()
        for batch in x.split(args.batch_size):
            net.features(batch)
        return time.perf_counter() - start

    # (b) the backbone alone, one pass; run again after (a) and the faster one kept (load noise)
    backbone_s = backbone_pass()

    # (a) the fast path: backbone once through the loader, then the head on cached features
    start = time.perf_counter()
    loader = training.make_loader(images, args.batch_size, False, args.seed, 0, device)
    features = torch.from_numpy(training.predict_logits(net, loader, autocast, device, net.features))
    cached = data.ArrayDataset(features, labels, images.clip_ids)
    features_s = time.perf_counter() - start
    training.fit(net.head, cached.subset(train_rows), cached.subset(val_rows), **fit_args)
    fast_s = time.perf_counter() - start
    backbone_s = min(backbone_s, backbone_pass())

    # (c) the slow path: the whole model, backbone re-run on every image every epoch
    slow_args = {**fit_args, "epochs": args.slow_epochs}  # early_stopping None: every epoch
    start = time.perf_counter()
    training.fit(net, images.subset(train_rows), images.subset(val_rows), **slow_args,
                 param_groups=[{"params": net.head.parameters(), "lr": 1e-3}])
    slow_run_s = time.perf_counter() - start
    slow_s = slow_run_s * args.epochs / args.slow_epochs

    ratio = fast_s / backbone_s
    print(f"\n{'':<56}{'seconds':>9}")
    print(f"{'(b) backbone forward pass over the images (best of 2)':<56}{backbone_s:>9.2f}")
    print(f"{'(a) fast path: backbone pass via predict_logits':<56}{features_s:>9.2f}")
    print(f"{f'    + head, {args.epochs} epochs of fit on cached features':<56}{fast_s - features_s:>9.2f}")
    print(f"{'    = fast path total':<56}{fast_s:>9.2f}")
    print(f"{f'(c) slow path: full model, {args.slow_epochs} epochs of fit (measured)':<56}{slow_run_s:>9.2f}")
    print(f"{f'    extrapolated linearly to {args.epochs} epochs':<56}{slow_s:>9.2f}")
    print(f"\nfast / backbone  {ratio:6.2f}x  (target <= {TARGET:g})  {'PASS' if ratio <= TARGET else 'FAIL'}")
    print(f"slow / fast      {slow_s / fast_s:6.1f}x  (slow path extrapolated from "
          f"{args.slow_epochs} to {args.epochs} epochs)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
