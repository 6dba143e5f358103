"""Hand-made audio features -> an MLP (and scikit-learn baselines on the same split).

    python train_mlp.py --extract ../shared/gtzan/genres --out data/features.csv
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
import sys
import time
from pathlib import Path

import torch

import common


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, epochs=100, batch_size=32,
                           data_help="features CSV (ours or the public GTZAN table)")
    p.set_defaults(data="data/features.csv", out=None)
    p.add_argument("--features", dest="data", help="same as --data")
    e = p.add_argument_group("feature extraction")
    e.add_argument("--extract", metavar="AUDIO_DIR", help="extract features of labeled audio "
                   "(one sub-folder per genre) to --out (default data/features.csv) and exit")
    e.add_argument("--feature-set", choices=list(common.FEATURE_SETS), default="standard",
                   help="standard: the GTZAN table's 57 columns; extended adds spectral contrast, "
                        "onset strength and tonnetz")
    e.add_argument("--labels", help="CSV id,label for a flat folder of audio (Kaggle style)")
    e.add_argument("--label-column", default="label", help="label column of the features CSV")
    m = p.add_argument_group("model")
    m.add_argument("--hidden", default="512:tanh,512:relu,512:tanh",
                   help="hidden layers as width:activation (relu, tanh, gelu, ...) (default: the "
                        "study's %(default)s)")
    m.add_argument("--dropout", type=float, default=0.0, help="dropout after each hidden layer")
    m.add_argument("--loss", choices=["ce", "hinge", "kl"], default="ce",
                   help="cross entropy, multi-class hinge (MultiMarginLoss) or KL divergence")
    m.add_argument("--smoothing", type=float, default=0.0,
                   help="label smoothing for ce and kl targets (default 0)")
    m.add_argument("--pca", type=float, default=0.95,
                   help="PCA keeping this share of the variance; 0 = no PCA (default 0.95)")
    m.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    m.add_argument("--drop-columns", default="", help="comma-separated feature columns to leave out")
    m.add_argument("--baseline", choices=["logreg", "svm"],
                   help="train this scikit-learn model instead (same split, features, run folder)")
    m.add_argument("--svm-c", type=float, default=10.0, help="C of the RBF SVM baseline")
    return p


def make_estimator(args):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    model = SVC(kernel="rbf", C=args.svm_c, gamma="scale") if args.baseline == "svm" \
        else LogisticRegression(max_iter=5000)
    steps = [StandardScaler()] + ([PCA(args.pca, random_state=args.seed)] if args.pca else [])
    return make_pipeline(*steps, model)


def extract(args):
    out = Path(args.out or "data/features.csv")
    if out.suffix != ".csv":
        raise common.SuiteError(f"--out {out}: with --extract, give the CSV file to write")
    start = time.time()
    n, errors = common.extract_features(args.extract, out, args.feature_set,
                                        args.workers or common.default_workers(), args.labels)
    print(f"{n} clips -> {out} ({len(errors)} bad) in {time.time() - start:.1f} s")
    return 0


@common.user_errors
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.extract:
        return extract(args)
    args.out = args.out or "runs"
    torch.set_num_threads(1)  # batches of 32 x 57 features: a second thread only waits (2x-30x slower)
    x, columns, clip_ids, labels = common.read_features_csv(args.data, args.label_column)
    drop = set(filter(None, args.drop_columns.split(",")))
    if drop - set(columns):
        raise common.SuiteError(f"--drop-columns: no column(s) {', '.join(sorted(drop - set(columns)))}")
    keep = [i for i, c in enumerate(columns) if c not in drop]
    x, columns = x[:, keep], [columns[i] for i in keep]
    classes = sorted(set(labels))
    label_index = [classes.index(label) for label in labels]
    dataset = common.ArrayDataset(torch.from_numpy(x), label_index, clip_ids)
    hidden = common.parse_hidden(args.hidden)
    feature_set = "extended" if set(common.EXTENDED_COLUMNS) & set(columns) else "standard"
    preprocess = {"type": "features", "columns": columns, "feature_set": feature_set}
    name = args.baseline or f"mlp-{args.loss}"

    def prepare(indices, device):
        train, val, test = (dataset.subset(indices[p]) for p in ("train", "val", "test"))
        if args.baseline:
            spec = {"kind": args.baseline, "preprocess": preprocess}
            return common.Job(None, spec, train, val, test, estimator=make_estimator(args))
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler
        rows = x[indices["train"]]
        scaler = StandardScaler().fit(rows)
        pca = PCA(args.pca, random_state=args.seed).fit(scaler.transform(rows)) if args.pca else None
        n_components = pca.n_components_ if pca else len(columns)
        spec = {"kind": "mlp", "n_inputs": len(columns), "n_components": int(n_components),
                "hidden": [list(h) for h in hidden], "n_classes": len(classes),
                "dropout": args.dropout, "preprocess": preprocess}
        model = common.build_model(spec)
        model.set_preprocessing(scaler, pca)
        criterion = common.make_criterion(args.loss, len(classes), args.smoothing)
        return common.Job(model, spec, train, val, test, criterion,
                          notes={"pca_components": int(n_components)})

    common.run_training(args, "mlp", name, clip_ids, label_index, classes,
                        Path(args.data).parent, prepare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
