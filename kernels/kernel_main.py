"""What every generated Kaggle kernel runs: find the data under /kaggle/input, make images or
features in /kaggle/temp, train, predict the test audio and write /kaggle/working/submission.csv.

kernels/build.py inlines this file (with common.py and the trainer) into each kernel.py and
calls main(argv, SETTINGS) with the kernel's settings:
    {"kernel": "cnn", "trainer": "train_cnn", "pipeline": "images" | "features",
     "sources": ["competition-slug", "owner/dataset-slug", ...], "gpus": 1,
     "trainer_defaults": [...], "run_name": "kaggle"}

Kaggle's layout, under $KAGGLE_ROOT (default /kaggle): input/ (read-only: attached competitions
and datasets, mounted as input/<slug>/, input/competitions/<slug>/ or
input/datasets/<owner>/<slug>/), temp/ (scratch, not kept), working/ (saved as the output).
Training data is a labeled folder: `train/` (one sub-folder per genre, or flat audio with
train.csv beside it) or GTZAN's `Data/genres_original/`; `test/` (flat audio) and
sample_submission.csv are used when present. Nothing is ever written under input/.
"""
import argparse
import importlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import common

TRAIN_NAMES = ("train", "genres_original", "genres")  # a competition's, GTZAN's, GTZAN's older
KEEP_MODEL_MB = 200  # a larger model.pt stays in temp/: Kaggle saves all of working/ as output


def build_parser(settings):
    root = Path(os.environ.get("KAGGLE_ROOT", "/kaggle"))
    p = common.ArgumentParser(prog="kernel.py", description=__doc__, allow_abbrev=False)
    p.add_argument("--input", default=str(root / "input"),
                   help="where the data sources are mounted (default %(default)s)")
    p.add_argument("--train", help="labeled audio (default: found under --input)")
    p.add_argument("--test", help="flat folder of audio to predict (default: found under --input)")
    p.add_argument("--labels", help="CSV id,label for a flat --train folder (default: train.csv "
                                    "beside it)")
    p.add_argument("--sample-submission", help="its columns and ids shape submission.csv "
                                               "(default: found beside the test folder)")
    p.add_argument("--temp", default=str(root / "temp"),
                   help="scratch for images, features and runs (default %(default)s)")
    p.add_argument("--working", default=str(root / "working"),
                   help="saved output: submission.csv and the run's report (default %(default)s)")
    if settings["pipeline"] == "images":
        p.add_argument("--size", type=int, default=512,
                       help="spectrogram image side for the conversion (default %(default)s)")
        p.add_argument("--segment-seconds", type=float, default=0.0,
                       help="cut clips into S-second segments, scored per clip (default 0)")
        p.add_argument("--mel", type=int, default=0,
                       help="N log-mel bands instead of the linear STFT (default 0)")
    p.add_argument("--gpus", type=int, default=settings["gpus"],
                   help="train under torchrun on up to this many visible GPUs (default %(default)s)")
    p.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)  # torchrun's step
    return p


def split_argv(argv, settings):
    """(kernel args, trainer args): the trainer gets what follows `--` and any unknown flag.
    $KERNEL_ARGS is read as more arguments (local runs and tests; Kaggle passes none)."""
    ours, theirs = [], []
    for words in (sys.argv[1:] if argv is None else argv,
                  shlex.split(os.environ.get("KERNEL_ARGS", ""))):
        words = list(words)
        cut = words.index("--") if "--" in words else len(words)
        ours, theirs = ours + words[:cut], theirs + words[cut + 1:]
    args, unknown = build_parser(settings).parse_known_args(ours)
    return args, unknown + theirs


# ----------------------------------------------------------------------------------------------
# Finding the data

def source_roots(input_dir, sources):
    """Folders where the attached sources are mounted, those named in the settings first; when
    none of them is there (data attached later, other names), every folder under input/."""
    input_dir = Path(input_dir)
    named = []
    for source in sources:
        owner, _, slug = source.rpartition("/")
        named += [input_dir / slug, input_dir / "competitions" / slug]
        if owner:
            named.append(input_dir / "datasets" / owner / slug)
    found = [d for d in named if d.is_dir()]
    return found or [input_dir]


def has_audio(folder, labeled):
    """A flat folder with audio, or (labeled) one whose sub-folders hold audio."""
    children = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(p.is_file() and common.is_audio(p) for p in children):
        return True
    return labeled and any(d.is_dir() and any(common.is_audio(f) for f in d.iterdir())
                           for d in children)


def find_folder(roots, names, labeled, depth=6):
    """The first folder named one of `names` holding audio, under the roots (breadth first)."""
    level = list(roots)
    for _ in range(depth + 1):
        for folder in level:
            if folder.name in names and has_audio(folder, labeled):
                return folder
        level = [d for folder in level for d in sorted(folder.iterdir())
                 if d.is_dir() and not d.name.startswith(".")]
    return None


def find_data(args, settings):
    """(train folder, labels CSV or None, test folder or None, sample submission or None)."""
    if not args.train and not Path(args.input).is_dir():
        raise common.SuiteError(f"--input {args.input}: no such folder (not on Kaggle? give "
                                "--train DIR, and --test DIR to predict)")
    roots = source_roots(args.input, settings["sources"])
    train = Path(args.train) if args.train else find_folder(roots, TRAIN_NAMES, labeled=True)
    if train is None:
        raise common.SuiteError(
            f"no training audio under {', '.join(map(str, roots))}: expected a folder named "
            f"{' or '.join(TRAIN_NAMES)} with one sub-folder per genre (or flat audio and "
            "train.csv); attach the competition or GTZAN dataset, or pass --train DIR")
    test = Path(args.test) if args.test else find_folder([train.parent, *roots], ("test",),
                                                         labeled=False)
    labels = args.labels
    if not labels and (train.parent / "train.csv").is_file() and has_audio(train, labeled=False):
        labels = str(train.parent / "train.csv")
    sample = args.sample_submission
    if not sample and test is not None and (test.parent / "sample_submission.csv").is_file():
        sample = str(test.parent / "sample_submission.csv")
    return train, labels, test, sample


def find_weights(input_dir, trainer_argv, trainer):
    """--weights PATH for the transfer kernel: torchvision's own weights file for --arch
    (e.g. vgg16-397923af.pth) in an attached dataset, so no internet is needed."""
    run = trainer.build_parser().parse_known_args(trainer_argv)[0]
    if getattr(run, "weights", None) != "imagenet":
        return []
    import torchvision
    if run.arch not in torchvision.models.list_models():
        return []  # the trainer explains a bad --arch
    name = Path(torchvision.models.get_model_weights(run.arch).DEFAULT.url).name
    found = next(iter(sorted(Path(input_dir).rglob(name))), None)
    if found:
        print(f"weights: {found}")
        return ["--weights", str(found)]
    return []  # the trainer downloads them (internet on) or says what to attach


# ----------------------------------------------------------------------------------------------
# Steps

def prepare_images(args, train, labels, temp):
    import data_conversion  # inlined in image kernels only
    images = temp / "images"
    settings = {"size": args.size, "segment_seconds": args.segment_seconds, "mel": args.mel}
    converted, skipped, errors = data_conversion.convert_folder(
        train, images, settings, common.default_workers(), labels, overwrite=True)
    print(f"{converted} clips converted, {skipped} up to date, {len(errors)} bad -> {images}")
    return ["--data", str(images)]


def prepare_features(args, train, labels, temp, trainer, passthrough):
    features = temp / "features.csv"
    extract = trainer.build_parser().parse_known_args(passthrough)[0]
    code = trainer.main(["--extract", str(train), "--features", str(features),
                         "--feature-set", extract.feature_set,
                         *(["--labels", labels] if labels else [])])
    if code:
        raise common.SuiteError("feature extraction failed (see above)", code)
    return ["--features", str(features)]


def train(trainer, trainer_argv, gpus):
    """The trainer in this process, or under torchrun (one process per GPU) when more than one
    GPU is visible and allowed; common's driver reads torchrun's RANK/WORLD_SIZE."""
    import torch
    n = min(gpus, torch.cuda.device_count())
    if n <= 1:
        return trainer.main(trainer_argv)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", os.path.abspath(sys.argv[0]), "--train-only", "--",
               *trainer_argv]
    print(f"training on {n} GPUs: {' '.join(command)}", flush=True)
    return subprocess.call(command)


def save_outputs(run_dir, working):
    """The run's report into working/ (saved by Kaggle); checkpoints and a large model.pt stay
    in temp/."""
    out = working / "runs" / run_dir.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for path in sorted(run_dir.rglob("*")):
        if path.is_dir() or path.name == "checkpoint.pt":
            continue
        if path.name == "model.pt" and path.stat().st_size > KEEP_MODEL_MB * 2 ** 20:
            print(f"note: {path} ({path.stat().st_size / 2 ** 20:.0f} MB) stays in temp/, not "
                  f"saved as output (over {KEEP_MODEL_MB} MB)")
            continue
        target = out / path.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return out


def main(argv, settings):
    """The kernel; a mistake (no data found, a bad flag) is one line and an exit code."""
    try:
        return run_kernel(argv, settings)
    except common.SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run_kernel(argv, settings):
    trainer = importlib.import_module(settings["trainer"])
    args, passthrough = split_argv(argv, settings)
    if args.train_only:  # one torchrun process: the parent already made the data
        return trainer.main(passthrough)
    temp, working = Path(args.temp), Path(args.working)
    train_dir, labels, test, sample = find_data(args, settings)
    print(f"train: {train_dir}" + (f" (labels {labels})" if labels else "")
          + f"; test: {test or 'none'}" + (f"; sample submission: {sample}" if sample else ""))
    if test is not None:
        common.list_audio(test)  # a bad test folder fails now, not after training
    common.check_output_folder(temp, "--temp")
    common.check_output_folder(working, "--working")
    if settings["pipeline"] == "images":
        data_argv = prepare_images(args, train_dir, labels, temp)
    else:
        data_argv = prepare_features(args, train_dir, labels, temp, trainer, passthrough)
    run_name = settings["run_name"]
    trainer_argv = [*data_argv, "--out", str(temp / "runs"), "--name", run_name, "--overwrite",
                    *settings["trainer_defaults"], *passthrough]
    if test is not None:
        trainer_argv += ["--predict", str(test)]
        if sample:
            trainer_argv += ["--sample-submission", sample]
    if settings["trainer"] == "train_transfer":
        trainer_argv += find_weights(args.input, trainer_argv, trainer)
    code = train(trainer, trainer_argv, args.gpus)
    if code:
        return code
    report = save_outputs(temp / "runs" / run_name, working)
    if test is None:
        print(f"no test folder in the inputs: trained and evaluated on the split (report in "
              f"{report}); no submission.csv written")
        return 0
    shutil.copyfile(report / "submission.csv", working / "submission.csv")
    print(f"{settings['kernel']}: {working / 'submission.csv'} (report in {report})")
    return 0
