"""What every Kaggle kernel of the suite runs: find the data under /kaggle/input, pick up the run
the previous session left (attached as its relay partner's output, or a data set), make images or
features in /kaggle/temp, train into /kaggle/working/runs/NAME/ within the time limit, predict
the test audio into /kaggle/working/submission.csv; or, for a `predict` kernel, only predict with
a finished run. kernels/build.py writes it into each kernel's notebook and calls
main([], RECIPE); locally:

    python kernels/kernel_main.py kernels/NAME/recipe.json --train DIR --test DIR \\
        --temp T --working W -- --epochs 2

Kaggle's layout, under $KAGGLE_ROOT (default /kaggle): input/ (read-only: the attached
competition, data sets and kernel outputs, mounted as input/<slug>/, input/competitions/<slug>/,
input/datasets/<owner>/<slug>/ or input/notebooks/<owner>/<slug>/), temp/ (scratch, not kept),
working/ (saved as the version's output). Nothing is ever written under input/.

A kernel cannot attach its own output (Kaggle answers it as an invalid source and mounts
nothing), and a source kernel mounts its newest *complete* version. So each training recipe is
two kernels that attach each other's output (the kernel and its relay partner, see build.py):
the run lives in working/runs/NAME/ from the start, a session stopped cleanly by --time-limit
completes with its checkpoint in the output, and the partner's next version finds it under input/
and goes on. kernels/kaggle_loop.py push decides whose turn it is.
"""
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

if not (Path(__file__).parent / "common.py").is_file():  # kernels/ of the repository, not a kernel
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import audio  # noqa: E402
import common  # noqa: E402
import conversion  # noqa: E402
import data  # noqa: E402
import models  # noqa: E402
import predict  # noqa: E402
import runs  # noqa: E402
import training  # noqa: E402

TRAINERS = {"cnn": "train_cnn", "transfer": "train_transfer", "mlp": "train_mlp"}  # by kind
KINDS = (*TRAINERS, "predict")
TRAIN_NAMES = ("train", "genres_original", "genres")  # a competition's, GTZAN's, GTZAN's older
KERNEL_FLAGS = ("data", "out", "name", "resume", "overwrite", "predict", "sample_submission",
                "submit", "message", "dry_run", "time_limit")  # the trainer flags a kernel sets
# Kaggle sets this when it reruns a code competition's kernel on the hidden test set
# (practitioners test it to skip training: os.getenv("KAGGLE_IS_COMPETITION_RERUN")).
RERUN = "KAGGLE_IS_COMPETITION_RERUN"
# Set in Kaggle's sessions ("Batch" for a committed version, "Interactive" in the editor); the
# GPU check applies there only (a local run picks its own device).
RUN_TYPE = "KAGGLE_KERNEL_RUN_TYPE"
# Kaggle's session limits (../shared/KAGGLE.md): 12 h, 9 h for a code competition's notebook;
# a kernel stops training at least 10 minutes before, by default half an hour
SESSION_HOURS, CODE_COMPETITION_HOURS, MARGIN_SECONDS = 12, 9, 600
# the image conversion's defaults: data_conversion.py's, from one place
IMAGE_CONVERSION = {k: audio.CONVERSION_DEFAULTS[k] for k in ("size", "mel", "segment_seconds")}
QUICK_CLIPS = 10  # per genre, in a quick test (RECIPE["quick_test"] = True in the recipe cell)
SEARCH_DEPTH = 6  # how deep under input/ mounts are looked for: their layout has changed over time


def session_hours(code_competition):
    return CODE_COMPETITION_HOURS if code_competition else SESSION_HOURS


def default_time_limit(code_competition):
    return f"{session_hours(code_competition) - 1}h30m"


def fits_session(seconds, code_competition):
    """Whether training that stops at `seconds` leaves Kaggle's margin before the session ends."""
    return seconds <= session_hours(code_competition) * 3600 - MARGIN_SECONDS


def build_parser(recipe):
    root = Path(os.environ.get("KAGGLE_ROOT", "/kaggle"))
    conversion, kind = recipe.get("conversion", {}), recipe["kind"]
    p = common.ArgumentParser(prog="kernel_main.py", description=__doc__, allow_abbrev=False)
    p.add_argument("--input", default=str(root / "input"),
                   help="where the data sources are mounted (default %(default)s)")
    if kind != "predict":
        p.add_argument("--train", help="labeled audio (default: found under --input)")
        p.add_argument("--labels", help="CSV id,label for a flat --train folder (default: "
                                        "train.csv beside it)")
    p.add_argument("--test", help="flat folder of audio to predict (default: the folder named "
                                  f"{recipe['test_folder']!r} found under --input)")
    p.add_argument("--sample-submission", help="its columns and ids shape submission.csv "
                                               f"(default: {recipe['sample_submission']!r} found "
                                               "beside the test folder)")
    p.add_argument("--temp", default=str(root / "temp"),
                   help="scratch for images, features and caches (default %(default)s)")
    p.add_argument("--working", default=str(root / "working"),
                   help="saved output: runs/NAME/ and submission.csv (default %(default)s)")
    if kind == "predict":
        return p
    p.add_argument("--time-limit", type=common.duration, default=recipe["time_limit"],
                   metavar="DURATION", help="stop training cleanly before this much time has "
                   "passed since the kernel started, leaving time to predict (default "
                   f"{recipe['time_limit']})")
    if kind == "mlp":
        p.add_argument("--feature-set", default=conversion.get("feature_set", "standard"),
                       choices=list(audio.FEATURE_SETS),
                       help="the audio features to extract (default %(default)s)")
    else:
        p.add_argument("--size", type=int, default=conversion.get("size", IMAGE_CONVERSION["size"]),
                       help="spectrogram image side for the conversion (default %(default)s)")
        p.add_argument("--segment-seconds", type=float,
                       default=conversion.get("segment_seconds", IMAGE_CONVERSION["segment_seconds"]),
                       help="cut clips into S-second segments, scored per clip (default %(default)s)")
        p.add_argument("--mel", type=int, default=conversion.get("mel", IMAGE_CONVERSION["mel"]),
                       help="N log-mel bands instead of the linear STFT (default %(default)s)")
    p.add_argument("--processes", default=str(recipe.get("processes", "auto")),
                   help="training processes under torchrun: auto (one per GPU when the recipe "
                        "gains from it, else one) or N (default %(default)s)")
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
    if recipe["kind"] == "predict" and unknown + theirs:
        raise common.SuiteError(f"{' '.join(unknown + theirs)}: a predict kernel takes no "
                                "trainer flags (the model says how it was trained)")
    processes = getattr(args, "processes", "auto")
    if processes != "auto" and not (processes.isdigit() and int(processes) >= 1):
        raise common.SuiteError(f"--processes {processes}: auto or a number >= 1")
    return args, unknown + theirs


# ----------------------------------------------------------------------------------------------
# Checked when a kernel is built (build.py) and again when it starts

def check_recipe(recipe):
    """The recipe's trainer flags as the kernel will pass them: parsed by the trainer (a bad flag
    fails at build time, not an hour into a session), none of the flags the kernel sets itself,
    and a --split the kernel can find (a named split ships with the kernel; a file is looked for
    by its name under input/). Returns the trainer's parsed flags (None for a predict kernel)."""
    if recipe["kind"] == "predict":
        return None
    trainer = importlib.import_module(TRAINERS[recipe["kind"]])
    flags = recipe["trainer_args"]
    args = trainer.parse_args(flags, check_paths=False)
    defaults = trainer.parse_args([], check_paths=False)
    owned = [k for k in KERNEL_FLAGS if getattr(args, k, None) != getattr(defaults, k, None)]
    if owned:
        flag = "--data/--features" if owned[0] == "data" else f"--{owned[0].replace('_', '-')}"
        raise common.SuiteError(f"{flag}: set by the kernel (data, run folder, resume, "
                                "prediction, time limit), not a trainer flag of a recipe")
    if args.split and args.split not in data.NAMED_SPLITS and Path(args.split).name != args.split:
        raise common.SuiteError(f"--split {args.split}: give the split file's name (the kernel "
                                "looks for it under /kaggle/input: attach the data set holding "
                                f"it) or a named split ({', '.join(data.NAMED_SPLITS)})")
    return args


def asks_for_gpu(recipe):
    """Whether the kernel's metadata asks Kaggle for a GPU: all but the MLP's (and a predict
    kernel of an MLP run), which get a CPU session."""
    return recipe["kind"] != "mlp" and recipe.get("source_kind") != "mlp"


def check_gpu(recipe):
    """First thing in a Kaggle session: the GPU it asked for is there, else one line and stop
    before any work (a version has been reported running with no GPU, KAGGLE.md: an hour of
    training on the CPU is an hour lost), unless the recipe says a CPU is fine (--allow-cpu)."""
    if not os.environ.get(RUN_TYPE):
        return
    gpus = training.usable_gpus()
    if gpus:
        print(f"device: {gpus} x {training.device_label('cuda')}", flush=True)
    elif not asks_for_gpu(recipe):
        print("device: cpu (this kernel asks for no GPU)", flush=True)
    elif recipe.get("allow_cpu"):
        print("device: cpu: this kernel asked for a GPU and the session has none; training on "
              "the CPU, as its recipe allows (--allow-cpu)", flush=True)
    else:
        raise common.SuiteError(
            "this kernel asked for a GPU and the session has none (Accelerator off, or the "
            "weekly GPU quota used up: kaggle quota): stopping before any work; turn the GPU on "
            "and run it again, or rebuild with kernels/build.py --allow-cpu (\"allow_cpu\": True in "
            "the recipe cell) to train on the CPU")


def trainer_flags(recipe, passthrough, input_dir):
    """The recipe's trainer flags and the ones given, with a --split file's name replaced by its
    path under input/."""
    flags = [*recipe["trainer_args"], *passthrough]
    for i, flag in enumerate(flags[:-1]):
        name = flags[i + 1]
        if flag == "--split" and name not in data.NAMED_SPLITS and not Path(name).is_file():
            found = find_file(input_dir, Path(name).name)
            if found is None:
                raise common.SuiteError(f"--split {name}: no file of that name under {input_dir}; "
                                        "attach the data set holding it")
            flags[i + 1] = str(found)
    return flags


# ----------------------------------------------------------------------------------------------
# Finding the data, and the run of an earlier session

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
    if any(p.is_file() and audio.is_audio(p) for p in children):
        return True
    return labeled and any(d.is_dir() and any(audio.is_audio(f) for f in d.iterdir())
                           for d in children)


def subfolders(folders):
    return [d for folder in folders for d in sorted(folder.iterdir())
            if d.is_dir() and not d.name.startswith(".")]


def breadth_first(roots, depth=SEARCH_DEPTH):
    """Every folder under the roots (the roots too), level by level."""
    level = [Path(r) for r in roots if Path(r).is_dir()]
    for _ in range(depth + 1):
        yield from level
        level = subfolders(level)


def find_folder(roots, names, labeled):
    """The first folder named one of `names` holding audio, under the roots (breadth first)."""
    return next((f for f in breadth_first(roots) if f.name in names and has_audio(f, labeled)),
                None)


def find_file(input_dir, name):
    return next((f / name for f in breadth_first([input_dir]) if (f / name).is_file()), None)


def recipe_sources(recipe):
    return ([recipe["competition"]] if recipe["competition"] else []) + recipe["datasets"]


def find_train(args, recipe):
    """(labeled audio folder, labels CSV or None)."""
    if not args.train and not Path(args.input).is_dir():
        raise common.SuiteError(f"--input {args.input}: no such folder (not on Kaggle? give "
                                "--train DIR, and --test DIR to predict)")
    roots = source_roots(args.input, recipe_sources(recipe))
    train = Path(args.train) if args.train else find_folder(roots, TRAIN_NAMES, labeled=True)
    if train is None:
        raise common.SuiteError(
            f"no training audio under {', '.join(map(str, roots))}: expected a folder named "
            f"{' or '.join(TRAIN_NAMES)} with one sub-folder per genre (or flat audio and "
            "train.csv); attach the competition or GTZAN dataset, or pass --train DIR")
    labels = args.labels
    if not labels and (train.parent / "train.csv").is_file() and has_audio(train, labeled=False):
        labels = str(train.parent / "train.csv")
    return train, labels


def find_test(args, recipe, near=None):
    """(test folder or None, sample submission or None); a bad test folder fails now."""
    roots = [*([near] if near else []), *source_roots(args.input, recipe_sources(recipe))]
    test = Path(args.test) if args.test else find_folder(roots, (recipe["test_folder"],),
                                                         labeled=False)
    if test is not None:
        audio.list_audio(test)
    sample = args.sample_submission
    if not sample and test is not None and (test.parent / recipe["sample_submission"]).is_file():
        sample = str(test.parent / recipe["sample_submission"])
    return test, sample


def earlier_runs(input_dir, name):
    """[(run folder runs/NAME/, its progress)] of every earlier session attached under input/:
    the relay partner's output, a data set holding a rescued run, ... (Kaggle's mount paths have
    changed over time, so they are looked for rather than assumed)."""
    found = []
    for folder in breadth_first([input_dir]):
        run = folder / "runs" / name
        progress = runs.run_progress(run) if run.is_dir() else None
        if progress is not None:
            found.append((run, progress))
    return found


def same_run(run_dir, trainer, trainer_argv):
    """Whether the run in run_dir was started with these trainer flags (then it resumes). A
    file under input/ (weights, split, labels) counts by its name: what holds it may be mounted
    elsewhere now."""
    def comparable(key, value):
        named = key in ("weights", "split", "labels") and value
        return Path(value).name if named else runs.jsonable(value)
    recorded = runs.read_json(run_dir / "config.json")["args"]
    wanted = vars(trainer.parse_args(trainer_argv, check_paths=False))
    return all(comparable(k, recorded.get(k)) == comparable(k, v) for k, v in wanted.items()
               if k not in runs.RESUME_FLAGS + KERNEL_FLAGS)


def take_over(earlier, run_dir, trainer, trainer_argv):
    """Copy the furthest earlier run made with these flags into working/ (input/ is read-only),
    saying where from and how far it is; True when there is one."""
    same = [(run, progress) for run, progress in earlier if same_run(run, trainer, trainer_argv)]
    if not same:
        if earlier:
            print(f"{len(earlier)} earlier run(s) attached, made with other flags: training anew")
        else:
            print("no earlier run attached: training from the start")
        return False
    run, progress = max(same, key=lambda found: found[1].rank)
    print(f"resuming the run in {run} ({progress})")
    shutil.copytree(run, run_dir, copy_function=shutil.copyfile)  # not input's read-only modes
    for folder in [run_dir, *run_dir.rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o755)
    return True


def quick_subset(train, labels, temp):
    """The first QUICK_CLIPS clips of each genre, linked into temp/quick-train/<genre>/: what a
    quick test trains on (minutes, not the session), whatever the layout of the training audio."""
    folder = temp / "quick-train"
    shutil.rmtree(folder, ignore_errors=True)
    taken = {}
    for path, label in audio.list_labeled_audio(train, labels):
        if taken.setdefault(label, 0) < QUICK_CLIPS:
            taken[label] += 1
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / path.name).symlink_to(path.resolve())
    return folder, None


def find_weights(input_dir, args, trainer, internet):
    """--weights PATH for a transfer kernel: the pretrained weights file for --arch in an
    attached data set (torchvision's e.g. vgg16-397923af.pth, or PANNs' Cnn14_mAP=0.431.pth),
    so no internet is needed. Looked for before any work: without it and without internet the
    trainer could only fail after the conversion."""
    weights = models.pretrained_weights(args.arch, args.weights)
    if weights == "panns":
        name = models.CNN14_FILE
    elif weights == "imagenet":
        name = models.imagenet_file_name(args.arch)
    else:
        return []
    found = find_file(input_dir, name)
    if found:
        print(f"weights: {found}")
        return ["--weights", str(found)]
    if not internet:
        raise common.SuiteError(f"no {name} under {input_dir}: attach a data set holding it "
                                "(kaggle_loop.py weights makes one), or build with --internet")
    return []  # the trainer downloads them


# ----------------------------------------------------------------------------------------------
# Steps

def prepare_images(args, train, labels, temp, deadline):
    """The training audio converted into temp/images/ as the recipe says."""
    images = temp / "images"
    settings = {"size": args.size, "segment_seconds": args.segment_seconds, "mel": args.mel}
    converted, skipped, errors = conversion.convert_folder(
        train, images, settings, common.default_workers(), labels, overwrite=True,
        deadline=deadline)
    print(f"{converted} clips converted, {skipped} up to date, {len(errors)} bad -> {images}")


def prepare_features(args, train, labels, temp, deadline):
    """The training audio's features extracted into temp/features.csv."""
    features = temp / "features.csv"
    conversion.check_feature_table(features, train, args.feature_set, overwrite=True)
    n, computed, errors = conversion.extract_features(
        train, features, args.feature_set, common.default_workers(), labels, deadline=deadline)
    print(f"{n} clips -> {features} ({computed} extracted, {len(errors)} bad)")


# T4 x2 (Kaggle's NvidiaTeslaT4) as the estimate sees it: fp16 convolutions as fast as they
# run in practice (about a third of the 65 TFLOP/s peak), gradients exchanged over PCIe (no
# NVLink), and a fixed cost per step (Python, kernel launches). Estimates, not measurements.
T4_FLOPS, PCIE_BYTES, STEP_SECONDS = 20e12, 6e9, 0.005


def training_network(recipe, trainer, parsed, data_argv):
    """(network, one input example, name) as the trainer will train it, for the estimate; None
    for a frozen backbone's fast path (the backbone runs once, the head trains in seconds)."""
    import torch
    if recipe["kind"] == "cnn":
        channels = 1 if models.input_channels(parsed.model, parsed.input) == "levels" else 3
        images = sorted(Path(data_argv[1]).glob("*/*.png"))
        if parsed.img_size:
            shape = (parsed.img_size, parsed.img_size)
        else:
            shape = data.native_size(images[:1]) if images else (128, 128)
        return (models.CNN_MODELS[parsed.model](10, shape[0], channels),
                torch.zeros(1, channels, *shape, dtype=torch.uint8), parsed.model)
    if not parsed.finetune and parsed.augment == "none":
        return None
    net, size = models.transfer_network(parsed.arch, 10, parsed.head_dropout, finetune=True)
    example = (torch.zeros(1, int(size * parsed.clip_seconds)) if parsed.arch == "cnn14" else
               torch.zeros(1, 3, parsed.img_size or size, parsed.img_size or size, dtype=torch.uint8))
    return net, example, parsed.arch


def plan_processes(requested, recipe, trainer, parsed, data_argv):
    """(training processes, the line that says why). auto: one per visible GPU when the
    estimated step time on two GPUs (half the compute, plus the gradients' exchange) saves a
    quarter or more; else one, and the line says why the other GPU idles."""
    import torch
    gpus = torch.cuda.device_count()
    if requested != "auto":
        return int(requested), f"training in {requested} process(es) (--processes {requested})"
    if gpus < 2:
        return 1, None
    if recipe["kind"] == "mlp":
        return 1, f"one GPU of {gpus} used: the MLP's steps are tiny"
    network = training_network(recipe, trainer, parsed, data_argv)
    if network is None:
        return 1, (f"one GPU of {gpus} used: the frozen backbone runs once over the data and the "
                   "head trains on its cached outputs in seconds")
    model, example, name = network
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(example)
    weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
    compute = 3 * counter.get_total_flops() * parsed.batch_size / T4_FLOPS  # forward + backward
    exchange = 2 * 4 * weights / PCIE_BYTES
    one, two = compute + STEP_SECONDS, compute / 2 + exchange + STEP_SECONDS
    estimate = (f"a step of {name} at batch {parsed.batch_size}: about {one * 1000:.0f} ms on "
                f"one T4, {two * 1000:.0f} ms on two ({weights / 1e6:.1f} M weights exchanged; "
                "estimated)")
    if two <= 0.75 * one:
        return gpus, f"training on {gpus} GPUs under torchrun: {estimate}"
    return 1, f"one GPU of {gpus} used, the other idles: {estimate}"


def train(trainer, trainer_argv, processes, deadline, started):
    """The trainer in this process (its SuiteError goes up to this kernel's one line), or under
    torchrun (one process per GPU: its exit code); it stops training before `deadline`."""
    if processes <= 1:
        return trainer.main([*trainer_argv, "--time-limit", f"{max(deadline - started, 1):.0f}s"],
                            started=started)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", os.path.abspath(trainer.__file__), *trainer_argv,
               "--time-limit", f"{max(deadline - time.time(), 1):.0f}s"]
    print(f"training in {processes} processes: {' '.join(command)}")
    return subprocess.call(command)


class KernelStopped(Exception):
    """The kernel ended with an error (its line is printed above): the notebook fails, as Kaggle
    then marks the version, and shows this one line, not a traceback."""

    def _render_traceback_(self):  # IPython's hook for how an exception is shown
        return [f"{type(self).__name__}: {self}"]


def run_notebook(recipe):
    """The notebook's run cell: main() with no arguments (as Kaggle runs it), failing the cell
    when the kernel fails."""
    code = main([], recipe)
    if code:
        raise KernelStopped(f"exit code {code}: see the error line above")


@common.user_errors
def main(argv, recipe, started=None):
    """The kernel; a mistake (no data found, a bad flag) is one line and an exit code."""
    started = started or time.time()
    check_gpu(recipe)
    models.check_torchvision()
    args, passthrough = split_argv(argv, recipe)
    temp, working = Path(args.temp), Path(args.working)
    if recipe["kind"] == "predict":
        return predict_kernel(args, recipe, temp, working)
    trainer = importlib.import_module(TRAINERS[recipe["kind"]])
    flags = trainer_flags(recipe, passthrough, args.input)
    if recipe.get("quick_test"):
        flags += ["--epochs", "1"]  # the last --epochs is the one argparse keeps
    parsed = trainer.parse_args(flags, check_paths=False)  # a bad flag fails before any work
    deadline = started + args.time_limit
    train_dir, labels = find_train(args, recipe)
    test, sample = find_test(args, recipe, near=train_dir.parent)
    print(f"train: {train_dir}" + (f" (labels {labels})" if labels else "")
          + f"; test: {test or 'none'}" + (f"; sample submission: {sample}" if sample else ""))
    common.check_output_folder(temp, "--temp")
    common.check_output_folder(working, "--working")
    os.environ["SUITE_CACHE"] = str(temp / "cache")  # what can be recomputed stays in scratch
    weights = find_weights(args.input, parsed, trainer, recipe["internet"]) \
        if recipe["kind"] == "transfer" else []
    name = run_name(recipe)
    if recipe.get("quick_test"):
        train_dir, labels = quick_subset(train_dir, labels, temp)
        print(f"quick test: 1 epoch on {QUICK_CLIPS} clips per genre into runs/{name}/, apart "
              "from the real run; set RECIPE['quick_test'] = False for it")
    run_dir = working / "runs" / name
    reserve = min(600.0, 0.1 * args.time_limit)  # to predict the test audio after training

    # the trainer's flags as the run records them: where its data will be made, and the recipe's
    audio = recipe["kind"] == "transfer" and parsed.arch == "cnn14"  # CNN14 reads the audio
    if recipe["kind"] == "mlp":
        data_argv = ["--features", str(temp / "features.csv")]
    elif audio:
        data_argv = ["--data", str(train_dir), *(["--labels", labels] if labels else [])]
    else:
        data_argv = ["--data", str(temp / "images")]
    trainer_argv = [*data_argv, "--out", str(working / "runs"), "--name", name, *flags, *weights]
    if not run_dir.exists():
        take_over(earlier_runs(args.input, name), run_dir, trainer, trainer_argv)
    progress = runs.run_progress(run_dir) if run_dir.exists() else None
    same = progress is not None and same_run(run_dir, trainer, trainer_argv)
    if run_dir.exists() and not same:  # changed flags are new work, even after a finished run
        print(f"{run_dir} was {'finished' if progress and progress.finished else 'trained'} with "
              "other flags; training anew with these")
        progress = None
    if os.environ.get(RERUN):
        print("Kaggle's rerun on the hidden test set: " + (
            "the run is finished, predicting only" if progress and progress.finished else
            "no finished run attached, so it trains again (a predict kernel, build.py --kind "
            "predict --from NAME, predicts without training)"))
    if progress and progress.finished:
        print(f"{run_dir}: finished before; nothing to train")
    else:
        if recipe["kind"] == "mlp":
            prepare_features(args, train_dir, labels, temp, deadline)
        elif not audio:
            prepare_images(args, train_dir, labels, temp, deadline)
        if same:
            trainer_argv = ["--resume", str(run_dir)]
        elif run_dir.exists():
            trainer_argv.append("--overwrite")
        processes, why = plan_processes(args.processes, recipe, trainer, parsed, data_argv)
        if why:
            print(why)
        code = train(trainer, trainer_argv, processes, deadline - reserve, started)
        if code:
            return code
    model = runs.model_in(run_dir)
    if model is None:  # --folds: one model per fold, no submission
        print(f"{name}: report in {run_dir}; no single model to predict with (--folds)")
        return 0
    progress = runs.run_progress(run_dir)
    if not progress.finished:
        print(f"{name}: stopped at the time limit ({progress}); to go on, "
              f"push the next version: python kernels/kaggle_loop.py push {name} (its relay "
              "partner attaches this output and resumes)")
    if test is None:
        print(f"no test folder in the inputs: trained and evaluated on the split (report in "
              f"{run_dir}); no submission.csv written")
        return 0
    predict.predict_and_submit(model, test, output=run_dir / "submission.csv",
                               workers=common.default_workers(), sample_submission=sample,
                               device=training.pick_device("auto"))
    shutil.copyfile(run_dir / "submission.csv", working / "submission.csv")
    print(f"{name}: {working / 'submission.csv'} (report in {run_dir})")
    return 0


def predict_kernel(args, recipe, temp, working):
    """A finished run of recipe["from"] (attached: the training kernels' outputs) predicts the
    test audio; nothing is trained. What a code competition reruns on its hidden test set."""
    source = recipe["from"]
    finished = [run for run, progress in earlier_runs(args.input, source) if progress.finished]
    if not finished:
        raise common.SuiteError(
            f"no finished run {source} under {args.input}: attach the outputs of "
            f"{' and '.join(recipe['from_kernels'])} once the run has finished "
            f"(kaggle_loop.py status {source})")
    model = runs.model_in(finished[0])
    if model is None:
        raise common.SuiteError(f"{finished[0]}: no single model (--folds); train {source} "
                                "without --folds to predict with it")
    test, sample = find_test(args, recipe)
    common.check_output_folder(temp, "--temp")
    common.check_output_folder(working, "--working")
    if test is None:
        return placeholder_submission(args, recipe, working)
    os.environ["SUITE_CACHE"] = str(temp / "cache")
    print(f"model: {model}; test: {test}" + (f"; sample submission: {sample}" if sample else ""))
    predict.predict_and_submit(model, test, output=working / "submission.csv",
                               workers=common.default_workers(), sample_submission=sample,
                               device=training.pick_device("auto"))
    return 0


def placeholder_submission(args, recipe, working):
    """A code competition's commit run sees no test audio (the hidden test appears only in
    Kaggle's rerun): the version completes with the sample submission as a placeholder
    submission.csv, so that it can be submitted; the rerun predicts for real."""
    missing = f"no {recipe['test_folder']}/ folder of audio under {args.input}"
    if os.environ.get(RERUN):
        raise common.SuiteError(f"{missing} in Kaggle's rerun: the competition's test is not "
                                "where this kernel looks (--test-folder)")
    sample = Path(args.sample_submission) if args.sample_submission else find_file(
        args.input, recipe["sample_submission"])
    if sample is None:
        raise common.SuiteError(f"{missing} and no {recipe['sample_submission']}: attach the "
                                "competition")
    _, _, ids = runs.read_sample_submission(sample)
    working.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample, working / "submission.csv")
    print(f"{missing}: a code competition's commit run, which does not see the hidden test; "
          f"{working / 'submission.csv'} is a placeholder, {sample.name} as it is ({len(ids)} "
          "rows); Kaggle's rerun of this version predicts the hidden test")
    return 0


# ----------------------------------------------------------------------------------------------
# What a notebook shows after the run

def run_name(recipe):
    """The run's folder name: a quick test's is its own, so it is never resumed as the run."""
    return recipe["name"] + ("-quick" if recipe.get("quick_test") else "")


def run_folder(recipe, working=None):
    working = Path(working or Path(os.environ.get("KAGGLE_ROOT", "/kaggle")) / "working")
    return working / "runs" / run_name(recipe)


def results_table(part):
    """The part's metrics as a markdown table, with the split and its number of test clips, the
    95 % intervals over those clips (how each was computed, below), and a word when training
    stopped at the time limit."""
    m = runs.read_metrics(part)

    def with_interval(key):
        ci = m.get(f"{key}_ci")
        return f"{m[key]:.3f} " + (f"(95% CI {ci[0]:.3f}..{ci[1]:.3f})" if ci else "(interval not recorded)")
    rows = [("model", m["model"]), ("test clips", f"{m['n_test']} ({m.get('split', '?')})"),
            ("balanced accuracy", with_interval("test_balanced_accuracy")),
            ("accuracy", with_interval("test_accuracy")), ("macro F1", f"{m['test_macro_f1']:.3f}"),
            ("epochs", f"{m['epochs_run']} (weights of epoch {m['best_epoch']})"),
            ("device", m.get("device") or "not recorded"),
            ("training time", common.clock_text(m["train_seconds"]))]
    if m.get("segment_test_balanced_accuracy") is not None:
        rows.insert(3, ("segment balanced accuracy",
                        f"{m['segment_test_balanced_accuracy']:.3f} ({m['n_test_segments']} segments)"))
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    table += "".join(f"\n{key[5:-3].replace('_', ' ')} interval: {how}.\n"
                     for key, how in m.get("ci_method", {}).items())
    if not m.get("complete", True):
        table = ("**Incomplete: training stopped at the time limit; these are the results of the "
                 "model so far.**\n\n" + table)
    if m.get("small_test"):
        table += f"\nA small test part: {m['small_test']}.\n"
    return table


def next_steps(recipe, run_dir):
    """Where submission.csv went and how to go on, as a few lines of text."""
    run_dir = Path(run_dir)
    name, lines = recipe["name"], []
    working = run_dir.parent.parent
    if (working / "submission.csv").is_file():
        lines.append(f"submission.csv: {working / 'submission.csv'} (in this version's output)")
    progress = runs.run_progress(run_dir)
    if progress is None:
        return "\n".join(lines + ["no run folder: see the log above"])
    if recipe.get("quick_test"):
        return "\n".join(lines + [f"a quick test ({progress}): it works; set RECIPE['quick_test'] "
                                  "= False in the recipe cell for the real run"])
    if not progress.finished:
        lines.append(f"the run is at {progress}: push the next version with python "
                     f"kernels/kaggle_loop.py push {name}; its relay partner attaches this output "
                     "and resumes")
    elif recipe.get("code_competition"):
        lines.append(f"finished: a code competition reruns what is submitted, so submit a kernel "
                     f"that only predicts: python kernels/build.py --name {name}-predict --kind "
                     f"predict --from {name}, then kaggle_loop.py run and submit {name}-predict")
    elif recipe.get("competition"):
        lines.append(f"finished: python kernels/kaggle_loop.py submit {name} --competition "
                     f"{recipe['competition']} --wait")
    lines.append(f"python kernels/kaggle_loop.py output {name} brings the run home as runs/{name}/")
    return "\n".join(lines)


def cli(argv=None):
    """Local runs: python kernels/kernel_main.py RECIPE.json [kernel flags] [-- trainer flags]."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 1
    try:
        recipe = json.loads(Path(argv[0]).read_text())
    except (OSError, ValueError):
        print(f"error: {argv[0]}: not a readable recipe.json", file=sys.stderr)
        return 1
    return main(argv[1:], recipe)


if __name__ == "__main__":
    sys.exit(cli())
