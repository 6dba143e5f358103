"""Hand-made audio features -> an MLP (and scikit-learn baselines on the same split).

    python data_conversion.py data/demo --features data/features.csv       # extract first
    python train_mlp.py --features data/features.csv                       # the study's MLP
    python train_mlp.py --features features_30_sec.csv --folds 5 --loss hinge
    python train_mlp.py --features features_30_sec.csv --folds 5 --baseline svm

Features: the columns of the public GTZAN table (MFCC, chroma, spectral centroid / bandwidth /
roll-off, RMS, zero-crossing rate, harmonic and percussive parts, tempo: means and variances), so
our CSV and Kaggle's features_30_sec.csv are interchangeable. StandardScaler and PCA (--pca,
share of variance kept) are fitted on the training part only and stored inside model.pt.
The split is the shared clip-level split (split.json beside the CSV), so the MLP is tested on the
same clips as the CNNs when they see the same clips.
"""
import argparse
import contextlib
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import audio
import common
import data
import models
import predict
import reports
import runs
import training


def build_parser():
    bounded = common.bounded
    p = common.ArgumentParser(prog="train_mlp.py", description=__doc__)
    runs.add_common_args(p, epochs=100, batch_size=32, data_default="data/features.csv",
                         data_help="features CSV (ours or the public GTZAN table)")
    p.add_argument("--features", dest="data", help="the features CSV (same as --data): "
                   "python data_conversion.py AUDIO_DIR --features CSV makes one")
    p.add_argument("--label-column", default="label", help="label column of the features CSV")
    p.add_argument("--extract", help=argparse.SUPPRESS)  # moved to data_conversion.py
    m = p.add_argument_group("model")
    m.add_argument("--hidden", default="512:tanh,512:relu,512:tanh",
                   help="hidden layers as width:activation (relu, tanh, gelu, ...) (default: the "
                        "study's %(default)s)")
    m.add_argument("--dropout", type=bounded(float, minimum=0, below=1), default=0.0,
                   help="dropout after each hidden layer (default 0)")
    m.add_argument("--loss", choices=["ce", "hinge", "kl"], default="ce",
                   help="cross entropy, multi-class hinge (MultiMarginLoss) or KL divergence")
    m.add_argument("--smoothing", type=bounded(float, minimum=0, below=1), default=0.0,
                   help="label smoothing for ce and kl targets (default 0)")
    m.add_argument("--pca", type=bounded(float, minimum=0, below=1), default=0.95,
                   help="PCA keeping this share of the variance; 0 = no PCA (default 0.95)")
    m.add_argument("--drop-columns", default="", help="comma-separated feature columns to leave out")
    m.add_argument("--baseline", choices=["logreg", "svm"],
                   help="train this scikit-learn model instead (same split, features, run folder)")
    m.add_argument("--svm-c", type=bounded(float, above=0), default=10.0,
                   help="C of the RBF SVM baseline (default %(default)s)")
    return p


# ----------------------------------------------------------------------------------------------
# Feature tables: ours (data_conversion.py --features) or the public one

def read_features_csv(path, label_col="label"):
    """(features float32 array, columns, clip ids, labels) from our CSV or the public one.
    Columns that are not numbers (besides filename and the label) are left out, with a word."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header, *rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
        raise common.SuiteError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    missing = [c for c in ("filename", label_col) if c not in header]
    if missing:
        raise common.SuiteError(f"{path}: missing column(s) {', '.join(missing)} "
                                f"(has {', '.join(header[:5])}, ...)")
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows or any(len(r) != len(header) for r in rows):
        raise common.SuiteError(f"{path}: no rows, or rows with a different number of cells "
                                "than the header")
    columns = list(zip(*rows))

    def as_number(cell):
        try:
            return float(cell)
        except ValueError:
            return None if cell.strip() else float("nan")
    numeric, values, text = [], [], []
    for name, cells in zip(header, columns):
        if name in ("filename", label_col):
            continue
        numbers = [as_number(c) for c in cells]
        if sum(n is None for n in numbers) > len(numbers) // 2:
            text.append(name)
            continue
        numeric.append(name)
        values.append([float("nan") if n is None else n for n in numbers])
    if text:
        print(f"warning: {path}: column(s) {', '.join(text)} are not numbers and are left out",
              file=sys.stderr)
    if not numeric:
        raise common.SuiteError(f"{path}: no numeric feature columns")
    x = np.array(values, dtype=np.float64).T
    labels = [c.strip() for c in columns[header.index(label_col)]]
    bad = [c for c, col in zip(numeric, x.T) if not np.all(np.isfinite(col))]
    if bad or not all(labels):
        n_rows = int((~np.isfinite(x)).any(axis=1).sum()) + sum(not label for label in labels)
        raise common.SuiteError(f"{path}: NaN, empty or non-numeric values in column(s) "
                                f"{', '.join((bad or [label_col])[:5])} ({n_rows} rows); fix or "
                                "drop them")
    if len(set(labels)) < 2:
        raise common.SuiteError(f"{path}: one class ({labels[0]}) in column {label_col}; a "
                                "classifier needs at least two")
    clip_ids = [feature_clip_id(name) for name in columns[header.index("filename")]]
    return x.astype(np.float32), numeric, clip_ids, labels


def feature_clip_id(filename):
    """'blues.00000.wav' -> 'blues.00000'; GTZAN's 3-second table 'blues.00000.3.wav' too."""
    stem = audio.clip_id_of(filename)
    head, _, tail = stem.rpartition(".")
    return head if tail.isdigit() and head.rpartition(".")[2].isdigit() else stem


# ----------------------------------------------------------------------------------------------
# Models: the MLP, its losses, and scikit-learn baselines beside it

def parse_args(argv, check_paths=True):
    """Every training flag, checked (and every path)."""
    return runs.parse_run_args(build_parser(), argv, data_is_file=True, data_flag="--features",
                               check_model=check_model, paths=check_paths)


MLP_FLAGS = ("hidden", "dropout", "loss", "smoothing", "epochs", "batch_size", "lr",
             "weight_decay", "schedule", "patience", "min_epochs", "mixup")  # what --baseline ignores


def check_model(args):
    """--hidden is well formed, and no flag is given that the chosen model ignores (before any
    work)."""
    if args.extract:
        raise common.SuiteError(f"--extract moved: python data_conversion.py {args.extract} "
                                "--features CSV extracts the features, then train_mlp.py "
                                "--features CSV trains on them")
    parser = build_parser()
    if args.baseline:
        common.refuse_unused(parser, args, MLP_FLAGS, f"the {args.baseline} baseline does not "
                           "use it (it is a flag of the MLP)")
    if args.baseline != "svm":
        common.refuse_unused(parser, args, ("svm_c",), "a flag of --baseline svm")
    parse_hidden(args.hidden)


def parse_hidden(text):
    """'512:tanh,256:relu' -> [(512, 'tanh'), (256, 'relu')]."""
    layers = []
    for part in filter(None, text.split(",")):
        width, _, act = part.partition(":")
        act = act or "relu"
        if not width.strip().isdigit() or int(width) < 1 or act not in models.ACTIVATIONS:
            raise common.SuiteError(f"--hidden {text!r}: expected width:activation items, widths >= 1, "
                             f"activations {', '.join(models.ACTIVATIONS)}")
        layers.append((int(width), act))
    if not layers:
        raise common.SuiteError("--hidden needs at least one layer")
    return layers


def make_criterion(name, n_classes, smoothing=0.0):
    """Cross entropy, multi-class hinge, or KL divergence to (smoothed) one-hot targets."""
    if name == "ce":
        return torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
    if name == "hinge":
        return torch.nn.MultiMarginLoss()
    if name == "kl":
        kl = torch.nn.KLDivLoss(reduction="batchmean")

        def kl_loss(logits, y):
            target = torch.full_like(logits, smoothing / n_classes, dtype=torch.float32)
            target.scatter_(1, y[:, None], 1 - smoothing + smoothing / n_classes)
            return kl(torch.log_softmax(logits.float(), 1), target)
        return kl_loss
    raise common.SuiteError(f"unknown --loss {name!r}: ce, hinge or kl")


@contextlib.contextmanager
def torch_threads(n):
    """Run a block with n torch threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_estimator(args):
    model = SVC(kernel="rbf", C=args.svm_c, gamma="scale") if args.baseline == "svm" \
        else LogisticRegression(max_iter=5000)
    steps = [StandardScaler()] + ([PCA(args.pca, random_state=args.seed)] if args.pca else [])
    return make_pipeline(*steps, model)


def fit_baseline(estimator, train, test):
    """A scikit-learn pipeline fitted on the training rows (no validation: nothing to stop
    early); returns its seconds and its scores on the test rows, clip probabilities when it
    has them (logistic regression; the SVM's scores stand in through softmax)."""
    def rows(part_set):
        return part_set.inputs(torch.arange(len(part_set))).numpy()
    start = time.time()
    estimator.fit(rows(train), train.labels)
    fit_seconds = time.time() - start
    start = time.time()
    tested = reports.Tested(models.estimator_scores(estimator, rows(test)), time.time() - start)
    if hasattr(estimator, "predict_proba"):
        tested.probabilities = training.clip_vote(estimator.predict_proba(rows(test)), test.labels,
                                                  test.clip_ids)[1]
    return fit_seconds, tested


def feature_set_of(path, columns):
    """The feature set the CSV was extracted with (recorded beside it by data_conversion.py
    --features), else the public table's (standard). Columns the set lacks, or has and the CSV
    lacks, are named: the model trains on the CSV's columns, and predicts audio only when it can
    compute them all."""
    feature_set = (audio.feature_record(path) or {}).get("feature_set", "standard")
    expected = audio.FEATURE_SETS[feature_set]
    unknown = [c for c in columns if c not in expected]
    missing = [c for c in expected if c not in columns]
    if unknown:
        print(f"warning: {path}: {len(unknown)} column(s) are not {feature_set} features (e.g. "
              f"{unknown[0]}): the model cannot predict from audio files", file=sys.stderr)
    elif missing:
        print(f"warning: {path}: {len(missing)} {feature_set} feature column(s) missing (e.g. "
              f"{missing[0]}); training on the other {len(columns)}", file=sys.stderr)
    return feature_set


def main(argv=None, started=None):
    """The command; started: the time.time() --time-limit counts from (default: now)."""
    started = started or time.time()
    args = parse_args(argv)  # every flag and path checked
    hidden = parse_hidden(args.hidden)

    # data: the feature table, minus the columns left out
    x, columns, clip_ids, labels = read_features_csv(args.data, args.label_column)
    drop = set(filter(None, args.drop_columns.split(",")))
    if drop - set(columns):
        raise common.SuiteError(f"--drop-columns: no column(s) {', '.join(sorted(drop - set(columns)))}")
    keep = [i for i, c in enumerate(columns) if c not in drop]
    x, columns = x[:, keep], [columns[i] for i in keep]
    preprocess = {"type": "features", "columns": columns,
                  "feature_set": feature_set_of(args.data, columns + sorted(drop))}
    classes = sorted(set(labels))
    label_index = [classes.index(label) for label in labels]
    dataset = data.ArrayDataset(torch.from_numpy(x), label_index, clip_ids)
    name = args.baseline or f"mlp-{args.loss}"

    # processes (torchrun's, or this one), device, and the clips each part trains and tests on
    dist = training.Dist.from_env()
    device = dist.setup(training.pick_device(args.device))
    splits = data.resolve_splits(args, clip_ids, label_index, Path(args.data).parent, dist.log)
    # batches of 32 x 57 features: a second thread only waits (measured 2x-30x slower)
    with torch_threads(1), \
            runs.start_run(args, argv, "train_mlp.py", name, classes=classes, splits=splits,
                           clip_ids=clip_ids, device=device, dist=dist, started=started) as run:
        for part in run.parts():  # the split, or each of the --folds not finished before
            training.seed_everything(args.seed)  # each part starts as an uninterrupted run's did
            train, val, test = data.split_parts(dataset, part.indices)
            if args.baseline:
                estimator = make_estimator(args)
                fit_seconds, tested = fit_baseline(estimator, train, test)
                report = reports.test_report(part, name, classes, tested, None, train=train,
                                             val=val, test=test, prepare_seconds=fit_seconds)
                runs.save(part, estimator, {"kind": args.baseline, "preprocess": preprocess},
                          report, train=train)
                continue
            # scaler and PCA fitted on the training rows only, stored inside the model
            train_rows = x[part.indices["train"]]
            scaler = StandardScaler().fit(train_rows)
            pca = PCA(args.pca, random_state=args.seed).fit(scaler.transform(train_rows)) \
                if args.pca else None
            n_components = pca.n_components_ if pca else len(columns)
            spec = {"kind": "mlp", "n_inputs": len(columns), "n_components": int(n_components),
                    "hidden": [list(h) for h in hidden], "n_classes": len(classes),
                    "dropout": args.dropout, "preprocess": preprocess}
            model = models.build_model(spec)
            model.set_preprocessing(scaler, pca)
            result = training.fit(model, train, val,
                                  criterion=make_criterion(args.loss, len(classes), args.smoothing),
                                  device=device, dist=dist, checkpoint=part.checkpoint,
                                  deadline=run.deadline, **training.fit_options(args))
            tested = reports.test_model(model, test, device=device, dist=dist,
                                        batch_size=args.batch_size)
            report = reports.test_report(part, name, classes, tested, result, train=train, val=val,
                                         test=test, notes={"pca_components": int(n_components)})
            runs.save(part, model, spec, report, train=train)
            if not result.complete:
                break  # stopped by --time-limit: the other parts wait for --resume
        runs.summarize_folds(run)
    if args.predict and dist.main:
        predict.predict_and_submit(run.model_file, args.predict, device=device,
                                   **predict.options(args))
    return 0


cli = common.user_errors(main)  # the command line: a SuiteError is one line and an exit code


if __name__ == "__main__":
    sys.exit(cli())
