"""The loop around a Kaggle kernel, one command each way: push it, follow it, bring its output
home into runs/, submit it.

    python kernels/kaggle_loop.py push cnn --accelerator NvidiaTeslaT4 --timeout 43200
    python kernels/kaggle_loop.py status cnn --follow --interval 60
    python kernels/kaggle_loop.py output cnn --runs runs        # -> runs/cnn/, marked as Kaggle's
    python kernels/kaggle_loop.py submit cnn --competition my-genre-comp -m "first try"
    python compare.py --kaggle my-genre-comp                    # public and private scores

NAME_OR_DIR is a kernel folder, kernels/NAME/ or a path, holding kernel-metadata.json (id =
USER/SLUG) and its code file. The kernel's run comes home as runs/NAME/ (NAME: the folder's
name), with the version's submission.csv and Kaggle's log (kaggle.log) beside its results and
kaggle.json saying which kernel version it is. A code competition (--code, or one Kaggle lists
as kernels-only) is sent the kernel version itself, any other the version's submission.csv.
Every refusal (credentials, rules, daily limit, unknown name, no network, a failed kernel) is
one line and exit code 2.
"""
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

KERNELS_DIR = Path(__file__).resolve().parent
RUNNING = {"QUEUED", "RUNNING", "NEW_SCRIPT", "CANCEL_REQUESTED"}  # Kaggle's unfinished states
LOG_TAIL = 20      # lines of Kaggle's log shown when a version failed
ORIGIN = "kaggle.json"  # in runs/NAME/: the kernel and version the folder came from
RESULTS = ("metrics.json", "config.json", "checkpoint.pt")  # what makes a folder a run


def build_parser():
    p = common.ArgumentParser(prog="kaggle_loop.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, help):
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("kernel", metavar="NAME_OR_DIR", help="kernels/NAME/, or a kernel folder")
        return c
    push = command("push", "push the kernel folder: a new version that runs on Kaggle")
    push.add_argument("--accelerator", metavar="SHAPE", help="overrides the metadata's machine: "
                      "NvidiaTeslaT4 (GPU T4 x2), NvidiaL4, TpuV6E8, ... (default: the metadata's)")
    push.add_argument("--timeout", type=common.number(int, minimum=1), metavar="S",
                      help="the longest the version may run, in seconds (default: Kaggle's)")
    status = command("status", "the status of the newest version; exit 2 if it failed")
    status.add_argument("--follow", action="store_true", help="poll until it ends: exit 0 when "
                        "complete, 2 with Kaggle's failure message and the log's tail otherwise")
    status.add_argument("--interval", type=common.number(float, above=0), default=60,
                        metavar="S", help="seconds between polls (default %(default)s)")
    output = command("output", "download the newest version's output into RUNS/NAME/")
    output.add_argument("--runs", default="runs", help="runs folder (default %(default)s)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace RUNS/NAME/ even if it is not this kernel's Kaggle output")
    submit = command("submit", "submit the version's submission.csv, or for a code "
                     "competition the kernel version itself")
    submit.add_argument("--competition", required=True, metavar="SLUG",
                        help="the competition (the end of its URL)")
    submit.add_argument("-m", "--message", help="the submission's description (the run's name "
                        "is added when missing, so compare.py --kaggle finds the score)")
    submit.add_argument("--code", action="store_true", help="a code competition: submit the "
                        "kernel version (found out from Kaggle when not given)")
    submit.add_argument("--runs", default="runs", help="where `output` put RUNS/NAME/"
                        "submission.csv, downloaded when missing (default %(default)s)")
    return p


# ----------------------------------------------------------------------------------------------
# The kernel folder, and what Kaggle says about it

@dataclass
class Kernel:
    name: str    # the folder's name: the run comes home as runs/NAME/
    folder: Path
    id: str      # USER/SLUG


def find_kernel(name_or_dir):
    folder = Path(name_or_dir)
    if not (folder / "kernel-metadata.json").is_file():
        folder = KERNELS_DIR / name_or_dir
    metadata = folder / "kernel-metadata.json"
    if not metadata.is_file():
        known = sorted(p.parent.name for p in KERNELS_DIR.glob("*/kernel-metadata.json"))
        raise common.SuiteError(f"{name_or_dir}: not a kernel folder (no kernel-metadata.json); "
                                f"kernels here: {', '.join(known) or 'none'}")
    try:
        kernel_id = json.loads(metadata.read_text())["id"]
    except (ValueError, KeyError, TypeError):
        raise common.SuiteError(f"{metadata}: no \"id\" (USER/SLUG)") from None
    if not isinstance(kernel_id, str) or kernel_id.count("/") != 1:
        raise common.SuiteError(f"{metadata}: id {kernel_id!r} is not USER/SLUG")
    return Kernel(folder.resolve().name, folder, kernel_id)


def newest_version(api, kernel):
    """The kernel's newest version number, from GetKernel (what `kaggle kernels pull` calls)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

    def get():
        with api.build_kaggle_client() as client:
            request = ApiGetKernelRequest()
            request.user_name, request.kernel_slug = kernel.id.split("/")
            return client.kernels.kernels_api_client.get_kernel(request)
    return common.kaggle_call(f"looking up {kernel.id}", get).metadata.current_version_number


def log_lines(log):
    """Kaggle's log as lines of text: it keeps a JSON list of {stream_name, time, data}."""
    try:
        text = "".join(entry["data"] for entry in json.loads(log))
    except (ValueError, TypeError, KeyError):
        text = log
    return [line for line in text.splitlines() if line.strip()]


def version_failed(api, kernel, state, message):
    """The tail of Kaggle's log on stdout, and the one line that says why."""
    try:
        lines = log_lines(common.kaggle_call(f"log of {kernel.id}", api.kernels_logs, kernel.id))
        last = lines[-1].strip() if lines else "the log is empty"
    except common.SuiteError as e:
        lines, last = [], f"no log ({e})"
    if lines:
        print(f"the last {min(len(lines), LOG_TAIL)} lines of Kaggle's log:")
        print("\n".join("    " + line for line in lines[-LOG_TAIL:]))
    return common.SuiteError(f"{kernel.id} ended with status {state}: "
                             f"{message or 'Kaggle gave no reason'}; last log line: {last}", code=2)


def origin(run_dir):
    """{"kernel", "version"} of a run folder that `output` brought home, else None."""
    try:
        return json.loads((Path(run_dir) / ORIGIN).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# The four commands

def check_fresh(kernel):
    """A kernel built by build.py must carry today's code: an hour of GPU on stale code is lost."""
    import importlib.util
    if not (kernel.folder / "recipe.json").is_file():
        return  # made by hand
    spec = importlib.util.spec_from_file_location("kernel_build", KERNELS_DIR / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    recipe = {**build.DEFAULTS, **json.loads((kernel.folder / "recipe.json").read_text())}
    if build.stale_files(kernel.folder, build.render(build.check_recipe(recipe))):
        raise common.SuiteError(f"{kernel.folder} was built from older code or another recipe; "
                                f"rebuild it first: python kernels/build.py --out {kernel.folder.parent}")


def push(api, kernel, accelerator, timeout):
    check_fresh(kernel)
    printed = []
    result = common.kaggle_call(f"push of {kernel.folder}", api.kernels_push, str(kernel.folder),
                                timeout, accelerator, printed=printed)
    for line in "".join(printed).splitlines():  # the package's warnings (a slug off the title)
        print(f"warning: {line}", file=sys.stderr)
    if result.error:
        raise common.SuiteError(f"Kaggle refused the push of {kernel.id}: {result.error}", code=2)
    for kind in ("dataset", "competition", "kernel", "model"):
        invalid = getattr(result, f"invalid_{kind}_sources", None)
        if kind == "kernel" and list(invalid or []) == [kernel.id]:  # its own output: none yet
            print("note: no earlier version's output to resume from yet (attached from the next "
                  "push on)")
            continue
        if invalid:
            print(f"warning: Kaggle left out these {kind} sources (not valid): {invalid}",
                  file=sys.stderr)
    print(f"pushed {kernel.id} version {result.version_number}: {result.url}")


def status(api, kernel, follow, interval):
    start = time.monotonic()
    while True:
        answer = common.kaggle_call(f"status of {kernel.id}", api.kernels_status, kernel.id)
        state = answer.status.name if answer.status else "UNKNOWN"
        seconds = int(time.monotonic() - start)
        print(f"{kernel.id}: {state.lower()}"
              + (f" ({seconds // 60}m{seconds % 60:02d}s)" if follow else ""), flush=True)
        if not follow or state not in RUNNING:
            break
        time.sleep(interval)
    if state not in RUNNING | {"COMPLETE"}:
        raise version_failed(api, kernel, state.lower(), answer.failure_message)


def output(api, kernel, runs, overwrite):
    """The newest version's output into a temporary folder, then its run folder (runs/* in it,
    whatever its name) to RUNS/NAME/ with submission.csv and the log, every metrics.json marked
    with the kernel and version. Returns the run folder."""
    runs = common.check_output_folder(Path(runs), "--runs")
    target = runs / kernel.name
    if target.exists() and (origin(target) or {}).get("kernel") != kernel.id and not overwrite:
        raise common.SuiteError(f"--runs {target} exists and is not a Kaggle output of "
                                f"{kernel.id}; give --overwrite to replace it")
    version = newest_version(api, kernel)
    runs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kaggle-output-", dir=runs) as tmp:  # hidden
        common.kaggle_call(f"output of {kernel.id} version {version}", api.kernels_output,
                           f"{kernel.id}/{version}", tmp, force=True, quiet=True)
        found = [p for p in sorted(Path(tmp).glob("runs/*")) if not p.name.startswith(".")
                 and any(next(p.rglob(f), None) for f in RESULTS)]  # not runs/splits/
        if len(found) > 1:  # the kernel's own run, or else which
            found = [p for p in found if p.name == kernel.name] or found
        if len(found) != 1:
            raise common.SuiteError(
                f"the output of {kernel.id} version {version} has "
                + (f"{len(found)} run folders ({', '.join(p.name for p in found)})" if found
                   else "no run folder (runs/*/): still running? see `status`"), code=2)
        run = found[0]
        marked = 0
        for path in run.rglob("metrics.json"):
            try:
                metrics = json.loads(path.read_text())
            except ValueError:
                print(f"warning: {path.relative_to(tmp)} in the output is not JSON; left as is",
                      file=sys.stderr)
                continue
            metrics.update(kaggle_kernel=kernel.id, kaggle_version=version)
            for key in ("run", "group"):  # the run's name is now the folder's
                if metrics.get(key):
                    metrics[key] = kernel.name
            common.write_json(path, metrics)
            marked += 1
        for name, kept in (("submission.csv", "submission.csv"),
                           (f"{kernel.id.split('/')[1]}.log", "kaggle.log")):
            if Path(tmp, name).is_file():
                shutil.move(Path(tmp, name), run / kept)
        common.write_json(run / ORIGIN, {"kernel": kernel.id, "version": version})
        if target.exists():
            shutil.move(target, Path(tmp, "replaced"))  # deleted with the temporary folder
        shutil.move(run, target)
    print(f"{kernel.id} version {version} -> {target}: {marked} metrics.json marked as Kaggle's"
          + ("" if (target / "submission.csv").is_file() else "; no submission.csv in the output"))
    return target


def is_code_competition(api, competition):
    """Whether Kaggle lists the competition as kernels-only; False when the list does not
    show it (the file is sent, and Kaggle says so if that is wrong)."""
    answer = common.kaggle_call(f"looking up {competition}", api.competitions_list,
                                search=competition)
    for listed in answer.competitions or []:
        if (listed.ref or "").rstrip("/").rsplit("/", 1)[-1] == competition:
            return listed.is_kernels_submissions_only
    return False


def submit(api, kernel, competition, message, code, runs):
    run = Path(runs) / kernel.name
    came_from = origin(run)
    if (came_from or {}).get("kernel") != kernel.id:
        came_from = None
    if code or is_code_competition(api, competition):
        # the version brought home (what was looked at), else the newest
        version = came_from["version"] if came_from else newest_version(api, kernel)
        message = common.submission_message(message or f"{kernel.name} version {version}",
                                            kernel.name)
        printed = []
        result = common.kaggle_call(
            f"code submission of {kernel.id} version {version} to {competition}",
            api.competition_submit_code, "submission.csv", message, competition,
            kernel=kernel.id, kernel_version=version, quiet=True, printed=printed)
        return common.kaggle_submitted(api, competition, result,
                                       f"{kernel.id} version {version}", "".join(printed))
    if not (came_from and (run / "submission.csv").is_file()):
        run = output(api, kernel, runs, overwrite=False)
    version = origin(run)["version"]
    if not (run / "submission.csv").is_file():
        raise common.SuiteError(f"{kernel.id} version {version} wrote no submission.csv (no test "
                                "set?): nothing to submit", code=2)
    message = common.submission_message(message or f"{kernel.name} version {version}",
                                        kernel.name)
    return common.kaggle_submit(run / "submission.csv", competition, message)


@common.user_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    kernel = find_kernel(args.kernel)
    api = common.kaggle_api()
    if args.command == "push":
        push(api, kernel, args.accelerator, args.timeout)
    elif args.command == "status":
        status(api, kernel, args.follow, args.interval)
    elif args.command == "output":
        output(api, kernel, args.runs, args.overwrite)
    else:
        submit(api, kernel, args.competition, args.message, args.code, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
