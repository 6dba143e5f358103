"""Benchmark: is the data path ever the bottleneck when training ConvolNeuNet on the CPU?

    python bench/bench_training.py
    python bench/bench_training.py --sizes 256 --n 32 --epochs 2

For each image size, on random uint8 images held in memory (data.ArrayDataset), seconds per
epoch of:
  raw          forward + backward + Adam step over pre-sliced in-memory batches (no DataLoader)
  train_epoch  training.train_epoch with a loader from training.make_loader (shuffled, as fit uses)
  fit          training.fit, whole epochs: train_epoch + a validation pass over a tiny validation
               set (--n-val items) + copying the best weights when validation improves
Target: train_epoch / raw <= 1.1 (the data path is never the bottleneck). fit / raw is shown
for information. raw and train_epoch alternate epoch by epoch on one model, after one untimed
warm-up step (which also allocates Adam's state); each reports its fastest epoch, the least
disturbed by other processes (fit: mean epoch). Peak RSS (ru_maxrss) is printed per size:
ConvolNeuNet's fc1 has 96*(s/8)^2*512 weights, 201 M at 512 (~3.2 GB with Adam).
"""
import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `common`

import torch  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402
import training  # noqa: E402

TARGET = 1.1
N_CLASSES = 10


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sides (default 256 512)")
    p.add_argument("--n", type=int, default=64, help="training images (default 64)")
    p.add_argument("--n-val", type=int, default=8, help="validation images for fit (default 8)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement (default 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's own)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    return p


def random_images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, N_CLASSES, (n,), generator=g).numpy()
    return data.ArrayDataset(x, labels, [f"clip{i}" for i in range(n)])


def raw_epoch(model, batches, criterion, optimizer):
    """The floor: the same arithmetic as train_epoch with the data already batched in memory."""
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def bench_size(size, args):
    device = torch.device("cpu")
    loop_args = dict(lr=1e-3, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                     early_stopping=None, device=device)
    data = random_images(args.n + args.n_val, size, args.seed)
    train, val = data.subset(range(args.n)), data.subset(range(args.n, args.n + args.n_val))
    batches = [train.__getitems__(range(i, min(i + args.batch_size, args.n)))[:2]
               for i in range(0, args.n, args.batch_size)]  # a part's rows (x is the whole set's)
    criterion = torch.nn.CrossEntropyLoss()
    autocast, scaler = training.amp_tools(device)

    training.seed_everything(args.seed)
    model = models.ConvolNeuNet(N_CLASSES, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = training.make_loader(train, args.batch_size, True, args.seed, 0, device)
    raw_epoch(model, batches[:1], criterion, optimizer)  # warm-up: kernels, Adam state
    raw, loop = [], []
    for epoch in range(args.epochs):
        raw.append(raw_epoch(model, batches, criterion, optimizer))
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        training.train_epoch(model, loader, criterion, optimizer, scaler, autocast, device)
        loop.append(time.perf_counter() - start)
    del model, optimizer
    gc.collect()

    training.seed_everything(args.seed)
    model = models.ConvolNeuNet(N_CLASSES, size)
    start = time.perf_counter()
    training.fit(model, train, val, criterion=criterion, **loop_args, log=lambda *_: None)
    fit_s = (time.perf_counter() - start) / args.epochs
    del model
    gc.collect()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return min(raw), min(loop), fit_s, rss_mb


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"bench_training: ConvolNeuNet on CPU, {args.n} train images (+{args.n_val} validation "
          f"for fit), batch {args.batch_size}, {args.epochs} epochs, {torch.get_num_threads()} "
          f"torch threads, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    training.classification_scores([0, 1], [0, 1], 2)  # untimed: fit's one-time import of sklearn.metrics
    rows = []
    for size in args.sizes:
        rows.append((size, *bench_size(size, args)))
        print(f"  size {size} done, load average {os.getloadavg()[0]:.2f}", flush=True)

    print(f"\n{'size':>5} {'raw s/ep':>9} {'train_epoch':>12} {'fit mean':>9} "
          f"{'loop/raw':>9} {'fit/raw':>8} {'peak RSS MiB':>13}  verdict (loop/raw <= {TARGET:g})")
    for size, raw, loop, fit_s, rss_mb in rows:
        ratio = loop / raw
        print(f"{size:>5} {raw:>9.2f} {loop:>12.2f} {fit_s:>9.2f} {ratio:>9.3f} {fit_s / raw:>8.3f} "
              f"{rss_mb:>13.0f}  {'PASS' if ratio <= TARGET else 'FAIL'}")
    print(f"seconds per epoch: raw and train_epoch the fastest of {args.epochs}, fit the mean; fit "
          f"includes a validation pass over {args.n_val} images and the best-weights copy.\n"
          f"peak RSS is the process maximum so far. load average after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
