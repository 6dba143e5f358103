"""GPU check in one command (a few minutes on one GPU): every training path of the suite on CUDA.

    python bench/gpu_check.py                          # on a machine with an NVIDIA GPU
    python bench/gpu_check.py --device cpu --quick     # the same steps, small, on the CPU

Trains on data made here, so nothing is downloaded: spectrogram-like palette PNGs (10 classes,
each brightening its own frequency band), a features table and tones at 32 kHz.
  - ConvolNeuNet at 512 px (the study's size, 201 M weights) with AMP
  - transfer vgg16, googlenet and resnet50, frozen (the cached-features fast path) and
    --finetune (random backbones: --weights none; the ImageNet path is tested on the CPU)
  - the MLP on features
  - PANNs' CNN14 on 32 kHz tones, frozen (embeddings cached) and --finetune with SpecAugment and
    mixup (random weights: --weights none)
  - train_cnn (SpecNet) under a 1-process torchrun (nccl)
  - the specnet-mel recipe's training (kernels/recipes/specnet-mel.json: SpecNet, cosine, mixup
    0.2, on 64x64 segments) at full GTZAN's scale: 1,000 clips of 10 segments, 10,000 segments;
    segments per second and seconds per epoch (for the README's Kaggle table, once measured)
For each run it prints training images per second, peak GPU memory and the optimizer steps
GradScaler skipped (a few at the start are normal: it halves its scale until gradients are
finite), and exits 1 when any run fails.
"""
import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import audio  # noqa: E402
import common  # noqa: E402
import conversion  # noqa: E402
import train_cnn  # noqa: E402
import train_mlp  # noqa: E402
import train_transfer  # noqa: E402
import training  # noqa: E402

N_CLASSES = 10


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    p.add_argument("--quick", action="store_true", help="small images, few epochs (CPU smoke test)")
    p.add_argument("--per-class", type=int, default=16, help="images per class (default 16)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    return p


def make_images(root, per_class, size, segments=0, seed=0):
    """Palette PNGs as data_conversion writes them; class k brightens its own band of rows.
    segments > 0: each clip cut into that many 3-s mel segments (<clip>__sNN.png)."""
    rng = np.random.default_rng(seed)
    names = [f"__s{j:02d}" for j in range(segments)] or [""]
    for k in range(N_CLASSES):
        for i in range(per_class):
            for name in names:
                levels = rng.integers(0, 90, (size, size)).astype(np.uint8)
                levels[k * size // N_CLASSES:(k + 1) * size // N_CLASSES] += 120
                conversion.save_spectrogram_png(root / f"c{k}" / f"c{k}.{i:05d}{name}.png",
                                                     levels)
    settings = {"mel": 128, "segment_seconds": 3.0} if segments else {}
    common.write_json(root / audio.CONVERSION_FILE,
                      {**audio.CONVERSION_DEFAULTS, "size": size, **settings})
    return root


def make_features(path, per_class, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", *audio.FEATURE_COLUMNS, "label"])
        for k in range(N_CLASSES):
            for i in range(per_class):
                values = rng.normal(0, 1, len(audio.FEATURE_COLUMNS))
                values[k] += 3
                w.writerow([f"c{k}.{i:05d}.wav", *values, f"c{k}"])
    return path


def make_audio(root, per_class, seconds, seed=0):
    """Tones at CNN14's 32 kHz (no resampling), class k at its own pitch."""
    import soundfile
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 32000)) / 32000
    for k in range(N_CLASSES):
        for i in range(per_class):
            y = 0.3 * np.sin(2 * np.pi * 110 * 2 ** (k / 2) * t) + 0.01 * rng.standard_normal(t.size)
            path = root / f"c{k}" / f"c{k}.{i:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, y.astype(np.float32), 32000)
    return root


def figures(run_dir):
    """(training images/s, backbone images/s or None, skipped steps, epochs) from a run folder."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "history.csv") as f:
        history = list(csv.DictReader(f))
    epoch_seconds = float(history[-1]["seconds"])
    images = metrics["n_train"] * len(history) / epoch_seconds
    backbone_seconds = metrics["train_seconds"] - epoch_seconds
    n_images = metrics["n_train"] + metrics["n_val"] + metrics["n_test"]
    backbone = n_images / backbone_seconds if metrics.get("fast_path") and backbone_seconds > 0 else None
    return images, backbone, metrics.get("amp_skipped_steps", 0), len(history)


def main(argv=None):
    args = build_parser().parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --device cpu --quick for a smoke test")
        return 1
    device_name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    print(f"gpu_check: {device_name}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"built for {', '.join(torch.cuda.get_arch_list()) or '-'}"
          + (f", capability {torch.cuda.get_device_capability(0)}" if cuda else ""), flush=True)
    reason = training.cuda_unsupported_reason() if cuda else None
    if reason:
        print(f"error: {reason}")
        return 1
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        return check(Path(tmp), args, cuda, device_name)


def check(tmp, args, cuda, device_name):
    big = 64 if args.quick else 512
    small = 32 if args.quick else 224
    per_class = 4 if args.quick else args.per_class
    epochs = 1 if args.quick else args.epochs
    start = time.time()
    images_big = make_images(tmp / f"img{big}", per_class, big)
    images = make_images(tmp / f"img{small}", per_class, small)
    features = make_features(tmp / "features.csv", per_class * 4)
    runs_dir = tmp / "runs"
    common_argv = ["--device", args.device, "--epochs", str(epochs), "--out", str(runs_dir),
                   "--workers", "1"]
    whole = ["--patience", str(epochs + 1)]  # every epoch of the plateau runs too
    runs = [("ConvolNeuNet 512 px, AMP" if not args.quick else f"ConvolNeuNet {big} px",
             train_cnn, ["--data", str(images_big), "--img-size", str(big), "--batch-size", "16",
                         *whole])]
    for arch in ("vgg16", "googlenet", "resnet50"):
        for finetune in (False, True):
            runs.append((f"{arch} {'finetune' if finetune else 'frozen'}", train_transfer,
                         ["--data", str(images), "--arch", arch, "--weights", "none",
                          "--batch-size", "32", *whole, *(["--finetune"] if finetune else [])]))
    runs.append(("MLP on features", train_mlp, ["--features", str(features), "--batch-size", "32",
                                                 *whole]))
    seconds = 2 if args.quick else 10
    audio = make_audio(tmp / "audio", per_class, seconds)
    for finetune in (False, True):
        tuned = ["--finetune", "--augment", "specaugment", "--mixup", "0.2"] if finetune else []
        runs.append((f"cnn14 {seconds}-s clips {'finetune' if finetune else 'frozen'}",
                     train_transfer, ["--data", str(audio), "--arch", "cnn14", "--weights", "none",
                                      "--clip-seconds", str(seconds), "--batch-size", "16",
                                      *whole, *tuned]))

    recipe = json.loads((ROOT / "kernels" / "recipes" / "specnet-mel.json").read_text())
    clips = 10 if args.quick else 100  # per class: 1,000 clips, 10,000 segments in all
    segments = make_images(tmp / "segments", clips, recipe["conversion"]["size"], segments=10)
    runs.append((f"specnet-mel recipe, {clips * N_CLASSES * 10:,} segments", train_cnn,
                 ["--data", str(segments), *recipe["trainer_args"], "--batch-size", "32"]))

    rows, failures = [], []
    for i, (label, script, run_argv) in enumerate(runs):
        name = f"run{i}"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        print(f"\n=== {label} ===", flush=True)
        try:
            code = script.cli(run_argv + common_argv + ["--name", name])
        except Exception:
            traceback.print_exc()
            code = "exception"
        if code:
            failures.append(f"{label}: exit {code}")
            rows.append((label, "FAILED", "", "", ""))
            continue
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
        speed, backbone, skipped, n_epochs = figures(runs_dir / name)
        rows.append((label, f"{speed:,.0f}", f"{backbone:,.0f}" if backbone else "-",
                     f"{peak:.2f}", f"{skipped} / {n_epochs} epochs"))
        if label.startswith("specnet-mel recipe"):  # figures() counts clips: 10 segments each
            metrics = json.loads((runs_dir / name / "metrics.json").read_text())
            per_epoch = metrics["train_seconds"] / n_epochs
            rows[-1] = (label, f"{speed * 10:,.0f} segments", *rows[-1][2:])
            print(f"specnet-mel recipe: {speed * 10:,.0f} training segments/s, {per_epoch:.1f} s "
                  f"per epoch of {metrics['n_train'] * 10:,} segments; the recipe's 30 epochs: "
                  f"about {30 * per_epoch / 60:.1f} min of training on {device_name}")

    label = "SpecNet (cosine, mixup), torchrun 1 process" + (" (nccl)" if cuda else " (gloo)")
    print(f"\n=== {label} ===", flush=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               str(ROOT / "train_cnn.py"), "--data", str(images), "--model", "specnet",
               "--img-size", str(small), "--batch-size", "32", *common_argv, "--name", "torchrun"]
    result = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode:
        failures.append(f"{label}: exit {result.returncode}")
        rows.append((label, "FAILED", "", "", ""))
    else:
        speed, _, skipped, n_epochs = figures(runs_dir / "torchrun")
        rows.append((label, f"{speed:,.0f}", "-", "(own process)", f"{skipped} / {n_epochs} epochs"))

    print(f"\ngpu_check on {device_name}: {per_class * N_CLASSES} images, {epochs} epochs per run, "
          f"{time.time() - start:.0f} s in all")
    header = ("run", "train images/s", "backbone images/s", "peak GPU GiB", "AMP skipped steps")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for failure in failures:
        print(f"FAILED {failure}")
    print("gpu_check: " + ("FAIL" if failures else "PASS"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
