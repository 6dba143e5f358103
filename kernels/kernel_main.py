"""What every generated Kaggle kernel runs: find the data under /kaggle/input, pick up the run of
the kernel's previous version when its output is attached, make images or features in
/kaggle/temp, train into /kaggle/working/runs/NAME/ within the time limit, predict the test
audio and write /kaggle/working/submission.csv.

kernels/build.py inlines this file (with the modules the kernel needs) into each kernel.py and
calls main(argv, RECIPE) with the kernel's recipe (see build.py): its name, kind, conversion,
trainer flags, sources, test folder, sample submission, time limit and GPUs.

Kaggle's layout, under $KAGGLE_ROOT (default /kaggle): input/ (read-only: attached competitions,
datasets and kernel outputs, mounted as input/<slug>/, input/competitions/<slug>/,
input/datasets/<owner>/<slug>/ or input/notebooks/<owner>/<slug>/), temp/ (scratch, not kept),
working/ (saved as the version's output). Nothing is ever written under input/.

The run lives in working/runs/NAME/ from the start, so every checkpoint is in the output as
soon as it is written: a session killed at Kaggle's limit keeps the latest one, and the next
version (with this kernel's output attached) resumes from it.
"""
import argparse
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common
import predict

TRAINERS = {"cnn": "train_cnn", "transfer": "train_transfer", "mlp": "train_mlp"}  # by kind
TRAIN_NAMES = ("train", "genres_original", "genres")  # a competition's, GTZAN's, GTZAN's older
KERNEL_FLAGS = ("data", "out", "name", "resume", "overwrite", "predict", "sample_submission",
                "submit", "message", "dry_run", "time_limit")  # the trainer flags a kernel sets


def build_parser(recipe):
    root = Path(os.environ.get("KAGGLE_ROOT", "/kaggle"))
    conversion = recipe["conversion"]
    p = common.ArgumentParser(prog="kernel.py", description=__doc__, allow_abbrev=False)
    p.add_argument("--input", default=str(root / "input"),
                   help="where the data sources are mounted (default %(default)s)")
    p.add_argument("--train", help="labeled audio (default: found under --input)")
    p.add_argument("--test", help="flat folder of audio to predict (default: the folder named "
                                  f"{recipe['test_folder']!r} found under --input)")
    p.add_argument("--labels", help="CSV id,label for a flat --train folder (default: train.csv "
                                    "beside it)")
    p.add_argument("--sample-submission", help="its columns and ids shape submission.csv "
                                               f"(default: {recipe['sample_submission']!r} found "
                                               "beside the test folder)")
    p.add_argument("--temp", default=str(root / "temp"),
                   help="scratch for images and features (default %(default)s)")
    p.add_argument("--working", default=str(root / "working"),
                   help="saved output: runs/NAME/ and submission.csv (default %(default)s)")
    p.add_argument("--time-limit", type=common.duration, default=recipe["time_limit"],
                   metavar="DURATION", help="stop training cleanly before this much time has "
                   "passed since the kernel started, leaving time to predict (default "
                   f"{recipe['time_limit']}: Kaggle kills a GPU session at 12 h)")
    if recipe["kind"] == "mlp":
        p.add_argument("--feature-set", default=conversion.get("feature_set", "standard"),
                       choices=list(common.FEATURE_SETS),
                       help="the audio features to extract (default %(default)s)")
    else:
        p.add_argument("--size", type=int, default=conversion["size"],
                       help="spectrogram image side for the conversion (default %(default)s)")
        p.add_argument("--segment-seconds", type=float, default=conversion["segment_seconds"],
                       help="cut clips into S-second segments, scored per clip (default %(default)s)")
        p.add_argument("--mel", type=int, default=conversion["mel"],
                       help="N log-mel bands instead of the linear STFT (default %(default)s)")
    p.add_argument("--gpus", type=int, default=recipe["gpus"],
                   help="train under torchrun on up to this many visible GPUs (default %(default)s)")
    p.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)  # torchrun's step
    return p


def split_argv(argv, recipe):
    """(kernel args, trainer args): the trainer gets what follows `--` and any unknown flag.
    $KERNEL_ARGS is read as more arguments (local runs and tests; Kaggle passes none)."""
    ours, theirs = [], []
    for words in (sys.argv[1:] if argv is None else argv,
                  shlex.split(os.environ.get("KERNEL_ARGS", ""))):
        words = list(words)
        cut = words.index("--") if "--" in words else len(words)
        ours, theirs = ours + words[:cut], theirs + words[cut + 1:]
    args, unknown = build_parser(recipe).parse_known_args(ours)
    return args, unknown + theirs


# ----------------------------------------------------------------------------------------------
# Finding the data, and the previous version's run

def source_roots(input_dir, sources):
    """Folders where the attached sources are mounted, those named in the recipe first; when
    none of them is there (data attached later, other names), every folder under input/."""
    input_dir = Path(input_dir)
    named = []
    for source in sources:
        owner, _, slug = source.rpartition("/")
        named += [input_dir / slug, input_dir / "competitions" / slug]
        if owner:
            named += [input_dir / "datasets" / owner / slug, input_dir / "notebooks" / owner / slug]
    found = [d for d in named if d.is_dir()]
    return found or [input_dir]


def has_audio(folder, labeled):
    """A flat folder with audio, or (labeled) one whose sub-folders hold audio."""
    children = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(p.is_file() and common.is_audio(p) for p in children):
        return True
    return labeled and any(d.is_dir() and any(common.is_audio(f) for f in d.iterdir())
                           for d in children)


def subfolders(folders):
    return [d for folder in folders for d in sorted(folder.iterdir())
            if d.is_dir() and not d.name.startswith(".")]


def find_folder(roots, names, labeled, depth=6):
    """The first folder named one of `names` holding audio, under the roots (breadth first)."""
    level = list(roots)
    for _ in range(depth + 1):
        for folder in level:
            if folder.name in names and has_audio(folder, labeled):
                return folder
        level = subfolders(level)
    return None


def find_data(args, recipe):
    """(train folder, labels CSV or None, test folder or None, sample submission or None)."""
    if not args.train and not Path(args.input).is_dir():
        raise common.SuiteError(f"--input {args.input}: no such folder (not on Kaggle? give "
                                "--train DIR, and --test DIR to predict)")
    roots = source_roots(args.input, [recipe["competition"], *recipe["datasets"]] if
                         recipe["competition"] else recipe["datasets"])
    train = Path(args.train) if args.train else find_folder(roots, TRAIN_NAMES, labeled=True)
    if train is None:
        raise common.SuiteError(
            f"no training audio under {', '.join(map(str, roots))}: expected a folder named "
            f"{' or '.join(TRAIN_NAMES)} with one sub-folder per genre (or flat audio and "
            "train.csv); attach the competition or GTZAN dataset, or pass --train DIR")
    test = Path(args.test) if args.test else find_folder(
        [train.parent, *roots], (recipe["test_folder"],), labeled=False)
    labels = args.labels
    if not labels and (train.parent / "train.csv").is_file() and has_audio(train, labeled=False):
        labels = str(train.parent / "train.csv")
    sample = args.sample_submission
    if not sample and test is not None and (test.parent / recipe["sample_submission"]).is_file():
        sample = str(test.parent / recipe["sample_submission"])
    return train, labels, test, sample


def previous_run(input_dir, name, depth=6):
    """The run folder runs/NAME/ of this kernel's previous version, wherever its attached
    output is mounted under input/ (Kaggle's mount paths have changed over time), or None."""
    level = [Path(input_dir)] if Path(input_dir).is_dir() else []
    for _ in range(depth + 1):
        for folder in level:
            run = folder / "runs" / name
            if (run / "config.json").is_file():
                return run
        level = subfolders(level)
    return None


def find_weights(input_dir, args, trainer, internet):
    """--weights PATH for a transfer kernel: the pretrained weights file for --arch in an
    attached data set (torchvision's e.g. vgg16-397923af.pth, or PANNs' Cnn14_mAP=0.431.pth),
    so no internet is needed. Looked for before any work: without it and without internet the
    trainer could only fail after the conversion."""
    if args.weights == "panns":
        name = trainer.CNN14_FILE
    elif args.weights == "imagenet":
        import torchvision
        name = Path(torchvision.models.get_model_weights(args.arch).DEFAULT.url).name
    else:
        return []
    found = next(iter(sorted(Path(input_dir).rglob(name))), None)
    if found:
        print(f"weights: {found}")
        return ["--weights", str(found)]
    if not internet:
        raise common.SuiteError(f"no {name} under {input_dir}: attach a data set holding it "
                                "(build.py --weights-dataset), or build with --internet")
    return []  # the trainer downloads them


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


def prepare_features(args, train, labels, temp):
    import data_conversion
    features = temp / "features.csv"
    data_conversion.check_feature_table(features, train, args.feature_set, overwrite=True)
    n, computed, errors = data_conversion.extract_features(
        train, features, args.feature_set, common.default_workers(), labels)
    print(f"{n} clips -> {features} ({computed} extracted, {len(errors)} bad)")
    return ["--features", str(features)]


def same_run(run_dir, trainer, trainer_argv):
    """Whether the run in run_dir was started with these trainer flags (then it resumes). A
    weights file counts by its name: the data set holding it may be mounted elsewhere now."""
    def comparable(key, value):
        return Path(value).name if key == "weights" and value else common.jsonable(value)
    recorded = json.loads((run_dir / "config.json").read_text())["args"]
    wanted = vars(trainer.parse_args(trainer_argv, check_paths=False))
    return all(comparable(k, recorded.get(k)) == comparable(k, v) for k, v in wanted.items()
               if k not in common.RESUME_FLAGS + KERNEL_FLAGS)


def train(trainer, trainer_argv, gpus, budget):
    """The trainer in this process, or under torchrun (one process per GPU) when more than one
    GPU is visible and allowed; common's driver reads torchrun's RANK/WORLD_SIZE. budget: the
    seconds training may take from now (--time-limit counts from the process's start)."""
    import torch
    n = min(gpus, torch.cuda.device_count())
    if n <= 1:
        limit = time.time() - common.STARTED + budget
        return trainer.main([*trainer_argv, "--time-limit", f"{limit:.0f}s"])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", os.path.abspath(sys.argv[0]), "--train-only", "--",
               *trainer_argv, "--time-limit", f"{max(budget, 1):.0f}s"]
    print(f"training on {n} GPUs: {' '.join(command)}", flush=True)
    return subprocess.call(command)


def main(argv, recipe):
    """The kernel; a mistake (no data found, a bad flag) is one line and an exit code."""
    try:
        return run_kernel(argv, recipe)
    except common.SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run_kernel(argv, recipe):
    started = time.time()
    trainer = importlib.import_module(TRAINERS[recipe["kind"]])
    args, passthrough = split_argv(argv, recipe)
    if args.train_only:  # one torchrun process: the parent already made the data
        return trainer.main(passthrough)
    name, temp, working = recipe["name"], Path(args.temp), Path(args.working)
    run_dir = working / "runs" / name
    flags = [*recipe["trainer_args"], *passthrough]
    parsed = trainer.parse_args(flags, check_paths=False)  # a bad flag fails before any work
    train_dir, labels, test, sample = find_data(args, recipe)
    print(f"train: {train_dir}" + (f" (labels {labels})" if labels else "")
          + f"; test: {test or 'none'}" + (f"; sample submission: {sample}" if sample else ""))
    if test is not None:
        common.list_audio(test)  # a bad test folder fails now, not after training
    common.check_output_folder(temp, "--temp")
    common.check_output_folder(working, "--working")
    os.environ["SUITE_CACHE"] = str(temp / "cache")  # what can be recomputed stays in scratch
    weights = find_weights(args.input, parsed, trainer, recipe["internet"]) \
        if recipe["kind"] == "transfer" else []
    previous = previous_run(args.input, name)
    if previous and not run_dir.exists():  # input/ is read-only: the run goes on in working/
        print(f"the previous version's run is attached: {previous}; copying it to {run_dir}")
        shutil.copytree(previous, run_dir, copy_function=shutil.copyfile)  # not input's modes
        for folder in [run_dir, *run_dir.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o755)

    if recipe["kind"] == "mlp":
        data_argv = prepare_features(args, train_dir, labels, temp)
    elif recipe["kind"] == "transfer" and parsed.arch == "cnn14":  # the audio itself
        data_argv = ["--data", str(train_dir), *(["--labels", labels] if labels else [])]
    else:
        data_argv = prepare_images(args, train_dir, labels, temp)
    trainer_argv = [*data_argv, "--out", str(working / "runs"), "--name", name, *flags]
    trainer_argv += weights  # a transfer kernel's pretrained weights, from the inputs
    if run_dir.exists() and same_run(run_dir, trainer, trainer_argv):
        print(f"resuming {run_dir} (its checkpoint, or nothing left to do when it finished)")
        trainer_argv = ["--resume", str(run_dir)]
    elif run_dir.exists():
        print(f"{run_dir} was trained with other flags; training anew")
        trainer_argv.append("--overwrite")
    reserve = min(600.0, 0.1 * args.time_limit)  # to predict the test audio after training
    code = train(trainer, trainer_argv, args.gpus, args.time_limit - reserve - (time.time() - started))
    if code:
        return code
    model = next((run_dir / m for m in common.MODEL_FILES if (run_dir / m).is_file()), None)
    if model is None:  # --folds: one model per fold, no submission
        print(f"{name}: report in {run_dir}; no single model to predict with (--folds)")
        return 0
    if not json.loads((run_dir / "metrics.json").read_text()).get("complete", True):
        print(f"{name}: stopped at the time limit; to go on, push a new version of this kernel "
              f"(python kernels/kaggle_loop.py push {name}): it attaches this output and resumes")
    if test is None:
        print(f"no test folder in the inputs: trained and evaluated on the split (report in "
              f"{run_dir}); no submission.csv written")
        return 0
    predict.predict_and_submit(model, test, output=run_dir / "submission.csv",
                               workers=common.default_workers(), sample_submission=sample,
                               device=common.pick_device("auto"))
    shutil.copyfile(run_dir / "submission.csv", working / "submission.csv")
    print(f"{name}: {working / 'submission.csv'} (report in {run_dir})")
    return 0
