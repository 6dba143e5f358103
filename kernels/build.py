"""Build Kaggle kernels from recipes: kernels/NAME/ with kernel.py (one self-contained script),
kernel-metadata.json and recipe.json (what it was built from).

    # a ready-made recipe (kernels/recipes/), with your user name and data
    python kernels/build.py --recipe specnet-mel --user alice \\
        --dataset andradaolteanu/gtzan-dataset-music-genre-classification
    # your own: a kind, the conversion, the sources, and the trainer's flags after --
    python kernels/build.py --name resnet50-ft --kind transfer --size 256 --user alice \\
        --competition genre-comp --weights-dataset alice/torchvision-weights \\
        -- --arch resnet50 --finetune --epochs 30
    python kernels/build.py                   # rebuild every kernel in kernels/ from its recipe
    python kernels/build.py --check           # exit 1 listing stale kernels; write nothing
    python kernels/kaggle_loop.py push NAME   # then push it (see kaggle_loop.py)

A recipe is checked when it is built: the trainer's own parser reads its flags, so a bad flag
fails here in one line, not an hour into a Kaggle session. kernel.py carries common.py, the
trainer, data_conversion.py for image kernels and kernels/kernel_main.py verbatim (executed into
modules of those names, so multiprocessing pickles by module name as with the real files) and
runs kernel_main.main(argv, RECIPE). Kaggle runs it with no arguments; see kernel_main.py for
what it does, and `python kernels/NAME/kernel.py --help` for local runs.

Kernels run with internet off (code competitions require it): a transfer kernel takes its
pretrained weights from an attached data set (--weights-dataset) holding torchvision's file for
the architecture (e.g. vgg16-397923af.pth) or PANNs' Cnn14_mAP=0.431.pth; a cnn14 kernel trains
on the audio itself, no conversion. GPU kernels ask for Kaggle's T4 ("NvidiaTeslaT4",
GPU T4 x2; --gpus 2 trains on both under torchrun); an MLP kernel gets a CPU session. Each
kernel attaches its own output (kernel_sources), so a version resumes the run its previous
version left. The output is deterministic: same sources and recipe, byte-identical files.
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
import common  # noqa: E402
import kernel_main  # noqa: E402  (the kernel's own code: which trainer flags it sets)

RECIPES_DIR = KERNELS_DIR / "recipes"  # the ready-made recipes
RECIPE_FILE = "recipe.json"
MACHINE_SHAPE = "NvidiaTeslaT4"
KINDS = ("cnn", "transfer", "mlp")  # the trainer of each: kernel_main.TRAINERS
DEFAULTS = {
    "user": "your-kaggle-username", "title": None, "datasets": [], "competition": None,
    "weights_dataset": None, "test_folder": "test", "sample_submission": "sample_submission.csv",
    "time_limit": "11h30m", "gpus": 1, "internet": False, "trainer_args": [],
}
IMAGE_CONVERSION = {"size": 512, "mel": 0, "segment_seconds": 0.0}  # data_conversion.py's


def build_parser():
    p = common.ArgumentParser(prog="build.py", description=__doc__)
    r = p.add_argument_group("recipe")
    r.add_argument("--recipe", metavar="NAME", help="start from a ready-made recipe: "
                   + ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.json"))))
    r.add_argument("--name", help="the kernel's folder and its run's name (default: the recipe's)")
    r.add_argument("--kind", choices=list(KINDS), help="cnn (train_cnn.py), transfer "
                   "(train_transfer.py) or mlp (train_mlp.py)")
    r.add_argument("--title", help="Kaggle title (default: Music Genre NAME); the id is its slug")
    c = p.add_argument_group("conversion (images for cnn and transfer kinds, features for mlp)")
    c.add_argument("--size", type=common.number(int, minimum=0), help="image side (0: native)")
    c.add_argument("--mel", type=common.number(int, minimum=0), help="log-mel bands (0: linear)")
    c.add_argument("--segment-seconds", type=common.number(float, minimum=0),
                   help="cut clips into segments of this many seconds (0: whole clips)")
    c.add_argument("--feature-set", choices=list(common.FEATURE_SETS),
                   help="mlp kind: the audio features to extract (default standard)")
    s = p.add_argument_group("sources and session")
    s.add_argument("--user", help=f"your Kaggle user name (default {DEFAULTS['user']})")
    s.add_argument("--dataset", action="append", metavar="OWNER/SLUG",
                   help="a data set to attach (repeatable), e.g. GTZAN's "
                        "andradaolteanu/gtzan-dataset-music-genre-classification")
    s.add_argument("--competition", metavar="SLUG", help="a competition to attach")
    s.add_argument("--weights-dataset", metavar="OWNER/SLUG", help="a data set holding the "
                   "pretrained weights file (torchvision's), for a transfer kernel offline")
    s.add_argument("--test-folder", help="name of the folder of audio to predict (default test)")
    s.add_argument("--sample-submission", help="name of the sample submission CSV beside it "
                                               "(default sample_submission.csv)")
    s.add_argument("--time-limit", help="stop training before this much of the session has "
                                        "passed (default 11h30m: Kaggle's GPU sessions end at 12 h)")
    s.add_argument("--gpus", type=common.number(int, minimum=1),
                   help="train on up to N GPUs under torchrun (default 1)")
    s.add_argument("--internet", action="store_true", help="let the kernel use the internet "
                   "(code competitions forbid it)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=str(KERNELS_DIR), help="folder of kernel folders "
                                                          "(default kernels/)")
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


def make_recipe(args, trainer_args):
    """The recipe of this build: a ready-made one (--recipe) or the given kind, with the flags
    given on top, then the defaults."""
    base = {}
    if args.recipe:
        path = RECIPES_DIR / f"{args.recipe}.json"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
            raise common.SuiteError(f"--recipe {args.recipe}: no such recipe; known: {known}")
        base = {"name": args.recipe, **read_json(path, "recipe")}
    elif not (args.name and args.kind):
        raise common.SuiteError("give --recipe NAME, or --name NAME and --kind KIND")
    given = {"name": args.name, "kind": args.kind, "title": args.title, "user": args.user,
             "datasets": args.dataset, "competition": args.competition,
             "weights_dataset": args.weights_dataset, "test_folder": args.test_folder,
             "sample_submission": args.sample_submission, "time_limit": args.time_limit,
             "gpus": args.gpus, "internet": args.internet or None,
             "trainer_args": base.get("trainer_args", []) + trainer_args or None}
    recipe = {**DEFAULTS, **base, **{k: v for k, v in given.items() if v is not None}}
    conversion = {"size": args.size, "mel": args.mel, "segment_seconds": args.segment_seconds}
    if args.feature_set and recipe["kind"] != "mlp":
        raise common.SuiteError("--feature-set: only an mlp kernel extracts features")
    if recipe["kind"] == "mlp":
        if any(v is not None for v in conversion.values()):
            raise common.SuiteError("--size, --mel, --segment-seconds: an mlp kernel reads "
                                    "features, not images")
        recipe["conversion"] = {"feature_set": args.feature_set or recipe.get(
            "conversion", {}).get("feature_set", "standard")}
    else:
        recipe["conversion"] = {**IMAGE_CONVERSION, **recipe.get("conversion", {}),
                                **{k: v for k, v in conversion.items() if v is not None}}
    return check_recipe(recipe)


def check_recipe(recipe):
    """Every field, and the trainer flags through the trainer's own parser: one line each."""
    if recipe.get("kind") not in KINDS:
        raise common.SuiteError(f"recipe {recipe.get('name')}: kind must be one of {', '.join(KINDS)}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,49}", recipe["name"]):
        raise common.SuiteError(f"--name {recipe['name']!r}: lowercase letters, digits and '-' "
                                "(it names the kernel folder and its run)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", recipe["user"]):
        raise common.SuiteError(f"--user {recipe['user']!r}: a Kaggle user name")
    for source in recipe["datasets"] + [recipe["weights_dataset"] or "a/b"]:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            raise common.SuiteError(f"--dataset {source!r}: expected OWNER/SLUG")
    if not 5 <= len(title(recipe)) <= 50:
        raise common.SuiteError(f"--title {title(recipe)!r}: Kaggle wants 5 to 50 characters")
    try:
        common.duration(recipe["time_limit"])
    except argparse.ArgumentTypeError as e:
        raise common.SuiteError(f"--time-limit: {e}") from None
    trainer = load_trainer(recipe["kind"])
    try:
        args = trainer.parse_args(recipe["trainer_args"], check_paths=False)
    except common.SuiteError as e:
        raise common.SuiteError(f"trainer flags ({' '.join(recipe['trainer_args'])}): {e}") from None
    defaults = trainer.parse_args([], check_paths=False)
    owned = [k for k in kernel_main.KERNEL_FLAGS if getattr(args, k, None) != getattr(defaults, k, None)]
    if owned:
        flag = "--data/--features" if owned[0] == "data" else f"--{owned[0].replace('_', '-')}"
        raise common.SuiteError(f"{flag}: set by the kernel (data, run folder, resume, "
                                "prediction, time limit), not a trainer flag of a recipe")
    if recipe["kind"] == "transfer" and args.weights in ("imagenet", "panns") and not (
            recipe["internet"] or recipe["weights_dataset"]):
        raise common.SuiteError(
            f"{'PANNs' if args.weights == 'panns' else 'ImageNet'} weights for {args.arch} cannot "
            "be downloaded with internet off (as code competitions require): attach a data set "
            "holding the weights file with --weights-dataset OWNER/SLUG, or build with "
            "--internet, or pass -- --weights none")
    return recipe


def load_trainer(kind):
    import importlib
    return importlib.import_module(kernel_main.TRAINERS[kind])


def title(recipe):
    return recipe["title"] or f"Music Genre {recipe['name'].replace('-', ' ').title()}"


def metadata(recipe):
    from slugify import slugify  # python-slugify, as the kaggle package links title and id
    gpu = recipe["kind"] != "mlp"
    datasets = list(recipe["datasets"])
    if recipe["weights_dataset"]:
        datasets.append(recipe["weights_dataset"])
    kernel_id = f"{recipe['user']}/{slugify(title(recipe))}"
    return {
        "id": kernel_id, "title": title(recipe), "code_file": "kernel.py",
        "language": "python", "kernel_type": "script", "is_private": True,
        "enable_gpu": gpu, **({"machine_shape": MACHINE_SHAPE} if gpu else {}),
        "enable_internet": recipe["internet"], "dataset_sources": datasets,
        "competition_sources": [recipe["competition"]] if recipe["competition"] else [],
        "kernel_sources": [kernel_id],  # its own previous output: a version resumes from it
    }


# ----------------------------------------------------------------------------------------------
# kernel.py: a short bootstrap around the embedded sources

KERNEL_TEMPLATE = '''\
r"""{{TITLE}} (Kaggle script, kernel {{NAME}}): generated by kernels/build.py from
{{SOURCE_FILES}} and the recipe below; do not edit: change those and run
`python kernels/build.py`.

With no arguments (as on Kaggle) it finds the data under /kaggle/input, resumes the run of its
previous version when that output is attached, {{STEPS}} in /kaggle/temp,
trains into /kaggle/working/runs/{{NAME}}/ before the time limit, predicts the test audio and
writes /kaggle/working/submission.csv. $KAGGLE_ROOT moves /kaggle. Locally:

    python kernels/{{NAME}}/kernel.py --train DIR --test DIR --temp T --working W -- --epochs 2

Arguments after `--` (and any this script does not know) go to {{TRAINER}}.py after the
recipe's; $KERNEL_ARGS adds arguments too. `--help` lists the kernel's own.
"""
import linecache
import sys
import types

RECIPE = {{RECIPE}}


def install_modules():
    """Turn the embedded sources into modules. Each is registered in sys.modules before its
    code runs, so `import common` and multiprocessing (which pickles worker functions by
    module name) find it; linecache gets the text so tracebacks show the lines."""
    for name, source in SOURCES:
        filename = f"{name}.py"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module = types.ModuleType(name)
        module.__file__ = filename
        sys.modules[name] = module
        exec(compile(source, filename, "exec"), module.__dict__)


# ----------------------------------------------------------------------------------------------
# Embedded sources, verbatim (kernels/build.py checks they round-trip exactly)

{{EMBEDDED}}

if __name__ == "__main__":
    install_modules()
    sys.exit(sys.modules["kernel_main"].main(None, RECIPE))
'''


def embed(name, source):
    """`NAME_PY = r'''...'''` holding source exactly; repr() when a raw string cannot."""
    variable = f"{name.upper()}_PY"
    for quote in ("'''", '"""'):
        literal = f"r{quote}{source}{quote}"
        if quote not in source and not source.endswith("\\"):
            try:
                if ast.literal_eval(literal) == source:
                    return f"{variable} = {literal}\n"
            except SyntaxError:
                pass
    return f"{variable} = {source!r}\n"


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
    visit(kernel_main.TRAINERS[kind])
    visit("kernel_main")
    return {name: module_path(name).read_text(encoding="utf-8") for name in order}


def kernel_script(recipe):
    trainer = kernel_main.TRAINERS[recipe["kind"]]
    sources = module_sources(recipe["kind"])
    embedded = "".join(embed(m, text) + "\n" for m, text in sources.items())
    embedded += "SOURCES = [" + ", ".join(f'("{m}", {m.upper()}_PY)' for m in sources) + "]"
    steps = "extracts the features of the training audio" if recipe["kind"] == "mlp" else \
        "converts the training audio to spectrogram images"
    values = {
        "TITLE": title(recipe), "NAME": recipe["name"], "TRAINER": trainer, "STEPS": steps,
        "SOURCE_FILES": ", ".join(f"{m}.py" for m in sources if m != "kernel_main")
                        + " and kernels/kernel_main.py",
        "RECIPE": pprint.pformat(recipe, width=96, sort_dicts=True), "EMBEDDED": embedded,
    }
    text = KERNEL_TEMPLATE
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    # Only now the sources are in: they may contain anything, including "{{".
    leftover = re.findall(r"\{\{[A-Z_]+\}\}", text.split("# Embedded sources")[0])
    if leftover:
        raise RuntimeError(f"template placeholders without a value: {leftover}")
    return text


def render(recipe):
    """{file name: text} of one kernel folder."""
    return {"kernel.py": kernel_script(recipe),
            "kernel-metadata.json": json.dumps(metadata(recipe), indent=2) + "\n",
            RECIPE_FILE: json.dumps(recipe, indent=2, sort_keys=True) + "\n"}


# ----------------------------------------------------------------------------------------------
# Write, rebuild, check

def built_kernels(out):
    """The kernel folders in `out` (those with a recipe.json)."""
    return sorted(p.parent for p in Path(out).glob(f"*/{RECIPE_FILE}"))


def stale_files(folder, files):
    return [name for name, text in files.items()
            if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text]


def write_files(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        common.atomic_write(folder / name, lambda f, text=text: f.write(text))


@common.user_errors
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    out = Path(args.out)
    if args.recipe or args.name or args.kind:  # one kernel, from its recipe
        recipe = make_recipe(args, argv[cut + 1:])
        kernels = [(out / recipe["name"], recipe)]
    else:  # every kernel in --out, from the recipe it was built with
        kernels = [(folder, check_recipe({**DEFAULTS, **read_json(folder / RECIPE_FILE, "recipe")}))
                   for folder in built_kernels(out)]
        if not kernels:
            raise common.SuiteError(f"--out {out}: no kernels to rebuild (build one with --recipe "
                                    "NAME or --name NAME --kind KIND)")
    stale = []
    for folder, recipe in kernels:
        files = render(recipe)
        changed = stale_files(folder, files)
        stale += [folder / name for name in changed]
        if not args.check:
            common.check_output_folder(folder, "--out")
            write_files(folder, files)
            print(f"{folder}: {'built' if changed else 'up to date'} ({metadata(recipe)['id']}, "
                  f"{recipe['kind']}, {' '.join(recipe['trainer_args']) or 'default flags'})")
    if args.check:
        for path in stale:
            print(f"stale: {path}")
        if stale:
            print("rebuild with: python kernels/build.py", file=sys.stderr)
        return 1 if stale else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
