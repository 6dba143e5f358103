"""The loop around a Kaggle kernel, one command each: push it (the relay partner whose turn it
is), follow it, bring its run home into runs/, submit it, publish pretrained weights; or `run`,
which pushes and follows session after session until the run is finished.

    python kernels/kaggle_loop.py run specnet-mel                # push, follow, push ... done
    python kernels/kaggle_loop.py push specnet-mel               # one session
    python kernels/kaggle_loop.py status specnet-mel --follow --interval 60
    python kernels/kaggle_loop.py output specnet-mel --runs runs # -> runs/specnet-mel/
    python kernels/kaggle_loop.py submit specnet-mel --competition my-genre-comp --wait
    python kernels/kaggle_loop.py weights --arch vgg16 --user alice   # then build --weights-dataset
    python compare.py --kaggle my-genre-comp                     # public and private scores

NAME_OR_DIR is a kernel folder, kernels/NAME/ or a path, as kernels/build.py makes it: the
kernel's kernel-metadata.json (id = USER/SLUG) and its relay partner's in relay/. Kaggle lets no
kernel attach its own output, and a kernel source mounts the newest *complete* version, so a run
longer than a session alternates between the two: `push` reads how far each one's newest complete
version got (a few small files of its output) and pushes the other, which attaches that output
and resumes. A version that ended in error (killed, out of memory) cannot be attached: when Kaggle
kept its output and it got further, `push` brings it home and publishes the run as a data set
(USER/SLUG-rescue) that the next version attaches (--no-rescue: go on from the last complete one).
Every refusal (credentials, rules, daily limit, unknown name, no network, a failed kernel) is one
line and exit code 2.
"""
import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import common  # noqa: E402
import kaggle_client  # noqa: E402
import kernel_main  # noqa: E402  (Kaggle's session limits)
import models  # noqa: E402
import runs  # noqa: E402

KERNELS_DIR = Path(__file__).resolve().parent
RUNNING = {"QUEUED", "RUNNING", "NEW_SCRIPT", "CANCEL_REQUESTED"}  # Kaggle's unfinished states
LOG_TAIL = 20      # lines of Kaggle's log shown when a version failed
PUBLISH_POLL, PUBLISH_WAIT = 2.0, 1200.0  # seconds: a data set's processing, polled
ORIGIN = "kaggle.json"  # in runs/NAME/: the kernel and version the folder came from
PROGRESS = ("config.json", "checkpoint.json", "metrics.json")  # a run's small files


def build_parser():
    p = common.ArgumentParser(prog="kaggle_loop.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, help):
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("kernel", metavar="NAME_OR_DIR", help="kernels/NAME/, or a kernel folder")
        return c

    def pushing(c):
        c.add_argument("--accelerator", metavar="SHAPE", help="overrides the metadata's machine: "
                       "NvidiaTeslaT4 (GPU T4 x2), NvidiaL4, TpuV6E8, ... (default: the metadata's)")
        c.add_argument("--timeout", type=common.bounded(int, minimum=1), metavar="S",
                       help="the longest a version may run, in seconds (default: Kaggle's)")
        c.add_argument("--no-rescue", action="store_true", help="after a version that ended in "
                       "error, go on from the last complete version rather than from its output")
    pushing(command("push", "push the next version: the kernel whose turn it is (its relay "
                            "partner attaches the newest complete output)"))
    run = command("run", "push and follow version after version until the run is finished, "
                         "then bring it home")
    pushing(run)
    run.add_argument("--interval", type=common.bounded(float, above=0), default=60, metavar="S",
                     help="seconds between status polls (default %(default)s)")
    run.add_argument("--max-sessions", type=common.bounded(int, minimum=1), default=20,
                     help="stop after this many versions (default %(default)s)")
    run.add_argument("--runs", default="runs", help="runs folder (default %(default)s)")
    status = command("status", "the status of the newest version; exit 2 if it failed")
    status.add_argument("--follow", action="store_true", help="poll until it ends: exit 0 when "
                        "complete, 2 with Kaggle's failure message and the log's tail otherwise")
    status.add_argument("--interval", type=common.bounded(float, above=0), default=60,
                        metavar="S", help="seconds between polls (default %(default)s)")
    output = command("output", "download the output of the version that got furthest into "
                               "RUNS/NAME/")
    output.add_argument("--runs", default="runs", help="runs folder (default %(default)s)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace RUNS/NAME/ even if it is not this kernel's Kaggle output")
    submit = command("submit", "submit the finished run's submission.csv, or for a code "
                     "competition the kernel version itself")
    submit.add_argument("--competition", required=True, metavar="SLUG",
                        help="the competition (the end of its URL)")
    submit.add_argument("-m", "--message", help="the submission's description (the run's name "
                        "is added when missing, so compare.py --kaggle finds the score)")
    submit.add_argument("--code", action="store_true", help="a code competition: submit the "
                        "kernel version (found out from Kaggle when not given)")
    submit.add_argument("--retrain-in-rerun", action="store_true", help="a code competition: "
                        "submit a training kernel anyway; Kaggle's rerun starts from an empty "
                        "/kaggle/working and trains it again before predicting (default: refused, "
                        "submit a predict kernel: build.py --kind predict --from NAME)")
    submit.add_argument("--wait", action="store_true", help="follow the submission until Kaggle "
                        "scores it (print the public score) or rejects it (exit 2)")
    submit.add_argument("--interval", type=common.bounded(float, above=0), default=30,
                        metavar="S", help="seconds between polls with --wait (default %(default)s)")
    submit.add_argument("--runs", default="runs", help="where `output` put RUNS/NAME/"
                        "submission.csv, downloaded when missing (default %(default)s)")
    weights = sub.add_parser("weights", help="publish pretrained weights as a Kaggle data set "
                             "under the name a kernel looks for", description=weights_doc())
    weights.add_argument("--arch", required=True, help="cnn14, or a torchvision model: vgg16, "
                         "resnet50, googlenet, efficientnet_b0, ...")
    weights.add_argument("--user", required=True, help="your Kaggle user name")
    weights.add_argument("--slug", help="the data set's slug (default ARCH-weights)")
    return p


def weights_doc():
    return ("Publish the pretrained weights of --arch as a Kaggle data set (a new one, or a new "
            "version of it): torchvision's ImageNet file (e.g. vgg16-397923af.pth) or PANNs' "
            "Cnn14_mAP=0.431.pth, from torch's hub cache (downloaded there once, checked against "
            "the publisher's hash). Prints the --weights-dataset to build kernels with.")


# ----------------------------------------------------------------------------------------------
# The kernel folder, and what Kaggle says about its versions

@dataclass
class Kernel:
    name: str          # the folder's name: the run comes home as runs/NAME/
    folder: Path
    id: str            # USER/SLUG
    relay: str = None  # the relay partner's id (relay/kernel-metadata.json), if any
    recipe: dict = None

    @property
    def ids(self):
        return [self.id] + ([self.relay] if self.relay else [])

    def folder_of(self, kernel_id):
        return self.folder / "relay" if kernel_id == self.relay else self.folder


def read_id(metadata):
    try:
        kernel_id = json.loads(metadata.read_text())["id"]
    except (OSError, ValueError, KeyError, TypeError):
        raise common.SuiteError(f"{metadata}: no \"id\" (USER/SLUG)") from None
    if not isinstance(kernel_id, str) or kernel_id.count("/") != 1:
        raise common.SuiteError(f"{metadata}: id {kernel_id!r} is not USER/SLUG")
    return kernel_id


def find_kernel(name_or_dir):
    folder = Path(name_or_dir)
    if not (folder / "kernel-metadata.json").is_file():
        folder = KERNELS_DIR / name_or_dir
    metadata = folder / "kernel-metadata.json"
    if not metadata.is_file():
        known = sorted(p.parent.name for p in KERNELS_DIR.glob("*/kernel-metadata.json"))
        raise common.SuiteError(f"{name_or_dir}: not a kernel folder (no kernel-metadata.json); "
                                f"kernels here: {', '.join(known) or 'none'}")
    relay = folder / "relay" / "kernel-metadata.json"
    try:
        recipe = json.loads((folder / "recipe.json").read_text())
    except (OSError, ValueError):
        recipe = None
    return Kernel(folder.resolve().name, folder, read_id(metadata),
                  read_id(relay) if relay.is_file() else None, recipe)


@dataclass
class Version:
    kernel: str    # USER/SLUG
    number: int
    status: str    # QUEUED, RUNNING, COMPLETE, ERROR, CANCEL_ACKNOWLEDGED, ...
    failure: str = ""

    def __str__(self):
        return f"{self.kernel} version {self.number}"

    @property
    def ended(self):
        """How it ended, as Kaggle says it: a session stopped at its limit is CANCEL_ACKNOWLEDGED
        ("exceeded the max allowed execution duration", KAGGLE.md), handled as any error."""
        if self.status == "CANCEL_ACKNOWLEDGED":
            return f"was stopped (cancel_acknowledged: {self.failure or 'cancelled'})"
        return f"ended in {self.status.lower()}"


def not_found(error):
    """Whether a failed call says the kernel is not there: 404, or the 401/403 Kaggle answers
    for a slug it does not know ("Permission 'kernels.get' was denied", kaggle-cli issue 1200;
    someone else's private kernel gets the same answer)."""
    return error.status == 404 or (error.status in (401, 403) and "kernels.get" in error.answer)


def version_count(api, kernel_id):
    """The kernel's number of versions; 0 for a kernel not pushed yet."""
    try:
        return kaggle_client.kernel_metadata(api, kernel_id).current_version_number
    except common.SuiteError as e:
        if not_found(e):
            return 0
        raise


def version_status(api, kernel_id, number):
    answer = kaggle_client.kaggle_call(f"status of {kernel_id} version {number}", api.kernels_status,
                                       f"{kernel_id}/{number}")
    return Version(kernel_id, number, answer.status.name if answer.status else "UNKNOWN",
                   answer.failure_message or "")


def newest(api, kernel_id):
    """(the newest version, the newest complete one): each None when there is none."""
    count = version_count(api, kernel_id)
    latest = version_status(api, kernel_id, count) if count else None
    complete = latest
    for number in range(count - 1, 0, -1):
        if complete.status == "COMPLETE":
            break
        complete = version_status(api, kernel_id, number)
    return latest, complete if complete and complete.status == "COMPLETE" else None


def download(api, version, target, pattern=None):
    kaggle_client.kaggle_call(f"output of {version}", api.kernels_output,
                              f"{version.kernel}/{version.number}", str(target), file_pattern=pattern,
                              force=True, quiet=True)


def progress_of(api, version, name):
    """How far the run NAME got in a version's output, from its small files (RunProgress), or
    None when the output has no such run."""
    folder = re.escape(f"runs/{name}/")
    pattern = rf"^{folder}(fold\d+/)?({'|'.join(map(re.escape, PROGRESS))})$"
    with tempfile.TemporaryDirectory(prefix=".kaggle-progress-") as tmp:
        download(api, version, tmp, pattern)
        return runs.run_progress(Path(tmp) / "runs" / name)


# ----------------------------------------------------------------------------------------------
# Whose turn it is

@dataclass
class Relay:
    """Where a relay stands: each kernel's newest and newest complete versions, and how far the
    run got in them."""
    latest: dict     # kernel id -> Version or None
    complete: dict   # kernel id -> (Version, RunProgress or None) or None
    errored: list    # (Version, RunProgress) newer than their kernel's newest complete one

    @property
    def best(self):
        """(Version, RunProgress) of the complete version that got furthest, or None."""
        found = [c for c in self.complete.values() if c and c[1]]
        return max(found, key=lambda c: c[1].rank) if found else None


def relay_state(api, kernel):
    latest, complete, errored = {}, {}, []
    for kernel_id in kernel.ids:
        latest[kernel_id], done = newest(api, kernel_id)
        complete[kernel_id] = (done, progress_of(api, done, kernel.name)) if done else None
        last = latest[kernel_id]
        if last and last.status not in RUNNING | {"COMPLETE"}:
            progress = progress_of(api, last, kernel.name)
            if progress:
                errored.append((last, progress))
    return Relay(latest, complete, errored)


def next_turn(kernel, relay):
    """(the kernel id to push, what it resumes from: (Version, RunProgress) or None)."""
    best = relay.best
    if best is None:
        return kernel.id, None
    partner = kernel.relay if best[0].kernel == kernel.id else kernel.id
    return partner, best


# ----------------------------------------------------------------------------------------------
# The commands

def check_fresh(kernel):
    """A kernel built by build.py must carry today's code: an hour of GPU on stale code is lost."""
    if kernel.recipe is None:
        return  # made by hand
    import build  # its neighbour (kernels/ is on the path): the notebook as it would be built now
    recipe = {**build.DEFAULTS, **kernel.recipe}
    if build.stale_files(kernel.folder, build.render(build.check_recipe(recipe))):
        raise common.SuiteError(f"{kernel.folder} was built from older code or another recipe; "
                                f"rebuild it first: python kernels/build.py --out {kernel.folder.parent}")


def check_session_limit(api, kernel):
    """A code competition stops notebooks at 9 h: a kernel built for 12-h sessions would be
    stopped before it saves its checkpoint."""
    recipe = kernel.recipe or {}
    competition = recipe.get("competition")
    if not competition or recipe.get("code_competition") or recipe.get("kind") == "predict":
        return
    limit = recipe.get("time_limit") or kernel_main.default_time_limit(False)
    if is_code_competition(api, competition) and \
            not kernel_main.fits_session(common.duration(limit), code_competition=True):
        raise common.SuiteError(f"{competition} is a code competition: Kaggle stops its notebooks "
                                f"at {kernel_main.CODE_COMPETITION_HOURS} h and {kernel.name} "
                                "stops training at "
                                f"{recipe.get('time_limit')}; rebuild it with --code-competition")


def push(api, kernel, accelerator, timeout, rescue=True):
    """Push the next version; returns it (a Version)."""
    check_fresh(kernel)
    check_session_limit(api, kernel)
    if kernel.relay is None:  # a predict kernel (or one made by hand): it is its own turn
        return send(api, kernel, kernel.id, accelerator, timeout, resumes=None)
    relay = relay_state(api, kernel)
    running = [v for v in relay.latest.values() if v and v.status in RUNNING]
    if running:
        raise common.SuiteError(f"{running[0]} is still {running[0].status.lower()}: wait for "
                                f"it (kaggle_loop.py status {kernel.name} --follow), then push")
    target, partner = next_turn(kernel, relay)
    if partner and partner[1].finished:
        raise common.NothingToDo(f"{kernel.name} is finished ({partner[0]}); bring it home with "
                                 f"kaggle_loop.py output {kernel.name}")
    ahead = max((e for e in relay.errored if not partner or e[1].rank > partner[1].rank),
                key=lambda e: e[1].rank, default=None)
    resumes, rescued = partner, None
    if ahead and rescue:
        rescued = rescue_run(api, kernel, ahead[0])
        resumes = ahead
        print(f"{ahead[0]} {ahead[0].ended} at {ahead[1]}; Kaggle kept its "
              f"output, now data set {rescued}: this version goes on from there")
    elif ahead:
        print(f"{ahead[0]} {ahead[0].ended} at {ahead[1]} (not attachable); "
              "this version goes on from "
              + (f"{partner[0]} at {partner[1]}" if partner else "the start"))
    return send(api, kernel, target, accelerator, timeout, resumes, partner, rescued)


def rescue_run(api, kernel, version):
    """The run NAME of an errored version's output, published as a data set (a new one, or a new
    version of it) that the next version attaches; its id."""
    slug = f"{kernel.id.split('/')[1][:43]}-rescue"
    dataset = f"{kernel.id.split('/')[0]}/{slug}"
    with tempfile.TemporaryDirectory(prefix=".kaggle-rescue-") as tmp:
        download(api, version, Path(tmp) / "dataset", rf"^runs/{re.escape(kernel.name)}/")
        for log in Path(tmp, "dataset").glob("*.log"):  # the download's copy of Kaggle's log
            log.unlink()
        publish(api, Path(tmp) / "dataset", dataset, f"{kernel.name} run rescued"[:50],
                f"The run {kernel.name} as {version} left it (it ended in error), for the next "
                "version to resume.")
    return dataset


def asks_for_gpu(folder, accelerator):
    """Whether the version pushed from `folder` gets a GPU: --accelerator, else its metadata."""
    if accelerator:
        return accelerator.lower().startswith("nvidia")
    return bool(json.loads((folder / "kernel-metadata.json").read_text()).get("enable_gpu"))


def check_quota(api, kernel, target, folder, accelerator, timeout):
    """Before a GPU push: the hours left this week cover the version's time limit (--timeout,
    else the recipe's), else one line. Past the quota Kaggle refuses GPU commits; a version
    pushed with too little left is stopped mid-run, its hours lost."""
    if not asks_for_gpu(folder, accelerator):
        return
    try:
        quota = kaggle_client.gpu_quota(api)
    except common.SuiteError as e:
        print(f"warning: {e}; pushing anyway", file=sys.stderr)
        return
    if quota is None:
        return
    recipe = kernel.recipe or {}
    limit = timeout or (common.duration(recipe["time_limit"])
                        if recipe.get("time_limit") and recipe.get("kind") != "predict" else 0)
    print(quota)
    if quota.left <= 0 or quota.left * 3600 < limit:
        raise common.SuiteError(
            f"{quota}: {target} may run {common.clock_text(limit)} (its time limit), more than "
            "is left; not pushed: wait for the refresh, or push with a shorter --timeout",
            code=2)


def send(api, kernel, target, accelerator, timeout, resumes, partner=None, rescued=None):
    """Push the folder of `target` (with the rescue data set attached, if any) and check that
    Kaggle attached what it resumes from: the partner's complete version, the rescue."""
    folder = kernel.folder_of(target)
    check_quota(api, kernel, target, folder, accelerator, timeout)
    with tempfile.TemporaryDirectory(prefix=".kaggle-push-") as tmp:
        if rescued:  # the metadata with the rescue data set added; the code as built
            meta = json.loads((folder / "kernel-metadata.json").read_text())
            meta["dataset_sources"] = meta.get("dataset_sources", []) + [rescued]
            meta["code_file"] = str((folder / meta["code_file"]).resolve())
            Path(tmp, "kernel-metadata.json").write_text(json.dumps(meta, indent=2))
            folder = Path(tmp)
        printed = []
        result = kaggle_client.kaggle_call(f"push of {target}", api.kernels_push, str(folder), timeout,
                                           accelerator, printed=printed)
    for line in "".join(printed).splitlines():  # the package's warnings (a slug off the title)
        print(f"warning: {line}", file=sys.stderr)
    if result.error:
        raise common.SuiteError(f"Kaggle refused the push of {target}: {result.error}", code=2)
    version = Version(target, result.version_number, "QUEUED")
    left_out = {kind: list(getattr(result, f"invalid_{kind}_sources", None) or [])
                for kind in ("dataset", "competition", "kernel", "model")}
    needed = ([partner[0].kernel] if partner else []) + ([rescued] if rescued else [])
    missing = [s for s in needed if s in left_out["kernel"] + left_out["dataset"]]
    if missing:
        raise common.SuiteError(f"Kaggle did not attach {missing[0]} to {version}, which holds "
                                f"the run at {resumes[1]}: this version would train from the "
                                f"start; cancel it on kaggle.com ({result.url})", code=2)
    for kind, sources in left_out.items():
        expected = kind == "kernel" and not partner  # the partner has no complete version yet
        if sources and not expected:
            print(f"warning: Kaggle left out these {kind} sources (not valid): {sources}",
                  file=sys.stderr)
    where = (f"resumes the run from {resumes[0]} ({resumes[1]})" if resumes else
             "starts the run (nothing to resume yet)" if kernel.relay else "predicts")
    print(f"pushed {version}: it {where}; {result.url}")
    return version


def follow(api, version, interval):
    """Poll a version until it ends; its final Version (the failure message if it failed)."""
    start = time.monotonic()
    while True:
        version = version_status(api, version.kernel, version.number)
        seconds = int(time.monotonic() - start)
        print(f"{version}: {version.status.lower()} ({common.clock_text(seconds)})", flush=True)
        if version.status not in RUNNING:
            return version
        time.sleep(interval)


def log_lines(log):
    """Kaggle's log as lines of text: it keeps a JSON list of {stream_name, time, data}."""
    try:
        text = "".join(entry["data"] for entry in json.loads(log))
    except (ValueError, TypeError, KeyError):
        text = log
    return [line for line in text.splitlines() if line.strip()]


def version_failed(api, version):
    """The tail of Kaggle's log on stdout, and the one line that says why."""
    try:
        lines = log_lines(kaggle_client.kaggle_call(f"log of {version}", api.kernels_logs,
                                                    f"{version.kernel}/{version.number}"))
        last = lines[-1].strip() if lines else "the log is empty"
    except common.SuiteError as e:
        lines, last = [], f"no log ({e})"
    if lines:
        print(f"the last {min(len(lines), LOG_TAIL)} lines of Kaggle's log:")
        print("\n".join("    " + line for line in lines[-LOG_TAIL:]))
    return common.SuiteError(f"{version} ended with status {version.status.lower()}: "
                             f"{version.failure or 'Kaggle gave no reason'}; last log line: "
                             f"{last}", code=2)


def newest_pushed(api, kernel):
    """The newest version of the kernel and its partner: one that is still running, else the
    one pushed last (by its kernel's lastRunTime)."""
    found = []
    for kernel_id in kernel.ids:
        count = version_count(api, kernel_id)
        if count:
            found.append(version_status(api, kernel_id, count))
    if not found:
        raise common.SuiteError(f"{' and '.join(kernel.ids)}: no version pushed yet, or none this "
                                "account may see (Kaggle answers both with 404 or 403 "
                                "\"Permission 'kernels.get' was denied\"): check the user name "
                                f"in kernel-metadata.json, or kaggle_loop.py push {kernel.name}",
                                code=2)
    running = [v for v in found if v.status in RUNNING]
    return running[0] if running else max(found, key=lambda v: last_run(api, v.kernel))


def last_run(api, kernel_id):
    return str(kaggle_client.kernel_metadata(api, kernel_id).last_run_time or "")


def status(api, kernel, follow_it, interval):
    version = newest_pushed(api, kernel)
    version = follow(api, version, interval) if follow_it else version
    if not follow_it:
        print(f"{version}: {version.status.lower()}")
    with contextlib.suppress(common.SuiteError):  # a word on the quota, never a failure
        quota = kaggle_client.gpu_quota(api)
        if quota:
            print(quota)
    if version.status not in RUNNING | {"COMPLETE"}:
        raise version_failed(api, version)
    return version


def furthest(api, kernel):
    """The version whose output holds the run furthest on (complete or not), and its progress."""
    found = []
    for kernel_id in kernel.ids:
        latest, done = newest(api, kernel_id)
        for version in {v.number: v for v in (latest, done) if v}.values():
            if version.status not in RUNNING:
                progress = progress_of(api, version, kernel.name)
                if progress:
                    found.append((version, progress))
    if not found:
        raise common.SuiteError(f"no version of {' or '.join(kernel.ids)} holds runs/"
                                f"{kernel.name}/ yet: still running? see `status`", code=2)
    return max(found, key=lambda f: (f[1].rank, f[0].status == "COMPLETE"))


def origin(run_dir):
    """{"kernel", "version"} of a run folder that `output` brought home, else None."""
    try:
        return json.loads((Path(run_dir) / ORIGIN).read_text())
    except (OSError, ValueError):
        return None


def output(api, kernel, runs_dir, overwrite, version=None):
    """The output of `version` (default: the one holding the run furthest on) into a temporary
    folder, then its run folder to RUNS/NAME/ with submission.csv and the log, every
    metrics.json marked with the kernel and version. Returns the run folder."""
    runs_dir = common.check_output_folder(Path(runs_dir), "--runs")
    target = runs_dir / kernel.name
    if target.exists() and (origin(target) or {}).get("kernel") not in kernel.ids and not overwrite:
        raise common.SuiteError(f"--runs {target} exists and is not a Kaggle output of "
                                f"{kernel.id}; give --overwrite to replace it")
    if version is None:
        version, progress = furthest(api, kernel)
        print(f"{version} holds the run furthest on ({progress})")
    runs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kaggle-output-", dir=runs_dir) as tmp:  # hidden
        download(api, version, tmp)
        run = Path(tmp) / "runs" / kernel.name
        if not run.is_dir():
            raise common.SuiteError(f"the output of {version} has no runs/{kernel.name}/", code=2)
        marked = 0
        for path in run.rglob("metrics.json"):
            named = {key: kernel.name for key in ("run", "group")  # the run's name is now the folder's
                     if runs.read_metrics(path.parent).get(key)}
            if not runs.update_metrics(path.parent, kaggle_kernel=version.kernel,
                                       kaggle_version=version.number, **named):
                print(f"warning: {path.relative_to(tmp)} in the output is not JSON; left as is",
                      file=sys.stderr)
                continue
            marked += 1
        for name, kept in (("submission.csv", "submission.csv"),
                           (f"{version.kernel.split('/')[1]}.log", "kaggle.log")):
            if Path(tmp, name).is_file():
                shutil.move(Path(tmp, name), run / kept)
        common.write_json(run / ORIGIN, {"kernel": version.kernel, "version": version.number})
        if target.exists():
            shutil.move(target, Path(tmp, "replaced"))  # deleted with the temporary folder
        shutil.move(run, target)
    print(f"{version} -> {target}: {marked} metrics.json marked as Kaggle's"
          + ("" if (target / "submission.csv").is_file() else "; no submission.csv in the output"))
    return target


def is_code_competition(api, competition):
    """Whether Kaggle lists the competition as kernels-only; False when the list does not
    show it (the file is sent, and Kaggle says so if that is wrong)."""
    answer = kaggle_client.kaggle_call(f"looking up {competition}", api.competitions_list,
                                       search=competition)
    for listed in answer.competitions or []:
        if (listed.ref or "").rstrip("/").rsplit("/", 1)[-1] == competition:
            return listed.is_kernels_submissions_only
    return False


def check_predicts(kernel, competition, retrain):
    """A code competition scores the rerun of the submitted version, which starts from an empty
    /kaggle/working with the inputs attached at commit time: a training kernel would train again
    (its own output is never attached), within 9 h, before predicting."""
    if retrain or (kernel.recipe or {}).get("kind") in (None, "predict"):
        return
    raise common.SuiteError(
        f"{kernel.name} trains: Kaggle's rerun of it for {competition} would train again from an "
        f"empty /kaggle/working; submit a predict kernel of its finished run instead: python "
        f"kernels/build.py --name {kernel.name}-predict --kind predict --from {kernel.name} "
        "(or --retrain-in-rerun to submit it anyway)", code=2)


def submit(api, kernel, competition, message, code, runs_dir, retrain=False):
    """The submission (the kaggle package's answer): the kernel version holding the finished run
    in a code competition, else that version's submission.csv."""
    run = Path(runs_dir) / kernel.name
    came_from = origin(run)
    if came_from and came_from.get("kernel") not in kernel.ids:
        came_from = None
    if code or is_code_competition(api, competition):
        check_predicts(kernel, competition, retrain)
        if came_from:  # the version brought home (what was looked at)
            version = Version(came_from["kernel"], came_from["version"], "COMPLETE")
        elif kernel.relay is None:
            latest, done = newest(api, kernel.id)
            version = done or latest
        else:
            version = furthest(api, kernel)[0]
        message = kaggle_client.submission_message(message or f"{kernel.name} version {version.number}",
                                                   kernel.name)
        printed = []
        result = kaggle_client.kaggle_call(
            f"code submission of {version} to {competition}", api.competition_submit_code,
            "submission.csv", message, competition, kernel=version.kernel,
            kernel_version=version.number, quiet=True, printed=printed)
        return kaggle_client.kaggle_submitted(api, competition, result, str(version), "".join(printed))
    if not (came_from and (run / "submission.csv").is_file()):
        run = output(api, kernel, runs_dir, overwrite=False)
    came_from = origin(run)
    if not (run / "submission.csv").is_file():
        raise common.SuiteError(f"{came_from['kernel']} version {came_from['version']} wrote no "
                                "submission.csv (no test set?): nothing to submit", code=2)
    progress = runs.run_progress(run)
    if progress and not progress.finished:
        print(f"note: the run is not finished ({progress}): submitting the model so far")
    message = kaggle_client.submission_message(message or f"{kernel.name} version "
                                                    f"{came_from['version']}", kernel.name)
    return kaggle_client.kaggle_submit(run / "submission.csv", competition, message)


def wait_for_score(api, competition, ref, interval):
    """Poll the submissions until Kaggle has scored (the public score) or rejected (exit 2) the
    submission `ref`."""
    start = time.monotonic()
    while True:
        page = kaggle_client.kaggle_call(f"reading the submissions of {competition}",
                                         api.competition_submissions, competition)
        found = next((s for s in page or [] if str(s.ref) == str(ref)), None)
        state = found.status.name if found is not None and found.status else "PENDING"
        print(f"submission {ref}: {state.lower()} "
              f"({common.clock_text(time.monotonic() - start)})", flush=True)
        if state == "COMPLETE":
            print(f"public score {found.public_score or '-'}"
                  + (f", private score {found.private_score}" if found.private_score else ""))
            return found
        if state == "ERROR":
            raise common.SuiteError(f"Kaggle rejected submission {ref} to {competition}: "
                                    f"{found.error_description or 'no reason given'}", code=2)
        time.sleep(interval)


def run(api, kernel, accelerator, timeout, rescue, interval, max_sessions, runs_dir):
    """push, follow, push ... until the run is finished, then bring it home. A predict kernel
    (no relay partner) runs once, to be submitted."""
    failed = False
    for _ in range(max_sessions):
        try:
            version = push(api, kernel, accelerator, timeout, rescue)
        except common.NothingToDo as done:
            print(done)
            return output(api, kernel, runs_dir, overwrite=False)
        version = follow(api, version, interval)
        if version.status == "COMPLETE" and kernel.relay is None:  # it trains nothing
            print(f"{version} is complete; submit it: kaggle_loop.py submit {kernel.name} "
                  "--competition SLUG --code")
            return version
        if version.status != "COMPLETE":
            if failed:  # twice in a row: not a session cut short but a kernel that fails
                raise version_failed(api, version)
            print(f"{version} {version.ended}"
                  + ("" if version.status == "CANCEL_ACKNOWLEDGED" else
                     f": {version.failure or 'no reason given'}") + "; pushing again")
        failed = version.status != "COMPLETE"
    best = relay_state(api, kernel).best  # the last session may have finished it
    if best and best[1].finished:
        print(f"{kernel.name} is finished ({best[0]})")
        return output(api, kernel, runs_dir, overwrite=False)
    raise common.SuiteError(f"{kernel.name}: not finished after {max_sessions} versions; "
                            "run again to go on (or raise --max-sessions)", code=2)


def publish(api, folder, dataset, title, description):
    """The files and folders in `folder` as a data set (a new one, or a new version of it), once
    Kaggle has processed it. A folder is uploaded as a zip archive, which Kaggle unpacks into a
    folder of its name (the kaggle CLI's --dir-mode zip)."""
    common.write_json(folder / "dataset-metadata.json", {
        "title": title, "id": dataset, "licenses": [{"name": "other"}],
        "description": description})
    before = kaggle_client.dataset_version(api, dataset)
    if before:
        answer = kaggle_client.kaggle_call(f"new version of {dataset}", api.dataset_create_version,
                                           str(folder), "files of today", quiet=True, dir_mode="zip")
    else:
        answer = kaggle_client.kaggle_call(f"creating {dataset}", api.dataset_create_new, str(folder),
                                           quiet=True, dir_mode="zip")
    if getattr(answer, "error", None):
        raise common.SuiteError(f"Kaggle refused {dataset}: {answer.error}", code=2)
    waited = 0.0
    while waited < PUBLISH_WAIT:  # attachable once processed: ready, and its version the newest
        state = kaggle_client.kaggle_call(f"status of {dataset}", api.dataset_status, dataset)
        if state == "failed":
            raise common.SuiteError(f"Kaggle failed to process {dataset}", code=2)
        if state == "ready" and kaggle_client.dataset_version(api, dataset) > before:  # ours
            return dataset
        time.sleep(PUBLISH_POLL)
        waited += PUBLISH_POLL
    raise common.SuiteError(f"{dataset} is still being processed; wait, then push", code=2)



def weights(api, arch, user, slug):
    """Publish --arch's pretrained weights file under the name the kernel looks for."""
    if arch == "cnn14":
        path = models.cnn14_weights_path()
        title = "PANNs CNN14 weights (AudioSet)"
        about = ("PANNs' published Cnn14_mAP=0.431.pth (Kong et al. 2020, zenodo.org/record/"
                 "3987831, CC BY 4.0), for offline kernels of the music-genre suite.")
    else:
        import torch
        archs = models.classification_archs()
        if arch not in archs:
            raise common.SuiteError(f"unknown --arch {arch!r}; choose from: {', '.join(archs)}, cnn14")
        models.imagenet_state_dict(arch)  # into torch's hub cache, once
        path = Path(torch.hub.get_dir()) / "checkpoints" / models.imagenet_file_name(arch)
        title = f"{arch} ImageNet weights (torchvision)"[:50]
        about = (f"torchvision's {path.name} (ImageNet weights of {arch}, BSD-3-Clause), for "
                 "offline kernels of the music-genre suite.")
    dataset = f"{user}/{slug or (arch.replace('_', '-') + '-weights')}"
    size = path.stat().st_size / 2 ** 20
    print(f"publishing {path} ({size:.0f} MiB) as {dataset} ...")
    with tempfile.TemporaryDirectory(prefix=".kaggle-weights-") as tmp:
        (Path(tmp) / path.name).symlink_to(path.resolve())  # uploaded through the link, not copied
        publish(api, Path(tmp), dataset, title, about)
    print(f"{dataset} holds {path.name}; build with: --weights-dataset {dataset}")
    return dataset


def main(argv=None):
    args = build_parser().parse_args(argv)
    kaggle_client.check_kaggle_version()  # before any call: older ones act on the wrong version
    if args.command == "weights":
        return 0 if weights(kaggle_client.kaggle_api(), args.arch, args.user, args.slug) else 1
    kernel = find_kernel(args.kernel)
    api = kaggle_client.kaggle_api()
    if args.command == "push":
        push(api, kernel, args.accelerator, args.timeout, not args.no_rescue)
    elif args.command == "run":
        run(api, kernel, args.accelerator, args.timeout, not args.no_rescue, args.interval,
            args.max_sessions, args.runs)
    elif args.command == "status":
        status(api, kernel, args.follow, args.interval)
    elif args.command == "output":
        output(api, kernel, args.runs, args.overwrite)
    else:
        result = submit(api, kernel, args.competition, args.message, args.code, args.runs,
                        args.retrain_in_rerun)
        if args.wait:
            wait_for_score(api, args.competition, result.ref, args.interval)
    return 0


cli = common.user_errors(main)  # the command line: a SuiteError is one line and an exit code


if __name__ == "__main__":
    sys.exit(cli())
