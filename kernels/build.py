"""Build Kaggle kernels from recipes: kernels/NAME/ with kernel.ipynb (a notebook: what it does,
the recipe, the suite's code, one cell that runs it, the results), kernel-metadata.json,
relay/kernel-metadata.json (its relay partner, see below) and recipe.json.

    # a ready-made recipe (kernels/recipes/), with your user name and data
    python kernels/build.py --recipe specnet-mel --user alice \\
        --dataset andradaolteanu/gtzan-dataset-music-genre-classification
    # your own: a kind, the conversion, the sources, and the trainer's flags after --
    python kernels/build.py --name resnet50-ft --kind transfer --size 256 --user alice \\
        --competition genre-comp --weights-dataset alice/resnet50-weights \\
        -- --arch resnet50 --finetune --epochs 30
    # a code competition: training under 9 h, and an inference kernel that only predicts
    python kernels/build.py --recipe specnet-mel --user alice --competition comp --code-competition
    python kernels/build.py --name specnet-infer --kind predict --from specnet-mel
    python kernels/build.py                   # rebuild every kernel in kernels/ from its recipe
    python kernels/build.py --check           # exit 1 listing stale kernels; write nothing
    python kernels/kaggle_loop.py push NAME   # then push it (see kaggle_loop.py)

A recipe is checked when it is built, with the kernel's own argument handling
(kernel_main.check_recipe: the trainer's parser, the flags the kernel sets, a --split it can
find), so a bad flag fails here in one line, not an hour into a Kaggle session. The notebook
writes the modules the kernel imports (computed from the imports of kernel_main.py and the
trainer) into /kaggle/temp/suite/ as real code cells (%%writefile), so `import common`,
multiprocessing (which pickles by module name) and torchrun find them as files.

A kernel cannot attach its own output (Kaggle refuses the source and mounts nothing), so every
training kernel has a relay partner, another kernel of the same notebook under the title
"... Relay": each attaches the other's output, and a run longer than a session goes on in the
partner's next version. Kernels run with internet off (code competitions require it): a transfer
kernel takes its pretrained weights from an attached data set (--weights-dataset; kaggle_loop.py
weights makes one). GPU kernels ask for Kaggle's T4 x2 ("NvidiaTeslaT4"); an MLP kernel gets a
CPU session. The output is deterministic: same sources and recipe, byte-identical files.
"""
import argparse
import ast
import json
import pprint
import re
import sys
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parent
ROOT = KERNELS_DIR.parent
sys.path[:0] = [str(ROOT), str(KERNELS_DIR)]
import audio  # noqa: E402
import common  # noqa: E402
import data  # noqa: E402
import kernel_main  # noqa: E402  (the kernel's own code: its flags and its check of a recipe)
import models  # noqa: E402

RECIPES_DIR = KERNELS_DIR / "recipes"  # the ready-made recipes
RECIPE_FILE, NOTEBOOK, RELAY = "recipe.json", "kernel.ipynb", "relay"
SOURCE_LIMIT = 1_000_000  # bytes: a pushed kernel source of 1 MB or more is refused
MACHINE_SHAPE = "NvidiaTeslaT4"  # T4 x2; P100 is retired and current CUDA wheels lack sm_60
DEFAULTS = {
    "user": "your-kaggle-username", "title": None, "datasets": [], "competition": None,
    "code_competition": False, "weights_dataset": None, "test_folder": "test",
    "sample_submission": "sample_submission.csv", "time_limit": None, "processes": "auto",
    "internet": False, "trainer_args": [], "note": None, "allow_cpu": False, "quick_test": False,
}
NO_INFERENCE_SERVER = ("competitions that serve their test through kaggle_evaluation inference "
                       "servers are not supported")
IMAGE_CONVERSION = kernel_main.IMAGE_CONVERSION


def build_parser():
    p = common.ArgumentParser(prog="build.py", description=__doc__)
    r = p.add_argument_group("recipe")
    r.add_argument("--recipe", metavar="NAME", help="start from a ready-made recipe: "
                   + ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.json"))))
    r.add_argument("--name", help="the kernel's folder, its run's name and (unless --title) its "
                                  "title and Kaggle id (default: the recipe's)")
    r.add_argument("--kind", choices=kernel_main.KINDS, help="cnn (train_cnn.py), transfer "
                   "(train_transfer.py), mlp (train_mlp.py), or predict (a finished run of "
                   "--from predicts, nothing is trained)")
    r.add_argument("--from", dest="source", metavar="NAME", help="predict kind: the training "
                   "kernel (built in --out) whose finished run predicts")
    r.add_argument("--title", help="Kaggle title (default: Music Genre NAME); the id is its slug")
    c = p.add_argument_group("conversion (images for cnn and transfer kinds, features for mlp)")
    c.add_argument("--size", type=common.bounded(int, minimum=0), help="image side (0: native)")
    c.add_argument("--mel", type=common.bounded(int, minimum=0), help="log-mel bands (0: linear)")
    c.add_argument("--segment-seconds", type=common.bounded(float, minimum=0),
                   help="cut clips into segments of this many seconds (0: whole clips)")
    c.add_argument("--feature-set", choices=list(audio.FEATURE_SETS),
                   help="mlp kind: the audio features to extract (default standard)")
    s = p.add_argument_group("sources and session")
    s.add_argument("--user", help=f"your Kaggle user name (default {DEFAULTS['user']})")
    s.add_argument("--dataset", action="append", metavar="OWNER/SLUG",
                   help="a data set to attach (repeatable), e.g. GTZAN's "
                        "andradaolteanu/gtzan-dataset-music-genre-classification")
    s.add_argument("--competition", metavar="SLUG", help="a competition to attach")
    s.add_argument("--code-competition", action="store_true", help="the competition is a code "
                   "competition: Kaggle stops its notebooks at 9 h (the time limit defaults to "
                   "8h30m) and reruns the submitted one on the hidden test set")
    s.add_argument("--weights-dataset", metavar="OWNER/SLUG", help="a data set holding the "
                   "pretrained weights file, for a transfer kernel offline (kaggle_loop.py "
                   "weights makes one)")
    s.add_argument("--test-folder", help="name of the folder of audio to predict (default test)")
    s.add_argument("--sample-submission", help="name of the sample submission CSV beside it "
                                               "(default sample_submission.csv)")
    s.add_argument("--time-limit", help="stop training before this much of the session has "
                                        "passed (default 11h30m; 8h30m in a code competition)")
    s.add_argument("--processes", help="training processes: auto (both T4s when the recipe gains "
                                       "from it) or N (default auto)")
    s.add_argument("--allow-cpu", action="store_true", help="train on the CPU when the session "
                   "has no GPU (default: a kernel that asks for a GPU and finds none stops in its "
                   "first lines)")
    s.add_argument("--internet", action="store_true", help="let the kernel use the internet "
                   "(code competitions forbid it)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=str(KERNELS_DIR), help="folder of kernel folders "
                                                          "(default kernels/)")
    o.add_argument("--overwrite", action="store_true",
                   help="replace a kernel folder of another training (kind, conversion, trainer "
                        "flags) or one that is not a kernel, or a RECIPE cell edited by hand")
    o.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 listing the kernels in --out that are stale")
    return p


# ----------------------------------------------------------------------------------------------
# Recipes: checked when built

def read_json(path, what):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise common.SuiteError(f"{path}: not a readable {what}") from None


def make_recipe(args, trainer_args, out):
    """The recipe of this build: a ready-made one (--recipe) or the given kind, with the flags
    given on top, then the defaults."""
    base = {}
    if args.recipe:
        path = RECIPES_DIR / f"{args.recipe}.json"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
            raise common.SuiteError(f"--recipe {args.recipe}: no such recipe; known: {known}")
        base = {"name": args.recipe, **read_json(path, "recipe")}
        if args.name and args.name != args.recipe:  # another kernel: its own title and id
            base.pop("title", None)
    elif not (args.name and args.kind):
        raise common.SuiteError("give --recipe NAME, or --name NAME and --kind KIND")
    given = {"name": args.name, "kind": args.kind, "title": args.title, "user": args.user,
             "datasets": args.dataset, "competition": args.competition,
             "code_competition": args.code_competition or None,
             "weights_dataset": args.weights_dataset, "test_folder": args.test_folder,
             "sample_submission": args.sample_submission, "time_limit": args.time_limit,
             "processes": args.processes, "internet": args.internet or None,
             "allow_cpu": args.allow_cpu or None,
             "trainer_args": base.get("trainer_args", []) + trainer_args or None}
    recipe = {**DEFAULTS, **base, **{k: v for k, v in given.items() if v is not None}}
    if recipe["kind"] == "predict":
        recipe = predict_recipe(recipe, args, out)
    conversion = {"size": args.size, "mel": args.mel, "segment_seconds": args.segment_seconds}
    if recipe["kind"] in ("mlp", "predict"):
        if any(v is not None for v in conversion.values()):
            raise common.SuiteError(f"--size, --mel, --segment-seconds: an {recipe['kind']} "
                                    "kernel makes no images")
        recipe["conversion"] = {} if recipe["kind"] == "predict" else {
            "feature_set": args.feature_set or recipe.get("conversion", {}).get("feature_set",
                                                                               "standard")}
    else:
        if args.feature_set:
            raise common.SuiteError("--feature-set: only an mlp kernel extracts features")
        recipe["conversion"] = {**IMAGE_CONVERSION, **recipe.get("conversion", {}),
                                **{k: v for k, v in conversion.items() if v is not None}}
    return check_recipe(recipe)


def predict_recipe(recipe, args, out):
    """A predict kernel: the training kernel's ids, user, competition and test settings."""
    if not args.source:
        raise common.SuiteError("--kind predict needs --from NAME: the training kernel whose "
                                "finished run predicts")
    if args.dataset or args.weights_dataset or recipe["trainer_args"]:
        raise common.SuiteError("--kind predict: no --dataset, --weights-dataset or trainer "
                                "flags (the model says how it was trained)")
    folder = Path(out) / args.source
    if not (folder / RECIPE_FILE).is_file():
        raise common.SuiteError(f"--from {args.source}: no kernel {folder} (build the training "
                                "kernel first, with the same --out)")
    source = check_recipe({**DEFAULTS, **read_json(folder / RECIPE_FILE, "recipe")})
    if source["kind"] == "predict":
        raise common.SuiteError(f"--from {args.source}: a predict kernel, not a training one")
    inherited = {k: source[k] for k in ("user", "competition", "code_competition", "test_folder",
                                        "sample_submission")}
    chosen = {k: v for k, v in recipe.items() if v is not None and v != DEFAULTS.get(k)}
    return {**recipe, **inherited, **chosen, "from": args.source, "source_kind": source["kind"],
            "from_kernels": [i for i in kernel_ids(source) if i]}


def check_recipe(recipe):
    """Every field, and the trainer flags as the kernel itself checks them: one line each."""
    if recipe.get("kind") not in kernel_main.KINDS:
        raise common.SuiteError(f"recipe {recipe.get('name')}: kind must be one of "
                                f"{', '.join(kernel_main.KINDS)}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,49}", recipe["name"]):
        raise common.SuiteError(f"--name {recipe['name']!r}: lowercase letters, digits and '-' "
                                "(it names the kernel folder and its run)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", recipe["user"]):
        raise common.SuiteError(f"--user {recipe['user']!r}: a Kaggle user name holds only "
                                "letters, digits, '-' and '_', no spaces (yours ends your "
                                "profile's address, kaggle.com/NAME)")
    if recipe["competition"] and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", recipe["competition"]):
        raise common.SuiteError(f"--competition {recipe['competition']!r}: the competition's slug, "
                                "lowercase letters, digits and '-' (as in its address, "
                                "kaggle.com/competitions/SLUG)")
    for source in recipe["datasets"] + [recipe["weights_dataset"] or "a/b"]:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            raise common.SuiteError(f"--dataset {source!r}: expected OWNER/SLUG")
    for name in titles(recipe):
        if not 5 <= len(name) <= 50:
            raise common.SuiteError(f"--title {name!r}: Kaggle wants 5 to 50 characters")
    if recipe["code_competition"] and not recipe["competition"]:
        raise common.SuiteError("--code-competition needs --competition SLUG")
    limit = recipe["time_limit"] or kernel_main.default_time_limit(recipe["code_competition"])
    try:
        seconds = common.duration(limit)
    except argparse.ArgumentTypeError as e:
        raise common.SuiteError(f"--time-limit: {e}") from None
    hours = kernel_main.session_hours(recipe["code_competition"])
    if recipe["kind"] != "predict" and not kernel_main.fits_session(seconds,
                                                                    recipe["code_competition"]):
        raise common.SuiteError(f"--time-limit {limit}: Kaggle stops a "
                                f"{'code competition notebook' if recipe['code_competition'] else 'session'}"
                                f" at {hours} h; leave at least 10 minutes (e.g. "
                                f"{hours - 1}h30m)")
    recipe = {**recipe, "time_limit": limit}
    if str(recipe["processes"]) != "auto" and not str(recipe["processes"]).isdigit():
        raise common.SuiteError(f"--processes {recipe['processes']}: auto or a number")
    try:
        args = kernel_main.check_recipe(recipe)
    except common.SuiteError as e:
        raise common.SuiteError(f"trainer flags ({' '.join(recipe['trainer_args'])}): {e}") from None
    weights = recipe["kind"] == "transfer" and models.pretrained_weights(args.arch, args.weights)
    if weights in ("imagenet", "panns") and not (recipe["internet"] or recipe["weights_dataset"]):
        raise common.SuiteError(
            f"{'PANNs' if weights == 'panns' else 'ImageNet'} weights for {args.arch} cannot "
            "be downloaded with internet off (as code competitions require): attach a data set "
            "holding the weights file with --weights-dataset OWNER/SLUG (python "
            f"kernels/kaggle_loop.py weights --arch {args.arch} makes one), or build with "
            "--internet, or pass -- --weights none")
    return recipe


def title(recipe):
    return recipe["title"] or f"Music Genre {recipe['name'].replace('-', ' ').title()}"


def titles(recipe):
    """The kernel's title, and its relay partner's (a training kernel's)."""
    return [title(recipe)] + ([f"{title(recipe)} Relay"] if recipe["kind"] != "predict" else [])


def kernel_ids(recipe):
    """(the kernel's id, its relay partner's id or None): USER/slugify(title), as Kaggle and the
    kaggle package link them (python-slugify)."""
    from slugify import slugify
    ids = [f"{recipe['user']}/{slugify(t)}" for t in titles(recipe)]
    return ids[0], ids[1] if len(ids) > 1 else None


def metadata(recipe, relay=False):
    """kernel-metadata.json of the kernel, or of its relay partner: the same notebook, each
    attaching the other's output (never its own: Kaggle refuses that source and mounts nothing)."""
    own, partner = kernel_ids(recipe)[::-1] if relay else kernel_ids(recipe)
    gpu = kernel_main.asks_for_gpu(recipe)
    datasets = list(recipe["datasets"])
    if recipe["weights_dataset"]:
        datasets.append(recipe["weights_dataset"])
    return {
        "id": own, "title": titles(recipe)[1 if relay else 0],
        "code_file": f"../{NOTEBOOK}" if relay else NOTEBOOK,
        "language": "python", "kernel_type": "notebook", "is_private": True,
        "enable_gpu": gpu, **({"machine_shape": MACHINE_SHAPE} if gpu else {}),
        # a relay resumes a checkpoint in its partner's image: each keeps its first version's
        # image (torch and CUDA) rather than whatever is newest (KAGGLE.md)
        **({"docker_image_pinning_type": "original"} if recipe["kind"] != "predict" else {}),
        "enable_internet": recipe["internet"], "dataset_sources": datasets,
        "competition_sources": [recipe["competition"]] if recipe["competition"] else [],
        "kernel_sources": recipe["from_kernels"] if recipe["kind"] == "predict" else [partner],
    }


# ----------------------------------------------------------------------------------------------
# The notebook: the recipe on top, the suite's code in cells, one cell that runs it, the results

def local_imports(path):
    """Names of the suite's own modules a file imports (anywhere in it, lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return {n for n in names if module_path(n)}


def module_path(name):
    for folder in (ROOT, KERNELS_DIR):
        if (folder / f"{name}.py").is_file() and name != "build":
            return folder / f"{name}.py"
    return None


def module_sources(kind):
    """The modules a kernel of this kind imports, computed from the imports of kernel_main and its
    trainer, each after the modules it imports: what it needs, no more."""
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        for imported in sorted(local_imports(module_path(name))):
            visit(imported)
        order.append(name)
    if kind in kernel_main.TRAINERS:
        visit(kernel_main.TRAINERS[kind])
    visit("kernel_main")
    return {name: module_path(name).read_text(encoding="utf-8") for name in order}


def data_files(recipe):
    """Files the modules read that the kernel must carry: a named split its flags use."""
    flags = recipe["trainer_args"]
    used = [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == "--split"]
    return {f"splits/{path.name}": path.read_text(encoding="utf-8")
            for name, path in sorted(data.NAMED_SPLITS.items()) if name in used}


def describe(recipe):
    """What the kernel does, in a sentence."""
    flags = " ".join(recipe["trainer_args"]) or "its default flags"
    if recipe["kind"] == "predict":
        return (f"predicts the test audio with the finished run of the training kernel "
                f"`{recipe['from']}` (attached: {', '.join(recipe['from_kernels'])}); it trains "
                "nothing, so a code competition's rerun on the hidden test set only predicts. "
                "Its commit run, which does not see the hidden test, writes the sample "
                "submission as a placeholder `submission.csv`. The test must come as audio "
                f"files: {NO_INFERENCE_SERVER}")
    conversion = recipe["conversion"]
    if recipe["kind"] == "mlp":
        data = f"the {conversion['feature_set']} audio features of each clip"
    elif recipe["kind"] == "transfer" and "cnn14" in recipe["trainer_args"]:
        data = "the audio itself (CNN14 at 32 kHz)"
    else:
        bands = f"{conversion['mel']}-band log-mel" if conversion["mel"] else "linear log-STFT"
        size = f"{conversion['size']} px" if conversion["size"] else "native size"
        cut = (f", cut into {conversion['segment_seconds']:g}-s segments"
               if conversion["segment_seconds"] else "")
        data = f"{bands} spectrogram images ({size}{cut})"
    trainer = kernel_main.TRAINERS[recipe["kind"]]
    return (f"trains `{trainer}.py {flags}` on {data}, tests it on the clips the split holds "
            "out, and predicts the test audio into `submission.csv`")


def intro(recipe):
    sources = ([f"the competition `{recipe['competition']}`"] if recipe["competition"] else []) \
        + [f"the data set `{d}`" for d in recipe["datasets"]]
    if recipe["weights_dataset"]:
        sources.append(f"the weights data set `{recipe['weights_dataset']}`")
    name = recipe["name"]
    text = [f"# {title(recipe)}", "",
            f"**What it does.** This notebook {describe(recipe)}. Built by the music-genre "
            f"suite's `kernels/build.py` from the recipe below.", ""]
    if recipe["kind"] == "predict":
        text += [f"**Data.** {', '.join(sources) or 'The competition'}: the test audio is the "
                 f"folder named `{recipe['test_folder']}` found under `/kaggle/input`.", ""]
        return "\n".join(text)
    hours = kernel_main.session_hours(recipe["code_competition"])
    own, relay = kernel_ids(recipe)
    text += [f"**Data.** {', '.join(sources) or 'Attach your data'}: the labelled audio is a "
             "folder named `train`, `genres_original` or `genres` (one sub-folder per genre, or "
             f"flat with `train.csv`) found under `/kaggle/input`; the test audio is a folder "
             f"named `{recipe['test_folder']}`.", "",
             f"**Time.** Training stops cleanly before {recipe['time_limit']} (Kaggle ends "
             f"{'a code competition notebook' if recipe['code_competition'] else 'a session'} at "
             f"{hours} h), keeping time to predict." + (f" {recipe['note']}" if recipe["note"] else ""),
             "",
             f"**Resuming.** This notebook runs as two kernels, `{own}` and its relay partner "
             f"`{relay}` (the same notebook), which attach each other's output (a notebook "
             "cannot attach its own). A session stopped by the time limit "
             f"ends with its checkpoint in `runs/{name}/`; `python kernels/kaggle_loop.py push "
             f"{name}` then pushes the partner, which resumes from it.", "",
             "**Change it** in the recipe cell (`trainer_args` are the trainer's flags), or "
             "rebuild it with `kernels/build.py`. **Try it first** with `\"quick_test\": True` "
             f"there: one epoch on {kernel_main.QUICK_CLIPS} clips per genre, in minutes, into "
             f"`runs/{name}-quick/` (never resumed as the run)."]
    return "\n".join(text)


SETUP = '''\
import os
import sys

# The suite's modules are written below as files (so that worker processes and torchrun find them)
# into scratch space, which is not part of the output.
SUITE = os.path.join(os.environ.get("KAGGLE_ROOT", "/kaggle"), "temp", "suite")
os.makedirs(os.path.join(SUITE, "splits"), exist_ok=True)
sys.path.insert(0, SUITE)'''

RUN = '''\
import kernel_main

kernel_main.run_notebook(RECIPE)'''

RESULTS = '''\
from IPython.display import Image, Markdown, display

import runs

run = kernel_main.run_folder(RECIPE)
for part in runs.tested_parts(run):
    display(Markdown(kernel_main.results_table(part)))
    for chart in ("curves.png", "confusion.png"):
        if (part / chart).is_file():
            display(Image(filename=str(part / chart)))'''

REPORT = '''\
for part in runs.tested_parts(run):
    print((part / "report.txt").read_text())'''

NEXT = '''\
print(kernel_main.next_steps(RECIPE, run))'''

HIDDEN = {"_kg_hide-input": True, "_kg_hide-output": True,  # Kaggle's viewer
          "jupyter": {"source_hidden": True, "outputs_hidden": True}}  # JupyterLab's


def notebook(recipe):
    """kernel.ipynb's text: outputs empty, ids fixed, so building twice is byte-identical."""
    import nbformat
    v4 = nbformat.v4

    def code(cell_id, source, **metadata):
        return v4.new_code_cell(source, id=cell_id, metadata=metadata)

    def markdown(cell_id, source):
        return v4.new_markdown_cell(source, id=cell_id)
    modules, files = module_sources(recipe["kind"]), data_files(recipe)
    cells = [markdown("about", intro(recipe)),
             code("recipe", "RECIPE = " + pprint.pformat(recipe, width=96, sort_dicts=True)),
             markdown("code-about", "## The suite's code\n\nThe hidden cells below write "
                      f"{', '.join(f'`{m}.py`' for m in modules)} (the modules this kernel "
                      "imports, verbatim)" + (f" and {', '.join(f'`{f}`' for f in files)}" if
                                              files else "") +
                      " into `/kaggle/temp/suite/`; show them to read the code."),
             code("setup", SETUP)]
    cells += [code(f"module-{name.replace('_', '-')}", f"%%writefile {{SUITE}}/{name}.py\n{text}",
                   **HIDDEN) for name, text in modules.items()]
    cells += [code(f"file-{Path(path).stem}", f"%%writefile {{SUITE}}/{path}\n{text}", **HIDDEN)
              for path, text in files.items()]
    cells += [markdown("run-about", "## Run\n\nFinds the data, resumes an attached earlier run, "
                       "trains within the time limit and predicts; the log below shows each "
                       "stage as it goes." if recipe["kind"] != "predict" else
                       "## Run\n\nFinds the finished run and the test audio, and predicts."),
              code("run", RUN)]
    if recipe["kind"] != "predict":
        cells += [markdown("results-about", "## Results\n\nOn the clips the split holds out: the "
                           "metrics, the learning curves and the confusion matrix."),
                  code("results", RESULTS),
                  markdown("report-about", "Per class (scikit-learn's classification report):"),
                  code("report", REPORT)]
    else:
        cells.append(code("run-folder", "run = kernel_main.run_folder(RECIPE)"))
    cells += [markdown("next-about", "## Where things are, and what next"), code("next", NEXT)]
    nb = v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    nbformat.validate(nb)
    return nbformat.writes(nb)


def check_source_size(recipe, text):
    """Kaggle refuses a pushed kernel source of 1 MB or more (KAGGLE.md): said here, not at push."""
    size = len(text.encode("utf-8"))
    if size >= SOURCE_LIMIT:
        raise common.SuiteError(f"{recipe['name']}: {NOTEBOOK} would be {size / 1e6:.2f} MB and "
                                f"Kaggle refuses a kernel source of {SOURCE_LIMIT / 1e6:g} MB or "
                                "more; drop a module or a split from what the kernel imports")
    return text


def render(recipe):
    """{path in the kernel folder: text}."""
    files = {NOTEBOOK: check_source_size(recipe, notebook(recipe)),
             "kernel-metadata.json": json.dumps(metadata(recipe), indent=2) + "\n",
             RECIPE_FILE: json.dumps(recipe, indent=2, sort_keys=True) + "\n"}
    if recipe["kind"] != "predict":
        files[f"{RELAY}/kernel-metadata.json"] = json.dumps(metadata(recipe, relay=True),
                                                             indent=2) + "\n"
    return files


# ----------------------------------------------------------------------------------------------
# Write, rebuild, check

def built_kernels(out):
    """The kernel folders in `out` (those with a recipe.json)."""
    return sorted(p.parent for p in Path(out).glob(f"*/{RECIPE_FILE}"))


def check_unique_ids(out, folder, recipe):
    """Two kernels in one --out must not map to one Kaggle id: pushing one would replace the
    other's versions."""
    mine = set(filter(None, kernel_ids(recipe)))
    for other in built_kernels(out):
        if other.resolve() == folder.resolve():
            continue
        taken = set()
        for meta in (other / "kernel-metadata.json", other / RELAY / "kernel-metadata.json"):
            if meta.is_file():
                taken.add(read_json(meta, "kernel metadata").get("id"))
        if mine & taken:
            raise common.SuiteError(f"--name {recipe['name']}: its Kaggle id {sorted(mine & taken)[0]} "
                                    f"is {other}'s; give another --name or --title")


REBUILT_IN_PLACE = ("kind", "conversion", "trainer_args", "from")  # what a kernel trains


def check_replacing(folder, recipe, overwrite):
    """A kernel folder is rebuilt in place from a recipe of the same training (its sources,
    title or time limit may change); another kernel, or a folder that is not a kernel (edited by
    hand, made by someone), is replaced only with --overwrite."""
    if overwrite or not folder.is_dir() or not any(folder.iterdir()):
        return
    old = read_json(folder / RECIPE_FILE, "recipe") if (folder / RECIPE_FILE).is_file() else None
    if old is None:
        held = f"is not a kernel folder (no {RECIPE_FILE})"
    elif any(old.get(k) != recipe.get(k) for k in REBUILT_IN_PLACE):
        held = (f"holds another kernel ({old.get('kind')}, "
                f"{' '.join(old.get('trainer_args') or []) or 'default flags'})")
    else:
        return
    raise common.SuiteError(f"--name {recipe['name']}: {folder} {held}; give another --name, or "
                            "replace it with --overwrite")


def recipe_cell_edited(folder):
    """Whether kernel.ipynb's RECIPE cell was edited by hand (it differs from the recipe.json it
    was built with): a rebuild would silently discard the edit."""
    try:
        built = read_json(folder / RECIPE_FILE, "recipe")
        cells = json.loads((folder / NOTEBOOK).read_text(encoding="utf-8"))["cells"]
        source = next(c["source"] for c in cells if c.get("id") == "recipe")
    except (common.SuiteError, OSError, ValueError, KeyError, TypeError, StopIteration):
        return False  # no kernel of ours here, or not that cell: nothing to keep
    source = "".join(source) if isinstance(source, list) else source
    return source != "RECIPE = " + pprint.pformat(built, width=96, sort_dicts=True)


def stale_files(folder, files):
    return [name for name, text in files.items()
            if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text]


def write_files(folder, files):
    for name, text in files.items():
        common.atomic_write(folder / name, lambda f, text=text: f.write(text))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    out = Path(args.out)
    if args.recipe or args.name or args.kind:  # one kernel, from its recipe
        recipe = make_recipe(args, argv[cut + 1:], out)
        kernels = [(out / recipe["name"], recipe)]
        check_unique_ids(out, out / recipe["name"], recipe)
        check_replacing(out / recipe["name"], recipe, args.overwrite)
    else:  # every kernel in --out, from the recipe it was built with
        kernels = [(folder, check_recipe({**DEFAULTS, **read_json(folder / RECIPE_FILE, "recipe")}))
                   for folder in built_kernels(out)]
        if not kernels:
            raise common.SuiteError(f"--out {out}: no kernels to rebuild (build one with --recipe "
                                    "NAME or --name NAME --kind KIND)")
    edited = [folder for folder, _ in kernels if recipe_cell_edited(folder)]
    if edited and not args.check and not args.overwrite:
        raise common.SuiteError(f"{edited[0] / NOTEBOOK}: its RECIPE cell was edited by hand (it "
                                f"differs from {RECIPE_FILE}); give the change as build.py flags, "
                                "or discard it with --overwrite")
    stale = []
    for folder, recipe in kernels:
        files = render(recipe)
        changed = stale_files(folder, files)
        stale += [folder / name for name in changed]
        if not args.check:
            common.check_output_folder(folder, "--out")
            write_files(folder, files)
            ids = " and ".join(filter(None, kernel_ids(recipe)))
            print(f"{folder}: {'built' if changed else 'up to date'} ({ids}; {recipe['kind']}, "
                  f"{' '.join(recipe['trainer_args']) or 'default flags'}"
                  + (f"; test audio as files: {NO_INFERENCE_SERVER}" if recipe["kind"] ==
                     "predict" else "") + ")")
    if args.check:
        for path in stale:
            print(f"stale: {path}")
        if stale:
            print("rebuild with: python kernels/build.py", file=sys.stderr)
        return 1 if stale else 0
    return 0


cli = common.user_errors(main)  # the command line: a SuiteError is one line and an exit code


if __name__ == "__main__":
    sys.exit(cli())
