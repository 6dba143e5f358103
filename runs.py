"""Runs: the flags every trainer takes (checked before any work), the run folder (claimed, written,
resumed), and its one reader: whether a part or run is finished, how far it got, what it holds.

Used by the trainers, predict.py, compare.py and the kernels.
"""

import argparse
import contextlib
import csv
import json
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

import numpy as np
import torch
from torch import nn

from audio import list_audio, normalize_id
from common import (
    NothingToDo,
    SuiteError,
    atomic_write,
    bounded,
    check_output_folder,
    default_workers,
    duration,
    refuse_unused,
    writable,
    write_csv,
    write_json,
)
from data import AUGMENTATIONS, NAMED_SPLITS, read_split, split_file, split_hash, split_indices, split_label
from kaggle_client import kaggle_api
from models import check_torchvision
from reports import caveats, confusion_text, plot_confusion, plot_curves
from training import (
    SCHEDULES,
    BadCheckpoint,
    Dist,
    device_label,
    majority_class,
    pick_device,
    unwrap,
    write_predictions,
)
from uncertainty import T_MEAN, interval_text, mean_interval

# ----------------------------------------------------------------------------------------------
# Flags: what every trainer takes, each with one meaning, all checked before any work starts

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
                   "lr", "seconds"]
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RESUME_FLAGS = ("resume", "device", "workers", "time_limit")  # what may change on --resume


def add_common_args(parser, *, data_default, data_help, epochs=20, batch_size=32, lr=1e-3):
    d = parser.add_argument_group("data")
    d.add_argument("--data", default=data_default, help=f"{data_help} (default %(default)s)")
    d.add_argument("--split", metavar="NAME|FILE", help="gtzan-filtered (GTZAN's artist-filtered "
                   "split: the honest GTZAN figure) or a split file to use instead of the shared "
                   "random one (DATA/split.json); clips it does not list are left out")
    d.add_argument("--folds", type=bounded(int, minimum=2), metavar="K",
                   help="stratified K-fold cross-validation at clip level (mean and std reported)")
    d.add_argument("--workers", type=bounded(int, minimum=1), default=default_workers(),
                   help="processes that decode data: audio when predicting or extracting, images "
                        "per batch above --cache-mb; 1 = this process (default: the %(default)s cores)")
    o = parser.add_argument_group("optimization")
    o.add_argument("--epochs", type=bounded(int, minimum=1), default=epochs,
                   help="maximum epochs (default %(default)s)")
    o.add_argument("--batch-size", type=bounded(int, minimum=1), default=batch_size,
                   help="global batch size, split across torchrun ranks (default %(default)s)")
    o.add_argument("--lr", type=bounded(float, above=0), default=lr,
                   help="Adam learning rate (default %(default)s)")
    o.add_argument("--weight-decay", type=bounded(float, minimum=0), default=0.0,
                   help="Adam weight decay (default 0)")
    o.add_argument("--schedule", choices=SCHEDULES, default="plateau",
                   help="plateau: lr x0.1 when the validation loss stalls, early stopping, the "
                        "best epoch's weights (the study's); cosine: lr from --lr to 0 over "
                        "--epochs, every epoch trained, the last weights (default %(default)s)")
    o.add_argument("--patience", type=bounded(int, minimum=1), default=5,
                   help="plateau: early stopping after this many epochs without a better "
                        "validation balanced accuracy (default %(default)s)")
    o.add_argument("--min-epochs", type=bounded(int, minimum=0), default=0,
                   help="plateau: epochs to train before early stopping may stop (default 0)")
    o.add_argument("--mixup", type=bounded(float, minimum=0), default=0.0,
                   help="mixup: train on mixes of pairs, weights ~ Beta(a, a); 0 = off (default)")
    r = parser.add_argument_group("run")
    r.add_argument("--out", default="runs", help="runs folder (default %(default)s)")
    r.add_argument("--name", help="run name: the folder OUT/NAME (default script-model-time)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run of this name")
    r.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run that was killed, interrupted or stopped by --time-limit, "
                        "from its checkpoint, with its recorded arguments (only --device of the "
                        "same kind, --workers and --time-limit may be given)")
    r.add_argument("--time-limit", type=duration, metavar="DURATION",
                   help="stop training cleanly before this much time has passed since the start "
                        "(90s, 45m, 11h30m): checkpoint, report and predictions of the model so "
                        "far; --resume continues it")
    r.add_argument("--seed", type=int, default=0, help="seed for split, init and order (default 0)")
    r.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    add_submission_args(parser.add_argument_group("prediction and Kaggle"), predict_flag=True)


def add_image_args(group, img_size_help, img_size_minimum):
    """The flags of the trainers that read spectrogram images."""
    group.add_argument("--img-size", type=bounded(int, minimum=img_size_minimum), help=img_size_help)
    group.add_argument("--augment", nargs="?", const="rotate", default="none", choices=list(AUGMENTATIONS),
                       help="training images only: rotate is the study's RandomRotation(15) "
                            "(--augment alone), specaugment masks and shifts (default none)")
    group.add_argument("--cache-mb", type=bounded(int, minimum=0), default=4096,
                       help="decode all images into memory up to this size, else per batch "
                            "(default %(default)s)")


def add_submission_args(group, predict_flag=False):
    if predict_flag:
        group.add_argument("--predict", metavar="DIR", help="after training, predict the audio "
                           "files in DIR and write RUN/submission.csv")
    group.add_argument("--id-col", default="id", help="submission id column (default id: the "
                       "file name)")
    group.add_argument("--label-col", default="class", help="submission label column (default "
                       "class)")
    group.add_argument("--sample-submission", metavar="CSV", help="a Kaggle sample_submission.csv: "
                       "its column names, ids and order shape submission.csv")
    group.add_argument("--submit", metavar="COMPETITION", help="send submission.csv to this Kaggle "
                       "competition (the message names the run, for compare.py --kaggle)")
    group.add_argument("-m", "--message", help="submission message (default: the run name)")
    group.add_argument("--dry-run", action="store_true", help="show what --submit would send")


def parse_run_args(parser, argv, data_is_file=False, data_flag="--data", check_model=None,
                   paths=True):
    """A trainer's arguments, all checked before any work starts: the flags (check_flags, and
    the trainer's own check_model(args)), then the paths (paths=False: flags only, as a kernel
    recipe is checked when built). With --resume RUN_DIR, the run's recorded ones instead."""
    args = parser.parse_args(argv)
    check_torchvision()
    if args.resume and paths:
        args = resumed_args(parser, args)
    check_flags(parser, args)
    if check_model:
        check_model(args)
    if paths:
        check_paths(args, data_is_file, data_flag)
    return args


def check_flags(parser, args):
    """Combinations of flags that cannot work, whatever the data: one line naming the flag."""
    if args.schedule == "cosine":
        refuse_unused(parser, args, ("patience", "min_epochs"), "no early stopping with "
                      "--schedule cosine (every epoch trained, the last kept); add --schedule "
                      "plateau to stop early")
    if args.split and args.folds:
        raise SuiteError("--split and --folds: give one (the folds make their own splits)")
    if args.predict and args.folds:
        raise SuiteError("--predict with --folds: train without --folds, or predict with one "
                         "fold's model: python predict.py RUN/foldK/model.pt DIR")
    for flag, value in (("--sample-submission", args.sample_submission), ("--submit", args.submit)):
        if value and not args.predict:
            raise SuiteError(f"{flag} needs --predict DIR (the submission is its predictions)")
    if args.name and not RUN_NAME.fullmatch(args.name):
        raise SuiteError(f"--name {args.name!r}: letters, digits, '.', '_' and '-' only (it "
                         "names a folder under --out)")


def resumed_args(parser, args):
    """--resume RUN_DIR: the arguments the run recorded in its config.json (only those of
    RESUME_FLAGS may be given again). A finished run: nothing to do, said before any work."""
    run_dir = Path(args.resume)
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
        recorded = config["args"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SuiteError(f"--resume {run_dir}: not a run folder of this suite (no readable "
                         "config.json)") from None
    if config.get("script") != parser.prog:
        raise SuiteError(f"--resume {run_dir}: a run of {config.get('script')}, not {parser.prog}")
    defaults = vars(parser.parse_args([]))
    given = [k for k, v in vars(args).items() if k not in RESUME_FLAGS and v != defaults.get(k)]
    if given:
        raise SuiteError(f"--resume continues {run_dir} with its recorded arguments; leave out "
                         + ", ".join(f"--{k.replace('_', '-')}" for k in given))
    if run_finished(run_dir):
        raise NothingToDo(f"{run_dir}: finished before; nothing to do (predict with: python "
                          f"predict.py {run_dir} AUDIO_DIR)")
    return argparse.Namespace(**{
        **defaults, **{k: v for k, v in recorded.items() if k in defaults},
        "out": str(run_dir.parent), "name": run_dir.name, "overwrite": False,
        **{k: getattr(args, k) for k in RESUME_FLAGS}})


def is_run_folder(folder):
    folder = Path(folder)
    return folder.is_dir() and (not any(folder.iterdir()) or any(
        (folder / name).exists() for name in ("config.json", "metrics.json", "checkpoint.pt")))


def check_paths(args, data_is_file, data_flag):
    """Every path the flags name, before any work: one line naming the flag."""
    data = Path(args.data)
    if data_is_file and data.is_dir():
        raise SuiteError(f"{data_flag} {data}: a folder, not a file; give the CSV file")
    if not data_is_file and data.is_file():
        raise SuiteError(f"{data_flag} {data}: a file, not a folder; give the folder of "
                         + ("audio" if getattr(args, "arch", None) == "cnn14" else "images"))
    if not (data.is_file() if data_is_file else data.is_dir()):
        raise SuiteError(f"{data_flag} {data}: no such {'file' if data_is_file else 'folder'}")
    if args.split:
        if not split_file(args.split).is_file():
            raise SuiteError(f"--split {args.split}: no such file (or a named split: "
                             f"{', '.join(NAMED_SPLITS)})")
        read_split(split_file(args.split))
    if args.predict:
        try:
            list_audio(args.predict)
        except SuiteError as e:
            raise SuiteError(f"--predict {e}") from None
    if args.sample_submission:
        check_sample_submission(args.sample_submission, list_audio(args.predict))
    check_output_folder(args.out, "--out")
    if args.name and not args.resume:
        run_dir = Path(args.out) / args.name
        if run_dir.exists() and not args.overwrite:
            resume = "" if run_finished(run_dir) else f", continue it with --resume {run_dir}"
            raise SuiteError(f"{run_dir} exists{' (a finished run)' if not resume else ''}: "
                             f"choose another --name{resume}, or replace it with --overwrite")
        if run_dir.exists() and not is_run_folder(run_dir):
            raise SuiteError(f"--overwrite: {run_dir} is not a run folder of this suite; not "
                             "replacing it")
        if run_dir.exists():
            check_not_training(run_dir, "--overwrite")
    if args.resume:
        check_not_training(args.resume, "--resume")
    if args.device != "auto":
        pick_device(args.device)
    if args.submit and not args.dry_run:
        kaggle_api()  # credentials now, not after hours of training
# ----------------------------------------------------------------------------------------------
# Run folder: config.json, history.csv, metrics.json, predictions.csv, report.txt, curves.png,
# confusion.png, model.pt (and checkpoint.pt while training). A trainer's run:
#
#     with start_run(args, argv, "train_cnn.py", model_name, splits=..., device=...) as run:
#         for part in run.parts():                      # the split, or each fold not finished yet
#             model = build_model(spec)
#             result = fit(model, train, val, checkpoint=part.checkpoint, ...)
#             tested = test_model(model, test, ...)
#             report = test_report(part, model_name, classes, tested, result, ...)
#             save(part, model, spec, report, train=train)  # model.pt, then the report's files
#             if not result.complete: break                 # stopped by the time limit
#         summarize_folds(run)
#
# A part is finished when it has its model and metrics.json and no checkpoint.pt; --resume
# carries on with the parts that are not.

def library_versions():
    import sklearn
    import torchvision
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": np.__version__,
                "scikit-learn": sklearn.__version__}
    with contextlib.suppress(Exception):
        import librosa
        versions["librosa"] = librosa.__version__
    return versions


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


MODEL_FILES = ("model.pt", "model.joblib")  # a network, or a scikit-learn baseline


def save_model(path, model, spec, classes, **extra):
    """A plain dict that torch.load(..., weights_only=True) reads back: spec rebuilds the model
    (build_model), spec["preprocess"] says how audio becomes its input."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    checkpoint = {"spec": spec, "classes": list(classes), "state_dict": state, **extra}
    atomic_write(path, lambda f: torch.save(checkpoint, f), mode="wb")


def write_history(path, history):
    write_csv(path, HISTORY_COLUMNS, [[h[c] for c in HISTORY_COLUMNS] for h in history])


def write_results(part_dir, metrics, report):
    """Everything of a part's folder but config.json and the model; metrics.json last: it says
    the part was tested (rank 0 only)."""
    write_history(part_dir / "history.csv", report.history)
    write_predictions(part_dir / "predictions.csv", metrics["classes"], *report.predictions)
    atomic_write(part_dir / "report.txt", lambda f: f.write(report.text))
    if report.history:
        plot_curves(part_dir / "curves.png", report.history, metrics)
    plot_confusion(part_dir / "confusion.png", metrics, metrics["classes"])
    write_json(part_dir / "metrics.json", metrics)


def model_in(folder):
    """The model file a run folder (or fold) holds, or None."""
    return next((Path(folder) / n for n in MODEL_FILES if (Path(folder) / n).is_file()), None)


def read_json(path):
    """A run's small JSON file (config.json, metrics.json, checkpoint.json, summary.json) as a
    dict; {} when it is missing or damaged (a copy cut short)."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def read_metrics(part_dir):
    return read_json(Path(part_dir) / "metrics.json")


def update_metrics(part_dir, **changes):
    """The one rewrite of a tested part's metrics.json (a Kaggle score, where a run came from):
    the other figures kept as they are; False when there is none to update."""
    metrics = read_metrics(part_dir)
    if metrics:
        write_json(Path(part_dir) / "metrics.json", {**metrics, **changes})
    return bool(metrics)


def part_finished(folder, *, model=True):
    """A part (a run, or one fold) tested after its training completed (metrics.json says so)
    and, with model=True, its model file there. save() writes the model, then metrics.json, so
    this is true only at the end (an older order wrote the report first: --resume finishes such
    a part). model=False reads the small files alone: a Kaggle output's progress, brought home
    without weights."""
    metrics = read_metrics(folder)
    return bool(metrics) and metrics.get("complete", True) \
        and (not model or model_in(folder) is not None)


def run_finished(run_dir):
    """A finished run: its one part finished, or its folds summarized."""
    return part_finished(run_dir) or (Path(run_dir) / "summary.json").is_file()


@dataclass
class RunProgress:
    """How far a run folder is, read from its small files (config.json, checkpoint.json written
    with every checkpoint, metrics.json at the end): what resuming it starts from."""
    finished: bool
    parts: int         # 1, or the number of folds
    parts_done: int    # parts tested with complete training
    epochs_done: int   # of the part in progress (of the last part when all are done)
    epochs: int        # --epochs

    @property
    def rank(self):
        """Orders runs of the same flags: the one further on is greater."""
        return (self.finished, self.parts_done, self.epochs_done)

    def __str__(self):
        if self.finished:
            return "finished"
        where = f"epoch {self.epochs_done} of {self.epochs}"
        return where if self.parts == 1 else f"fold {self.parts_done + 1} of {self.parts}, {where}"


def run_progress(run_dir):
    """RunProgress of a run folder, or None when it is not one (no readable config.json)."""
    run_dir = Path(run_dir)
    try:
        args = read_json(run_dir / "config.json")["args"]
        parts, epochs = int(args.get("folds") or 1), int(args["epochs"])
    except (KeyError, TypeError, ValueError):
        return None
    folders = [run_dir] if parts == 1 else [run_dir / f"fold{k}" for k in range(1, parts + 1)]
    done = [part_finished(f, model=False) for f in folders]
    parts_done = sum(done)
    current = next((f for f, d in zip(folders, done) if not d), folders[-1])
    epochs_done = read_json(current / "checkpoint.json").get(
        "epochs_done", read_metrics(current).get("epochs_run", 0))
    return RunProgress(parts_done == parts, parts, parts_done, int(epochs_done), epochs)


@dataclass
class Run:
    """A training command's run folder: claimed (or reopened with --resume) with its
    config.json, the parts to train in it (the split, or the folds), its processes."""
    args: argparse.Namespace
    script: str
    dir: Path
    dist: Dist
    splits: list              # (part name: "" or "foldK", split)
    clip_ids: list            # of the items, to index the splits
    deadline: float = None    # --time-limit: time.time() at which training must have stopped
    replaced: Path = None     # --overwrite: the old run, kept aside until this one has results
    device: str = None        # what it trains on (device_label), named in metrics.json
    lock: tuple = None        # RUN/.training, held while this process trains in the folder

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        """Success: every rank waits for the others, leaves the process group, and the replaced
        run goes. Failure before the first checkpoint: nothing is left behind (a replaced run
        comes back); after it: a line says how to go on."""
        try:
            return self.finish(kind, error)
        finally:
            self.unlock()

    def finish(self, kind, error):
        if kind is None:
            self.dist.finish()
            self.forget_replaced()
            return False
        if not self.dist.main:
            return False
        saved = any(self.dir.rglob("checkpoint.pt")) or any(self.dir.rglob("metrics.json"))
        if not saved and not self.args.resume:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.unlock()
            if self.replaced:
                self.replaced.rename(self.dir)
        if saved:
            self.forget_replaced()
        if any(self.dir.rglob("checkpoint.pt")) and not isinstance(error, BadCheckpoint):
            print(f"the run stopped; continue it with: python {self.script} --resume {self.dir}",
                  file=sys.stderr)
        return False

    def unlock(self):
        unlock_run_folder(self.lock)
        self.lock = None

    def forget_replaced(self):
        if self.dist.main and self.replaced and self.replaced.exists():
            shutil.rmtree(self.replaced)

    @property
    def model_file(self):
        return model_in(self.dir)

    def parts(self):
        """The parts to train: the split, or the folds; with --resume, those not finished
        before."""
        for name, split in self.splits:
            folder = self.dir / name
            if part_finished(folder):  # --resume: finished before
                drop_checkpoint(folder / "checkpoint.pt")  # left by a kill at the very end
                metrics = read_metrics(folder)
                self.dist.log(f"{folder}: finished before (balanced accuracy "
                              f"{metrics['test_balanced_accuracy']:.3f})")
                continue
            part = Part(self, folder, split, split_indices(split, self.clip_ids), name)
            self.dist.log(f"{name or 'split'}: {sum(map(len, part.indices.values()))} items: "
                          + ", ".join(f"{len(part.indices[p])} {p}" for p in ("train", "val", "test")))
            yield part


@dataclass
class Part:
    """One split of a run: the shared split (its folder is the run's) or fold K (RUN/foldK)."""
    run: Run
    dir: Path
    split: dict
    indices: dict   # train/val/test -> item indices
    name: str       # "" or "foldK"

    @property
    def checkpoint(self):
        return self.dir / "checkpoint.pt"


RUN_LOCK = ".training"  # held (flock) by the process training in the folder, for its life


def lock_run_folder(run_dir, flag):
    """Lock RUN/.training for this process (the kernel lets it go however the process ends), or
    refuse in one line naming `flag` and the process that trains there. Returns the lock."""
    path = Path(run_dir) / RUN_LOCK
    if fcntl is None:
        return None
    while True:
        try:
            f = open(path, "a+")
        except OSError as e:
            raise SuiteError(f"{flag} {run_dir}: cannot write in it ({e.strerror})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "?"
            f.close()
            raise SuiteError(f"{flag} {run_dir}: a run is training in it now (process {owner}); "
                             "wait for it to end, or choose another --name") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                f.seek(0)
                f.truncate()
                f.write(str(os.getpid()))
                f.flush()
                return path, f
        f.close()  # its holder removed it meanwhile: lock the file there now


def unlock_run_folder(lock):
    if lock:
        path, f = lock
        Path(path).unlink(missing_ok=True)  # while held: no one else holds this file
        f.close()


def check_not_training(run_dir, flag):
    """Refuse now, before any work, a run folder some process trains in (under torchrun rank 0
    alone asks: two ranks trying the lock at once would each see the other)."""
    if os.environ.get("RANK", "0") == "0" and Path(run_dir).is_dir() and writable(run_dir):
        unlock_run_folder(lock_run_folder(run_dir, flag))


def claim_run_folder(out, name, overwrite):
    """Make OUT/NAME for this run, atomically, and lock it for the run's life: of two runs
    started at once under one name, one gets the folder and the other a one-line error before it
    trains. --overwrite moves the old run aside (it comes back if the new one fails before its
    first checkpoint), never one that is training. Returns (folder, old run moved aside, lock)."""
    run_dir, replaced = Path(out) / name, None
    if overwrite and run_dir.exists():
        old = lock_run_folder(run_dir, "--overwrite")
        replaced = run_dir.with_name(f".{name}.replaced")
        try:
            shutil.rmtree(replaced, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):  # another run moved it first
                run_dir.rename(replaced)
        finally:
            unlock_run_folder((replaced / RUN_LOCK, old[1]) if old else None)
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise SuiteError(f"{run_dir} was just made by another run; choose another --name") from None
    return run_dir, replaced, lock_run_folder(run_dir, "--name")


def start_run(args, argv, script, model_name, *, classes, splits, clip_ids, device, dist,
              started):
    """The run's folder, claimed (or reopened with --resume, its split unchanged), and its
    config.json. started: the time.time() --time-limit counts from."""
    hashes = [split_hash(s) for _, s in splits]
    replaced = lock = None
    if args.resume:
        run_dir = Path(args.resume)
        if dist.main:
            lock = lock_run_folder(run_dir, "--resume")
        recorded = read_json(run_dir / "config.json").get("split_hashes")
        if recorded and recorded != hashes:
            unlock_run_folder(lock)
            raise SuiteError(f"--resume {run_dir}: the data or its split changed since the run "
                             "started; start a new run")
    elif dist.main:
        name = args.name
        if name:
            run_dir, replaced, lock = claim_run_folder(args.out, name, args.overwrite)
        else:
            stamp = f"{script.removesuffix('.py').removeprefix('train_')}-{model_name}-{datetime.now():%Y%m%d-%H%M%S}"
            for name in (stamp, *(f"{stamp}-{i}" for i in range(2, 1000))):
                with contextlib.suppress(SuiteError):
                    run_dir, replaced, lock = claim_run_folder(args.out, name, False)
                    break
    if not args.resume:
        run_dir = Path(args.out) / dist.gather(run_dir.name if dist.main else None)[0]
    deadline = started + args.time_limit if args.time_limit else None
    run = Run(args, script, run_dir, dist, splits, list(clip_ids), deadline, replaced,
              device_label(device), lock)
    if dist.main:
        if not args.resume:
            command = " ".join([script, *(sys.argv[1:] if argv is None else argv)])
            write_json(run_dir / "config.json", {
                "script": script, "model": model_name, "command": command,
                "args": jsonable({**vars(args), "name": run_dir.name}),
                "versions": library_versions(), "world_size": dist.world,
                "split": split_label(args, splits[0][1]),
                "split_hash": hashes[0] if len(hashes) == 1 else "k-fold",
                "split_hashes": hashes, "split_seed": splits[0][1].get("seed")})
        print(f"{script} {model_name}: {len(classes)} classes, device {device}"
              + (f", {dist.world} processes" if dist.active else "") + f" -> {run_dir}")
    return run


def drop_checkpoint(path):
    path.with_suffix(".json").unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def save(part, model, spec, report, *, train):
    """Write the part's model (model.pt, or model.joblib for a scikit-learn estimator, with the
    fallback class for unreadable audio and the caveats a prediction repeats), then its report
    (metrics.json last: the part was tested), then drop the checkpoint once training completed
    (else --resume goes on from it); and say so. Rank 0 only."""
    run, metrics = part.run, report.metrics
    classes = metrics["classes"]
    if not run.dist.main:
        return
    extra = {"run": str(part.dir), "fallback_class": majority_class(classes, train.labels),
             "caveats": caveats(run.args.data, metrics)}
    if isinstance(model, nn.Module):
        save_model(part.dir / "model.pt", model, spec, classes, best_epoch=metrics["best_epoch"],
                   **extra)
    else:
        import joblib
        saved = {"estimator": model, "spec": spec, "classes": classes, **extra}
        atomic_write(part.dir / "model.joblib", lambda f: joblib.dump(saved, f), mode="wb")
    write_results(part.dir, metrics, report)
    if metrics["complete"]:  # the model file has the weights (a kill before this: --resume drops it)
        drop_checkpoint(part.checkpoint)
    print(f"test: balanced accuracy {metrics['test_balanced_accuracy']:.3f} (95% CI "
          f"{interval_text(metrics.get('test_balanced_accuracy_ci'))}), accuracy "
          f"{metrics['test_accuracy']:.3f} (95% CI {interval_text(metrics.get('test_accuracy_ci'))}), "
          f"macro F1 {metrics['test_macro_f1']:.3f} on {metrics['n_test']} clips "
          f"({metrics['split']}) -> {part.dir}")
    print(report.text.rstrip("\n"))
    print(confusion_text(metrics["confusion"], classes))
    for part_name in ("test", "val"):
        if metrics[f"small_{part_name}"]:
            print(f"note: a small {part_name} part: {metrics[f'small_{part_name}']}")
    if not metrics["complete"]:
        print(f"note: stopped at the time limit after epoch {metrics['epochs_run']} of "
              f"{metrics['epochs']}; continue with: python {run.script} --resume {run.dir}")


def tested_parts(run_dir):
    """A run's folders with test figures: itself, or its folds in order."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        return [run_dir]
    return sorted((p.parent for p in run_dir.glob("fold*/metrics.json")),
                  key=lambda p: int(p.name[4:]))


def summarize_folds(run):
    """--folds K: mean, sample standard deviation (ddof=1: K is small) and the 95 % t interval of
    the mean over the folds, into RUN/summary.json, once every fold is finished (read from their
    metrics.json)."""
    if not run.args.folds or not run.dist.main:
        return None
    folders = [run.dir / name for name, _ in run.splits]
    if not all(part_finished(f) for f in folders):
        return None
    results = [read_metrics(f) for f in folders]
    bal = np.array([m["test_balanced_accuracy"] for m in results])
    acc = np.array([m["test_accuracy"] for m in results])
    clips = sum(m["n_test"] for m in results)  # every clip tested once
    summary = {"model": results[0]["model"], "folds": len(results), "split": split_label(run.args),
               "balanced_accuracy_mean": float(bal.mean()), "balanced_accuracy_std": float(bal.std(ddof=1)),
               "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)),
               "balanced_accuracy_ci": mean_interval(bal, clips=clips),
               "accuracy_ci": mean_interval(acc, clips=clips),
               "ci_method": T_MEAN, "per_fold_balanced_accuracy": bal.tolist()}
    write_json(run.dir / "summary.json", summary)
    print(f"{len(results)}-fold: balanced accuracy {summary['balanced_accuracy_mean']:.3f} +- "
          f"{summary['balanced_accuracy_std']:.3f} (fold to fold; 95% CI of the mean "
          f"{interval_text(summary['balanced_accuracy_ci'])}), accuracy "
          f"{summary['accuracy_mean']:.3f} +- {summary['accuracy_std']:.3f} (95% CI "
          f"{interval_text(summary['accuracy_ci'])}) -> {run.dir}/summary.json")
    return summary


def check_sample_submission(path, files):
    """read_sample_submission(path), refused in one line when none of its ids is one of the test
    files (the wrong sample, or the wrong folder): its rows would all get one fallback class."""
    id_col, label_col, ids = read_sample_submission(path)
    names = {normalize_id(f.name) for f in files}
    if not names & {normalize_id(i) for i in ids}:
        raise SuiteError(f"--sample-submission {path}: none of its {len(ids)} ids is a file of "
                         f"{Path(files[0]).parent} (e.g. {ids[0]!r} and {files[0].name!r}): the "
                         "wrong sample or the wrong folder")
    return id_col, label_col, ids


def read_sample_submission(path):
    """(id column, label column, ids) of a Kaggle sample_submission.csv."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header, *rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
        raise SuiteError(f"--sample-submission {path}: not a readable CSV ({type(e).__name__})") from None
    ids = [r[0] for r in rows if r]
    if len(header) < 2 or not ids:
        raise SuiteError(f"--sample-submission {path}: expected a header (id, label columns) and "
                         "a row per test file")
    return header[0], header[1], ids
