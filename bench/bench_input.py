"""Benchmark: the training input path alone against the model it feeds, on one device.

    python bench/bench_input.py                       # CPU, the specnet-mel recipe's segments
    python bench/bench_input.py --device cuda --n 10000

The input path is what fit() does to bring a batch to the model: training.Batches (the uint8
segments on the device, one index gather per batch), SpecAugment on the batch (its draws
data.item_uniforms) and mixup, with no model. The model is SpecNet's forward + backward +
Adam step on one batch, its input already there. Both in segments per second, side by side in
one run, and their ratio. Targets (issue 30): the input path at least 10x the model on the CPU,
and at least 20,000 segments/s on any device.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import models  # noqa: E402
import training  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--n", type=int, default=10000, help="synthetic segments (default 10000, "
                   "about full GTZAN's 3-s segments)")
    p.add_argument("--size", type=int, default=64, help="segment side (default 64: the recipe's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="model steps timed (default 30)")
    return p


def input_path(loader, device, seconds=3.0):
    """Segments per second through Batches + SpecAugment + mixup (a few epochs, no model)."""
    augment, rng, done, epoch = data.SpecAugment(), np.random.default_rng(0), 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        epoch += 1
        loader.sampler.set_epoch(epoch)
        for x, y, index in loader:
            x = augment(x, data.item_uniforms(0, epoch, index, augment.draws))
            x, _, _ = training.mixup_pairs(x, y, 0.2, rng)
            done += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def model_path(device, size, batch_size, steps):
    """Segments per second through SpecNet's training step alone, on a batch already there."""
    model = training.on_device(models.SpecNet(10), device, images=True).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type in ("cpu", "cuda"))
    autocast, scaler = training.amp_tools(device)
    x = torch.rand(batch_size, 1, size, size, device=device) * 255
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = training.pick_device(args.device)
    dataset = data.ArrayDataset(torch.randint(0, 256, (args.n, 1, args.size, args.size),
                                             dtype=torch.uint8),
                               np.arange(args.n) % 10, [f"clip{i // 10}" for i in range(args.n)])
    loader = training.Batches(dataset, args.batch_size, True, 0, device)
    fed = input_path(loader, device)
    trained = model_path(device, args.size, args.batch_size, args.steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"bench_input on {name} ({device}), {args.n} segments of {args.size}x{args.size}, "
          f"batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| path | segments/s |\n|---|---|\n| input (Batches + SpecAugment + mixup) | "
          f"{fed:,.0f} |\n| SpecNet forward + backward + Adam | {trained:,.0f} |")
    print(f"input / model: {fed / trained:.1f}x (target >= 10x on the CPU); input "
          f"{'>=' if fed >= 20000 else '<'} 20,000 segments/s (target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
