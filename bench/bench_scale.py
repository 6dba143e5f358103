"""Full-scale rehearsal: every stage a user runs, timed at N = 100, 300 and 1000 clips.

    python bench/bench_scale.py                                       # N = 100, 300, 1000 (hours)
    python bench/bench_scale.py --sizes 20,40 --work /tmp/scale --keep   # a quick check
    python bench/bench_scale.py --sizes 50,100 --stages conversion-linear,conversion-mel,features

Data: a GTZAN-shaped folder (<genre>/<genre>.NNNNN.wav, 30 s, 22 050 Hz) of the largest N clips,
made once from the shared clips (../shared/gtzan/genres): each genre's real clips first, then clips
made from them by cheap deterministic transformations (a mix of two clips of the genre, circular
time shift, gain, polarity; --seed), every file distinct. A smaller N is the first N/genres clips of
each genre (a folder of symlinks). The predict set is a flat folder of --predict-clips of them.

Each stage runs as the user runs it, as a child process of the real script (python
data_conversion.py ..., python train_cnn.py ... --epochs 1, ...), and gets: wall time (start-up and
imports included), peak memory (the larger of the summed PSS of the child and its workers, sampled
from /proc each second, and the peak RSS of its largest process), disk (the bytes it wrote) and the
cost per clip (wall / N, or / the clips predicted); and per stage, from the smallest to the largest
N: the growth exponent log(t2/t1)/log(N2/N1) (1.0 = linear; flagged above 1.1) and a projection to
1000 clips (a fixed cost plus a cost per clip, through the two points); peak memory above --ram-gb
at the largest N, or above Kaggle's ~30 GB projected to 1000 clips, is flagged. Stages that spread
clips over --workers processes run again with one worker at the smallest and largest N: their
speedup.

Writes --out/scale.md (the tables, also printed), scale.png (cost against N, log-log, one line per
stage) and scale.json (every measurement), and an estimate of a Kaggle kernel's whole run on full
GTZAN (1000 clips) for each recipe in kernels/recipes/: CPU stages (conversion, features, decoding
images) scaled from the measured cost per clip to 2 and 4 cores with the measured speedup; training
on the GPU from bench/gpu_check.py's H100 throughput divided by --t4-factor (an estimate until
measured on a T4), times the recipe's epochs.
"""
import argparse
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]

import numpy as np  # noqa: E402

import audio  # noqa: E402
import build  # noqa: E402  (kernels/build.py: the recipes and their conversion defaults)
import common  # noqa: E402
import kernel_main  # noqa: E402  (which trainer a recipe's kind runs)
import reports  # noqa: E402

SHARED = ROOT.parent / "shared" / "gtzan" / "genres"
KAGGLE_CLIPS, KAGGLE_RAM_GB, GROWTH_FLAG = 1000, 30.0, 1.1
PY = sys.executable
MARKER = ".bench_scale"  # a --work folder made by this script (so it may clear its own outputs)

# bench/gpu_check.py on an NVIDIA H100 80GB HBM3 (README, 2026-11-27): training images/s by
# (trainer kind, model or arch); a frozen transfer run's backbone pass and head separately.
H100_IMAGES_PER_S = {("cnn", "convolneunet"): 236, ("cnn", "specnet"): 339,
                     ("transfer", "vgg16"): {"backbone": 1852, "head": 4410}}
T4_FACTOR = 10.0  # H100 -> T4: memory bandwidth 3.35 TB/s vs 0.32 TB/s (FP16 tensor cores: ~15x)
VALIDATION_COST = 1 / 3  # a validation image (forward only) against a training one
MEASURED_CONVERSIONS = {"conversion-linear": {"size": 512, "mel": 0, "segment_seconds": 0.0},
                        "conversion-mel": {"size": 0, "mel": 128, "segment_seconds": 3.0}}
# A GPU item's work measured here on the CPU, shown beside the estimate: (stage, key, note, the
# same work). Where it is the same work and faster than the estimate, it caps the estimate: a T4
# is not slower than these cores; gpu_check's small runs measured per-batch overhead instead.
CPU_TWINS = {("cnn", "convolneunet"): ("train-cnn", "epoch_s", " (at 256 px: 4x fewer pixels)", False),
             ("cnn", "specnet"): ("train-specnet", "epoch_s", "", True),
             ("transfer", "vgg16"): ("train-transfer", "backbone_s", " (the backbone pass)", True),
             ("transfer", "cnn14"): ("train-cnn14", "backbone_s", " (the backbone pass)", True)}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,300,1000",
                   help="clip counts, multiples of the genre count (default 100,300,1000)")
    p.add_argument("--stages", default="all", help="comma-separated stage names (default all: "
                   + ", ".join(s.name for s in STAGES) + "); stages they need are added")
    p.add_argument("--workers", type=int, default=common.default_workers(),
                   help="--workers of every stage (default: the %(default)s cores)")
    p.add_argument("--no-speedup", action="store_true",
                   help="skip the 1-worker runs of the parallel stages")
    p.add_argument("--device", default="auto", help="--device of the trainers and predict.py (default auto)")
    p.add_argument("--predict-clips", type=int, default=100, help="clips predicted end to end (default 100)")
    p.add_argument("--src", default=str(SHARED),
                   help="real clips, one sub-folder per genre (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data's transformations (default 0)")
    p.add_argument("--work", help="where data, images, runs and logs go (default: a temporary "
                   "folder, deleted unless --keep); empty, or made by an earlier run of this script")
    p.add_argument("--keep", action="store_true", help="keep the temporary --work folder")
    p.add_argument("--out", default=str(ROOT / "bench" / "scale"),
                   help="report folder: scale.md, scale.png, scale.json (default bench/scale, git-ignored)")
    p.add_argument("--ram-gb", type=float, default=24.0,
                   help="memory budget flagged at the largest N (default 24)")
    p.add_argument("--report", metavar="SCALE_JSON",
                   help="run nothing: write the report again from an earlier scale.json (to --out)")
    p.add_argument("--t4-factor", type=float, default=T4_FACTOR,
                   help="how much slower a T4 trains than gpu_check's H100 (default %(default)g)")
    return p


# ----------------------------------------------------------------------------------------------
# Stages: a name, the command line, what it writes (relative to the size's folder), what it needs

LOAD = ("import sys, common; d = data.load_image_data(sys.argv[1], int(sys.argv[2]), sys.argv[3])"
        ".dataset; print(len(d), 'images', tuple(d.x.shape) if d.x is not None else "
        "'over --cache-mb: decoded per batch')")


@dataclass
class Stage:
    name: str
    command: object          # Ctx -> argv
    writes: tuple            # paths under the size's folder
    needs: tuple = ()        # stages whose outputs it reads
    parallel: bool = False   # spreads clips over --workers: also timed with one worker
    same_work: bool = False  # its work does not grow with N (a fixed set predicted, compare)
    run: str = ""            # a trainer's run name (runs/RUN): its epoch and backbone seconds


@dataclass
class Ctx:
    dir: Path       # this size's folder (a 1-worker run: its own sub-folder)
    audio: Path     # this size's labeled audio
    predict: Path   # the flat folder of audio to predict
    workers: int
    device: str
    split: tuple = ()  # ("--split", FILE) where the set is too small for the trainers' own split

    def at(self, name):
        return str(self.dir / name)


def convert(c, out, *flags):
    return [PY, "data_conversion.py", str(c.audio), c.at(out), *flags, "--workers", str(c.workers)]


def trainer(script, run, data, *flags, cache=False):
    """A trainer's command: one epoch into runs/RUN (--cache-dir: its frozen features' cache)."""
    return lambda c: [PY, script, "--data", c.at(data) if data else str(c.audio), "--epochs", "1",
                      "--out", c.at("runs"), "--name", run, "--workers", str(c.workers),
                      "--device", c.device, *c.split, *flags,
                      *(["--cache-dir", c.at(f"cache/{run}")] if cache else [])]


def predictor(run):
    return Stage(f"predict-{run}",
                 lambda c: [PY, "predict.py", c.at(f"runs/{run}/model.pt"), str(c.predict),
                            "--output", c.at(f"predict-{run}/submission.csv"),
                            "--workers", str(c.workers), "--device", c.device],
                 (f"predict-{run}",), (f"train-{run}",), same_work=True)


TRAIN_STAGES = ("train-cnn", "train-specnet", "train-transfer", "train-cnn14", "train-mlp")
STAGES = [
    Stage("conversion-linear", lambda c: convert(c, "lin512", "--size", "512"), ("lin512",),
          parallel=True),
    Stage("conversion-mel", lambda c: convert(c, "mel3", "--size", "0", "--mel", "128",
                                              "--segment-seconds", "3"), ("mel3",), parallel=True),
    Stage("features", lambda c: [PY, "data_conversion.py", str(c.audio), "--features",
                                 c.at("features/features.csv"), "--workers", str(c.workers)],
          ("features",), parallel=True),
    Stage("load-linear", lambda c: [PY, "-c", LOAD, c.at("lin512"), "512", "rgb"], (),
          ("conversion-linear",)),
    Stage("load-mel", lambda c: [PY, "-c", LOAD, c.at("mel3"), "0", "levels"], (), ("conversion-mel",)),
    Stage("train-cnn", trainer("train_cnn.py", "cnn", "lin512", "--img-size", "256"),
          ("runs/cnn",), ("conversion-linear",), run="cnn"),
    Stage("train-specnet", trainer("train_cnn.py", "specnet", "mel3", "--model", "specnet"),
          ("runs/specnet",), ("conversion-mel",), run="specnet"),
    Stage("train-transfer", trainer("train_transfer.py", "transfer", "lin512", "--arch", "vgg16",
                                    "--weights", "none", cache=True),
          ("runs/transfer", "cache/transfer"), ("conversion-linear",), run="transfer"),
    Stage("train-cnn14", trainer("train_transfer.py", "cnn14", None, "--arch", "cnn14", "--weights", "none",
                                 cache=True),
          ("runs/cnn14", "cache/cnn14", "audio/split.json"), run="cnn14"),
    Stage("train-mlp", trainer("train_mlp.py", "mlp", "features/features.csv"), ("runs/mlp",), ("features",),
          run="mlp"),
    *(predictor(stage.split("-")[1]) for stage in TRAIN_STAGES),
    Stage("compare", lambda c: [PY, "compare.py", "--runs", c.at("runs"), "--out", c.at("report")],
          ("report",), TRAIN_STAGES, same_work=True),  # whichever of them ran
]
BY_NAME = {s.name: s for s in STAGES}


def selected_stages(text):
    """The stages asked for and, before them, those they need (all of compare's are optional)."""
    names = [s.name for s in STAGES] if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"--stages: unknown {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    wanted, todo = set(), list(names)
    while todo:
        if (name := todo.pop()) not in wanted:
            wanted.add(name)
            todo += [] if name == "compare" else list(BY_NAME[name].needs)
    added = sorted(wanted - set(names), key=list(BY_NAME).index)
    if added:
        print(f"stages added because the chosen ones need them: {', '.join(added)}")
    return [s for s in STAGES if s.name in wanted]


# ----------------------------------------------------------------------------------------------
# The data: N clips per size, made once from the real ones

def make_audio(src, root, per_genre, seed):
    """root/<genre>/<genre>.NNNNN.wav: each genre's real clips as they are, then clips made from
    them: (1-m) * clip + m * (another clip of the genre, circularly shifted), m in [0.1, 0.5];
    the result circularly shifted, scaled by a gain in [0.5, 1] and a random polarity. Every file
    is distinct (checked on the 16-bit samples). Clip k of a genre depends on (seed, genre, k)
    only: the same whatever the largest N."""
    import soundfile
    seen = set()
    genres = sorted(d.name for d in Path(src).iterdir() if d.is_dir())
    for g, genre in enumerate(genres):
        clips = [soundfile.read(p, dtype="float32")[0] for p in sorted((Path(src) / genre).glob("*.wav"))]
        (root / genre).mkdir(parents=True)
        for k in range(per_genre):
            rng = np.random.default_rng([seed, g, k])
            while True:
                y = clips[k % len(clips)]
                if k >= len(clips):
                    other = clips[(k + rng.integers(1, len(clips))) % len(clips)]
                    mix = rng.uniform(0.1, 0.5)
                    y = (1 - mix) * y + mix * np.roll(np.resize(other, len(y)), rng.integers(len(y)))
                    y = np.roll(y, rng.integers(len(y))) * rng.uniform(0.5, 1.0) * rng.choice([-1, 1])
                pcm = np.round(np.clip(y, -1, 1) * 32767).astype(np.int16)
                if pcm.tobytes() not in seen:
                    break
            seen.add(pcm.tobytes())
            soundfile.write(root / genre / f"{genre}.{k:05d}.wav", pcm, audio.SR, subtype="PCM_16")
    return genres


def link_subset(audio, root, per_genre, genres):
    """root/<genre>/ with symlinks to the first per_genre clips of each genre."""
    for genre in genres:
        (root / genre).mkdir(parents=True)
        for path in sorted((audio / genre).glob("*.wav"))[:per_genre]:
            (root / genre / path.name).symlink_to(path)


def small_split(audio, path, genres):
    """A split file for a set too small for the trainers' own split (it needs 3 clips a genre):
    each genre's first clip trains, its second validates (even genres) or tests (odd ones)."""
    split = {"train": [], "val": [], "test": []}
    for i, genre in enumerate(genres):
        first, second = sorted(p.stem for p in (audio / genre).glob("*.wav"))[:2]
        split["train"].append(first)
        split["test" if i % 2 else "val"].append(second)
    common.write_json(path, split)
    return ("--split", str(path))


def link_predict_set(audio, root, n, genres):
    """A flat folder of n clips, taken round-robin over the genres (an unlabeled test set)."""
    root.mkdir(parents=True)
    by_genre = [sorted((audio / g).glob("*.wav")) for g in genres]
    for path in [p for row in zip(*by_genre) for p in row][:n]:
        (root / path.name).symlink_to(path)
    return n


# ----------------------------------------------------------------------------------------------
# Measuring one child process

def tree_memory(pid, pss_too):
    """(summed PSS, largest VmHWM) in bytes of a process and its descendants, now; 0 for what has gone.

    The PSS walk costs ~10 ms of CPU a process, so it is read only when pss_too; VmHWM (the peak
    RSS so far) is a cheap read."""
    pss = hwm = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                hwm = max(hwm, next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024)
            if pss_too:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    pss += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return pss, hwm


def measure(argv, log_path):
    """(exit code, wall seconds, peak memory bytes) of one child run as the user runs it.

    Not wait4's ru_maxrss: Linux gives an exec'd child the high-water mark of the process that
    forked it, so every stage would weigh at least this bench's own peak."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(" ".join(map(str, argv)) + "\n\n")
        log.flush()
        start = time.perf_counter()
        child = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        peak, done = [0], threading.Event()

        def sample():
            tick = 0
            while not done.wait(0.2):
                tick += 1
                peak[0] = max(peak[0], *tree_memory(child.pid, pss_too=tick % 5 == 0))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return code, seconds, peak[0]


def disk_bytes(paths):
    """Bytes of the files under paths (symlinks, such as the subsets' clips, not counted)."""
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*") if p.is_dir() else [])]
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())


def remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run_details(stage, ctx):
    """A trainer's own timing (history.csv, metrics.json) and a conversion's image count."""
    if stage.run:
        run = ctx.dir / "runs" / stage.run
        metrics = json.loads((run / "metrics.json").read_text())
        import csv
        with open(run / "history.csv") as f:
            epoch = float(list(csv.DictReader(f))[-1]["seconds"])
        return {"epoch_s": epoch, "backbone_s": metrics["train_seconds"] - epoch,
                "n_train": metrics["n_train"]}
    if stage.name.startswith("conversion"):
        return {"images": sum(1 for _ in (ctx.dir / stage.writes[0]).rglob("*.png"))}
    return {}


def run_stage(stage, ctx, n, clips, done):
    """Run one stage into a clean place; a dict of what was measured."""
    row = {"stage": stage.name, "n": n, "workers": ctx.workers, "clips": clips}
    missing = [need for need in stage.needs if need not in done and stage.name != "compare"]
    if stage.name == "compare" and not (ctx.dir / "runs").is_dir():
        missing = ["a training stage"]
    if missing:
        return {**row, "skipped": f"needs {', '.join(missing)}"}
    outputs = [ctx.dir / w for w in stage.writes]
    for path in outputs:
        remove(path)
    label = f"{stage.name}" + (" (1 worker)" if ctx.workers == 1 and stage.parallel else "")
    print(f"  N={n:<5} {label:<32}", end="", flush=True)
    log = ctx.dir / "logs" / f"{stage.name}.log"
    code, seconds, peak = measure(stage.command(ctx), log)
    row.update(rc=code, seconds=seconds, peak_bytes=peak, disk_bytes=disk_bytes(outputs),
               log=str(log))
    if code:
        tail = log.read_text().splitlines()[-8:]
        print(f"FAILED (exit {code}) after {seconds:.1f} s; the end of {log}:\n      "
              + "\n      ".join(tail))
        return row
    row.update(run_details(stage, ctx))
    print(f"{seconds:8.1f} s {seconds / clips:8.3f} s/clip  peak {peak / 2**30:5.2f} GB  "
          f"disk {row['disk_bytes'] / 2**20:8.1f} MB", flush=True)
    return row


# ----------------------------------------------------------------------------------------------
# Analysis: growth, projection to 1000 clips, speedup, the Kaggle estimate

@dataclass
class Seconds:
    """A projected time; `bound`: only an upper bound, because the cost did not grow between the
    sizes measured (start-up and noise dominate small N), so all of it was counted per clip."""
    value: float
    bound: bool = False

    def __add__(self, other):
        return Seconds(self.value + other.value, self.bound or other.bound)

    def __mul__(self, factor):
        return Seconds(self.value * factor, self.bound)


def ok_points(rows, stage, workers):
    """[(N, row)] of a stage's successful runs with this many workers."""
    return sorted(((r["n"], r) for r in rows if r["stage"] == stage and r["workers"] == workers
                   and r.get("rc") == 0), key=lambda p: p[0])


def line(points, key):
    """(fixed, per clip) through the smallest and largest N, or None from one size."""
    if len(points) < 2:
        return None
    (n1, r1), (n2, r2) = points[0], points[-1]
    slope = (r2[key] - r1[key]) / (n2 - n1)
    return r1[key] - slope * n1, slope


def project_seconds(points, key="seconds", n=KAGGLE_CLIPS):
    """key (seconds) at n clips: a fixed cost plus a cost per clip through the smallest and
    largest N; when it did not grow, the largest N's cost per clip x n (a bound); None from one."""
    fit = line(points, key)
    if fit is None:
        return None
    if fit[1] <= 0:
        n2, r2 = points[-1]
        return Seconds(r2[key] * n / n2, bound=True)
    return Seconds(fit[0] + fit[1] * n)


def project_bytes(points, key, n=KAGGLE_CLIPS):
    """Memory or disk at n clips, through the smallest and largest N, never below what was seen."""
    fit = line(points, key)
    return None if fit is None else max(fit[0] + fit[1] * n, max(r[key] for _, r in points))


def growth(points):
    """log(t2/t1) / log(N2/N1) between the smallest and largest N (1.0 = linear)."""
    if len(points) < 2:
        return None
    (n1, r1), (n2, r2) = points[0], points[-1]
    return math.log(r2["seconds"] / r1["seconds"]) / math.log(n2 / n1)


def speedup(rows, stage, workers):
    """Per-clip cost with 1 worker / with `workers` (slopes between the smallest and largest N,
    so start-up does not count; wall times at the largest N where a slope is not positive), or
    None when not measured."""
    one, many = ok_points(rows, stage, 1), ok_points(rows, stage, workers)
    if workers <= 1 or not one or not many:
        return None
    fit1, fit_many = line(one, "seconds"), line(many, "seconds")
    if fit1 and fit_many and fit1[1] > 0 and fit_many[1] > 0:
        return fit1[1] / fit_many[1]
    n = max(n for n, _ in one)
    return dict(one)[n]["seconds"] / dict(many)[n]["seconds"]


def cpu_seconds(rows, stage, workers, cores):
    """A parallel stage on 1000 clips with `cores` workers: the one-worker cost per clip divided by
    the speedup at `cores`, each core past the first adding what the measured speedup says one
    added here (so at most `cores`x), plus the fixed cost."""
    projected = project_seconds(ok_points(rows, stage, workers))
    s = speedup(rows, stage, workers)
    if projected is None or s is None:
        return projected  # no 1-worker run: as measured here
    points = ok_points(rows, stage, workers)
    fixed, per_clip = (0.0, points[-1][1]["seconds"] / points[-1][0]) if projected.bound else \
        line(points, "seconds")
    at_cores = min(cores, max(1.0, 1 + (s - 1) / (workers - 1) * (cores - 1)))
    return Seconds(fixed + per_clip * s * KAGGLE_CLIPS / at_cores, projected.bound)


def recipe_estimate(recipe, rows, workers, t4_factor):
    """{item: (seconds at 2 cores, at 4 cores, how)} for one recipe's kernel on 1000 clips."""
    trainer_module = importlib.import_module(kernel_main.TRAINERS[recipe["kind"]])
    args = trainer_module.parse_args(recipe["trainer_args"], check_paths=False)
    model = getattr(args, "arch", None) or getattr(args, "model", None)
    conversion = {**build.IMAGE_CONVERSION, **recipe.get("conversion", {})}
    items = {}

    def cpu(label, stage):
        items[label] = (cpu_seconds(rows, stage, workers, 2), cpu_seconds(rows, stage, workers, 4),
                        f"{stage}, projected to 1000 clips, 2 / 4 cores by the measured speedup")

    def once(label, stage, key="seconds", times=1, how=""):
        value = project_seconds(ok_points(rows, stage, workers), key)
        value = None if value is None else value * times
        items[label] = (value, value, how or f"{stage}, projected to 1000 clips, one process")

    def gpu(label, seconds, twin, times=1):
        """A GPU item, with its work measured on this machine's CPU beside it (CPU_TWINS)."""
        stage, key, note, same = CPU_TWINS.get(twin, (None, None, "", False))
        here = project_seconds(ok_points(rows, stage, workers), key) if stage else None
        here = None if here is None else here * times
        how = (f"gpu_check's H100 images/s / {t4_factor:g}, x {args.epochs} epochs: an estimate, "
               "not measured on a T4" if seconds is not None else f"no gpu_check figure for {model}")
        if here is not None:
            how += f"; this CPU: {fmt(here)}{note}"
            if same and seconds is not None and here.value < seconds.value:
                seconds = here
                how += ", taken instead: a T4 is not slower than this CPU"
        items[label] = (seconds, seconds, how)

    if recipe["kind"] == "mlp":
        cpu("features", "features")
        once(f"{args.epochs} epochs on the CPU (a CPU kernel)", "train-mlp", "epoch_s", args.epochs,
             f"train-mlp's epoch, projected to 1000 clips, x {args.epochs} epochs, measured here")
        return items
    if model == "cnn14":
        points = ok_points(rows, "train-cnn14", workers)
        rest = project_seconds([(n, {"rest": r["seconds"] - r["epoch_s"] - r["backbone_s"]})
                                for n, r in points], "rest")
        items["decode audio at 32 kHz, start, test"] = (rest, rest, "train-cnn14 minus its backbone "
                                                        "pass and epoch, projected, with --workers here")
        gpu("CNN14 pass (GPU)", None, ("transfer", "cnn14"))
        return items
    mel = conversion["mel"] > 0
    measured = MEASURED_CONVERSIONS["conversion-mel" if mel else "conversion-linear"]
    same = all(conversion[k] == v for k, v in measured.items())
    cpu("conversion" + ("" if same else " (measured with other settings)"),
        "conversion-mel" if mel else "conversion-linear")
    once("decode images into memory", "load-mel" if mel else "load-linear")
    images = 1.0  # per clip: segments give several (10 of 3 s in a 30-s clip)
    if mel:
        points = ok_points(rows, "conversion-mel", workers)
        images = points[-1][1]["images"] / points[-1][0] if points else 10.0
    epoch = 0.8 * KAGGLE_CLIPS * images + VALIDATION_COST * 0.1 * KAGGLE_CLIPS * images
    rate = H100_IMAGES_PER_S.get((recipe["kind"], model))
    if isinstance(rate, dict):  # frozen transfer: the backbone once, then the head
        seconds = KAGGLE_CLIPS * images / (rate["backbone"] / t4_factor) + \
            args.epochs * epoch / (rate["head"] / t4_factor)
        gpu("backbone once + head (GPU)", Seconds(seconds), (recipe["kind"], model))
    else:
        gpu(f"{args.epochs} epochs (GPU)", rate and Seconds(args.epochs * epoch / (rate / t4_factor)),
            (recipe["kind"], model), args.epochs)
    return items


def gb(size):
    return "?" if size is None else f"{size / 2**30:.2f}"


def fmt(seconds):
    if seconds is None:
        return "?"
    prefix, seconds = ("<= " if getattr(seconds, "bound", False) else ""), getattr(seconds, "value", seconds)
    if seconds < 120:
        return f"{prefix}{seconds:.1f} s"
    return prefix + (f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")


# ----------------------------------------------------------------------------------------------
# Report

def tables(rows, stages, sizes, args, meta):
    md = [f"# Scale rehearsal: N = {', '.join(map(str, sizes))}", "",
          f"{meta['when']}, commit {meta['commit']}, {meta['cores']} cores, --workers {args.workers}, "
          f"--device {args.device}, load average {meta['load_before']} before and "
          f"{meta['load_after']} after; "
          f"the predict stages label {meta['predict_clips']} clips; work folder {meta['work']}.", "",
          "## Cost by N", "",
          "| stage | N | wall | s/clip | peak memory GB | disk MB | notes |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            md.append(f"| {r['stage']} | {r['n']} | skipped: {r['skipped']} | | | | |")
            continue
        name = r["stage"] + (" (1 worker)" if r["workers"] == 1 and BY_NAME[r["stage"]].parallel else "")
        if r["rc"]:
            md.append(f"| {name} | {r['n']} | FAILED (exit {r['rc']}), see {r['log']} | | | | |")
            continue
        notes = []
        if "epoch_s" in r:
            notes.append(f"epoch {r['epoch_s']:.2f} s")
            if r["stage"] in ("train-transfer", "train-cnn14"):
                notes.append(f"backbone pass {r['backbone_s']:.1f} s")
        if "images" in r:
            notes.append(f"{r['images']} images")
        md.append(f"| {name} | {r['n']} | {fmt(r['seconds'])} | {r['seconds'] / r['clips']:.3f} | "
                  f"{r['peak_bytes'] / 2**30:.2f} | {r['disk_bytes'] / 2**20:.1f} | {'; '.join(notes)} |")

    small, big = sizes[0], sizes[-1]
    md += ["", f"## Growth from N = {small} to {big}, and projected to {KAGGLE_CLIPS} clips", "",
           f"Exponent: log(t{big}/t{small}) / log({big}/{small}), 1.0 = linear, flagged above {GROWTH_FLAG}; "
           f"projections: a fixed cost plus a cost per clip through N = {small} and {big}; \"<=\" where "
           "the cost did not grow between them: the largest N's cost per clip x 1000, an upper bound; "
           "memory and disk never below what was measured. The predict stages and compare do the same "
           f"work at every N: their figures at {KAGGLE_CLIPS} are those at N = {big}."
           + (" **Below 100 clips start-up dominates the times and batches (32) are not full: the "
              "exponents, speedups and projections here check the script, they measure little.**"
              if small < 100 else ""), "",
           f"| stage | exponent | s/clip at {big} | wall at {KAGGLE_CLIPS} | peak GB at {KAGGLE_CLIPS} | "
           f"disk GB at {KAGGLE_CLIPS} | flags |", "|---|---|---|---|---|---|---|"]
    flagged = []
    for stage in stages:
        points = ok_points(rows, stage.name, args.workers)
        if not points:
            continue
        exponent, last = growth(points), points[-1][1]
        if stage.same_work:  # a line through two noisy points would invent a slope
            wall, peak, disk = Seconds(last["seconds"]), last["peak_bytes"], last["disk_bytes"]
        else:
            wall = project_seconds(points)
            peak, disk = (project_bytes(points, key) for key in ("peak_bytes", "disk_bytes"))
        flags = []
        if exponent is not None and exponent > GROWTH_FLAG:
            flags.append(f"super-linear ({exponent:.2f})")
        if last["peak_bytes"] / 2**30 > args.ram_gb:
            flags.append(f"peak {last['peak_bytes'] / 2**30:.1f} GB > --ram-gb {args.ram_gb:g} at N = {big}")
        if peak is not None and peak / 2**30 > KAGGLE_RAM_GB:
            flags.append(f"{peak / 2**30:.1f} GB > Kaggle's ~{KAGGLE_RAM_GB:g} GB at {KAGGLE_CLIPS} clips")
        flagged += [f"{stage.name}: {f}" for f in flags]
        md.append(f"| {stage.name} | {'-' if exponent is None else f'{exponent:.2f}'} | "
                  f"{last['seconds'] / last['clips']:.3f} | {fmt(wall)} | {gb(peak)} | {gb(disk)} | "
                  f"{', '.join(flags) or 'ok'} |")

    parallel = [s for s in stages if s.parallel and speedup(rows, s.name, args.workers)]
    if parallel:
        md += ["", f"## 1 worker against {args.workers}", "",
               "Speedup: the cost per clip with 1 worker / with --workers (slopes between the smallest "
               "and largest N, so start-up does not count).", "",
               f"| stage | speedup, {args.workers} workers | wall at {KAGGLE_CLIPS}, 2 cores | at 4 cores |",
               "|---|---|---|---|"]
        for s in parallel:
            two, four = (cpu_seconds(rows, s.name, args.workers, cores) for cores in (2, 4))
            md.append(f"| {s.name} | {speedup(rows, s.name, args.workers):.2f}x | {fmt(two)} | {fmt(four)} |")

    md += ["", f"## Estimate: a Kaggle kernel's run on full GTZAN ({KAGGLE_CLIPS} clips), per recipe", "",
           f"CPU stages from the cost per clip measured here, at 2 and 4 cores: each core past the first "
           f"adds what the measured speedup says one did here (a Kaggle core may be slower than these). "
           f"GPU training is an **estimate, not measured on a T4**: bench/gpu_check.py's H100 images/s "
           f"(README, 160-image runs, so mostly per-batch overhead) divided by {args.t4_factor:g} "
           f"(--t4-factor: the H100's memory bandwidth is 10.5x a T4's, its FP16 tensor throughput "
           f"about 15x), times the recipe's epochs (the most: early stopping may end sooner) over 80 % "
           f"of the clips, validation (10 %) at {VALIDATION_COST:.2f} of a training image; where this "
           f"machine's CPU did the same work faster, its time is taken instead. \"<=\": an upper bound "
           f"(see above). Training set up, testing, saving and predicting a test set are not counted.", "",
           "| recipe | item | 2 cores | 4 cores | how |", "|---|---|---|---|---|"]
    for path in sorted(build.RECIPES_DIR.glob("*.json")):
        items = recipe_estimate(json.loads(path.read_text()), rows, args.workers, args.t4_factor)
        for item, (two, four, how) in items.items():
            md.append(f"| {path.stem} | {item} | {fmt(two)} | {fmt(four)} | {how} |")
        totals = [sum((v[i] for v in items.values()), Seconds(0.0))
                  if all(v[i] is not None for v in items.values()) else None for i in (0, 1)]
        md.append(f"| **{path.stem}** | **total** | **{fmt(totals[0])}** | **{fmt(totals[1])}** | "
                  + ("" if None not in totals else "incomplete: an item is unknown") + " |")
    md += ["", "## Cost per clip against N", "", "```", *text_chart(rows, stages, args.workers), "```"]
    md += ["", "## Flags", ""] + ([f"- {f}" for f in flagged] or ["- none"])
    return "\n".join(md) + "\n"


def bar(fraction, width):
    """A text bar of fraction x width characters, in eighths."""
    eighths = round(fraction * width * 8)
    return "\u2588" * (eighths // 8) + ("", *"\u258f\u258e\u258d\u258c\u258b\u258a\u2589")[eighths % 8]


def text_chart(rows, stages, workers, width=12):
    """Cost per clip against N as text (the README's chart): a bar per N, scaled to the stage's
    largest; bars that stay level or shrink as N grows mean linear or better."""
    sizes = sorted({r["n"] for r in rows if r["workers"] == workers and "seconds" in r})
    lines = [(f"{'s/clip at N =':<18}" + "".join(f" {n:<{width + 7}}" for n in sizes)).rstrip()]
    for stage in stages:
        points = dict(ok_points(rows, stage.name, workers))
        if stage.same_work or len(points) < 2:
            continue
        per_clip = {n: r["seconds"] / r["clips"] for n, r in points.items()}
        top = max(per_clip.values())
        lines.append(f"{stage.name:<18}" + "".join(
            f"{per_clip[n]:6.3f} {bar(per_clip[n] / top, width):<{width}} " if n in per_clip
            else " " * (width + 8) for n in sizes).rstrip())
    return lines


def chart(rows, stages, args, path):
    """Wall seconds against N, log-log, a line per stage (data solid, training dashed,
    prediction dotted) and a slope-1 guide: a line steeper than it grows faster than N."""
    plt = reports.pyplot()
    from matplotlib.ticker import NullFormatter
    fig, ax = plt.subplots(figsize=(10, 6))
    colors = plt.get_cmap("tab20").colors
    style = {"train": "--", "predict": ":", "compare": "-."}
    for i, stage in enumerate(stages):
        points = sorted((n, r["seconds"]) for n, r in ok_points(rows, stage.name, args.workers))
        if points:
            ax.plot(*zip(*points), style.get(stage.name.split("-")[0], "-"), marker="o",
                    color=colors[i % len(colors)], label=stage.name)
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) > 1:
        ax.plot(sizes, [n / sizes[0] for n in sizes], color="0.6", lw=3, alpha=0.4,
                label="slope 1 (linear), from 1 s")
    ax.set(xscale="log", yscale="log", xlabel="clips (N)", ylabel="wall seconds",
           title=f"Cost against N, --workers {args.workers} (log-log)")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    reports.save_figure(path, fig)


# ----------------------------------------------------------------------------------------------

def prepare_work(args):
    """The --work folder: a new temporary one, or an empty one or one made by this script."""
    if not args.work:
        return Path(tempfile.mkdtemp(prefix="bench_scale-")), not args.keep
    work = Path(args.work).resolve()
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists():
        raise SystemExit(f"--work {work}: not empty and not made by bench_scale.py; "
                         "give an empty or new folder")
    work.mkdir(parents=True, exist_ok=True)
    return work, False


def measure_all(args, sizes, genres, stages, work, meta):
    """Make the data, then run every stage at every N: the rows of measurements."""
    src = Path(args.src)
    audio = work / "audio"
    made = {"n": sizes[-1], "seed": args.seed, "src": str(src.resolve())}
    if not (audio / "made.json").exists() or json.loads((audio / "made.json").read_text()) != made:
        remove(audio)
        start = time.perf_counter()
        make_audio(src, audio, sizes[-1] // len(genres), args.seed)
        common.write_json(audio / "made.json", made)
        print(f"made {sizes[-1]} clips in {time.perf_counter() - start:.1f} s -> {audio}")
    remove(work / "predict")
    meta["predict_clips"] = link_predict_set(audio, work / "predict", min(args.predict_clips, sizes[-1]),
                                             genres)
    warm = "import common, torch, librosa, train_transfer"  # the libraries into the page cache, untimed
    subprocess.run([PY, "-c", warm], cwd=ROOT, check=True)

    rows = []
    for n in sizes:
        size_dir = work / f"n{n:05d}"
        remove(size_dir)
        link_subset(audio, size_dir / "audio", n // len(genres), genres)
        split = () if n // len(genres) >= 3 else \
            small_split(size_dir / "audio", size_dir / "split.json", genres)
        if split:
            print(f"  N={n}: {n // len(genres)} clips a genre, too few for the trainers' own split "
                  f"(3 a genre): they get --split {split[1]}")
        done = set()
        for stage in stages:
            clips = meta["predict_clips"] if stage.name.startswith("predict") else n
            for workers in (args.workers, 1):
                if workers == 1 and (not stage.parallel or args.no_speedup or args.workers == 1
                                     or n not in (sizes[0], sizes[-1])):
                    continue
                ctx = Ctx(size_dir if workers == args.workers else size_dir / "1-worker",
                          size_dir / "audio", work / "predict", workers, args.device, split)
                row = run_stage(stage, ctx, n, clips, done)
                rows.append(row)
                if workers == args.workers and row.get("rc") == 0:
                    done.add(stage.name)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return rows


def write_report(rows, stages, sizes, args, meta):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = tables(rows, stages, sizes, args, meta)
    common.atomic_write(out / "scale.md", lambda f: f.write(report))
    common.write_json(out / "scale.json", {"meta": meta, "args": vars(args), "rows": rows})
    chart(rows, stages, args, out / "scale.png")
    print("\n" + report)
    print(f"wrote {out / 'scale.md'}, {out / 'scale.png'}, {out / 'scale.json'}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.report:  # the tables again from a scale.json, e.g. with another --t4-factor
        saved = json.loads(Path(args.report).read_text())
        rows, meta = saved["rows"], saved["meta"]
        args.workers, args.device = saved["args"]["workers"], saved["args"]["device"]
        stages = [s for s in STAGES if any(r["stage"] == s.name for r in rows)]
        write_report(rows, stages, meta["sizes"], args, meta)
        return 0
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    src = Path(args.src)
    genres = sorted(d.name for d in src.iterdir() if d.is_dir()) if src.is_dir() else []
    if not genres:
        raise SystemExit(f"--src {src}: no genre sub-folders of audio")
    if any(n % len(genres) or n < 2 * len(genres) for n in sizes):
        raise SystemExit(f"--sizes {args.sizes}: each a multiple of the {len(genres)} genres, "
                         f"at least {2 * len(genres)}")
    stages = selected_stages(args.stages)
    work, delete = prepare_work(args)
    (work / MARKER).touch()
    meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "cores": common.default_workers(), "work": str(work),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip() or "?",
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "sizes": sizes}
    print(f"bench_scale: N = {', '.join(map(str, sizes))}, {len(stages)} stages, --workers {args.workers} "
          f"of {meta['cores']} cores, work folder {work}, load average {meta['load_before']}")
    try:
        rows = measure_all(args, sizes, genres, stages, work, meta)
        write_report(rows, stages, sizes, args, meta)
    finally:
        if delete:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 1 if any(r.get("rc") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
