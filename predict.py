"""Predict the genre of every audio file in a folder with a saved model; write submission.csv.

    python predict.py runs/NAME/model.pt data/test
    python predict.py runs/NAME data/test --sample-submission sample_submission.csv
    python predict.py runs/NAME/model.pt data/test --submit COMPETITION -m "try 2" [--dry-run]

Each file is converted (or its features extracted, or its audio windowed) exactly as the model's
training data was, with the settings stored in the model; segments vote per clip. Every file
gets a row: an unreadable one gets the training set's most common class, with a warning and a
line in submission_errors.csv. RUN/prediction.json records what was predicted and its time per
clip (what compare.py shows).

The functions are the suite's prediction library: the trainers' --predict and the Kaggle kernels
call predict_and_submit().
"""
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import audio
import common
import kaggle_client
import models
import runs
import training


def options(args):
    """predict_and_submit()'s keyword arguments from a trainer's flags."""
    return {"workers": args.workers, "id_col": args.id_col, "label_col": args.label_col,
            "sample_submission": args.sample_submission, "submit": args.submit,
            "message": args.message, "dry_run": args.dry_run}


# ----------------------------------------------------------------------------------------------
# Audio file -> the model's input, exactly as its training data was made (model.pt's spec)

def image_inputs(images, preprocess):
    """A clip's image levels (audio.clip_images) -> the model's input (n, C, img, img) uint8, as
    training decoded its PNGs: the colormap's RGB (or the levels), resized to img_size."""
    from PIL import Image
    size, out = preprocess["img_size"], []
    for levels in images:
        if preprocess.get("channels", "rgb") == "levels":
            image = Image.fromarray(levels)
        else:
            image = Image.fromarray(np.take(audio.colormap_lut(preprocess["cmap"]), levels, axis=0))
        if size and image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        array = np.asarray(image)
        out.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return np.stack(out)


def image_clip_inputs(path, preprocess):
    """One audio file -> its spectrogram images as the model was trained on them."""
    return image_inputs(audio.clip_images(path, {**audio.CONVERSION_DEFAULTS, **preprocess}), preprocess)


def feature_clip_inputs(path, preprocess):
    """One audio file -> its row of features, the columns the model was trained on."""
    row = audio.audio_features(path, preprocess.get("feature_set", "standard"))
    return np.array([[row[c] for c in preprocess["columns"]]], np.float32)


def audio_clip_inputs(path, preprocess):
    """One audio file -> its waveform windows (CNN14), as the model was trained on them."""
    return audio.audio_windows(path, preprocess["sr"], preprocess["clip_seconds"])


# Input kinds: model spec["preprocess"]["type"] -> (audio file -> the model's input batch, the
# librosa parts its workers use).
INPUT_KINDS = {"image": (image_clip_inputs, common.CONVERSION_MODULES),
               "features": (feature_clip_inputs, common.FEATURE_MODULES),
               "audio": (audio_clip_inputs, common.CONVERSION_MODULES)}


def model_inputs(job):
    """Worker: one audio file -> (path, model input array or None, error, seconds it took)."""
    path, preprocess = job
    start = time.time()
    try:
        return path, INPUT_KINDS[preprocess["type"]][0](path, preprocess), None, time.time() - start
    except Exception as e:
        return path, None, common.file_failure(e), 0.0


# ----------------------------------------------------------------------------------------------
# A saved model -> labels for a folder of audio -> submission.csv (-> Kaggle)

def cut_short(path, error=None):
    """Whether a model file that does not load starts as ours do and is damaged: a zip (torch.save)
    without its end or with a bad member, or a pickle (joblib) that ends too soon."""
    import pickle
    import zipfile
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            return True
        try:
            with zipfile.ZipFile(path) as z:
                return z.testzip() is not None
        except (zipfile.BadZipFile, OSError, EOFError):
            return True
    return head[:1] == b"\x80" and (isinstance(error, (EOFError, pickle.UnpicklingError))
                                    or "EOF" in str(error))  # numpy's arrays in joblib say so


def load_model(path, device="cpu"):
    """(the network in eval mode on device, the saved dict) of a model.pt."""
    path = Path(path)
    if not path.is_file():
        raise common.SuiteError(f"{path}: no such model file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if cut_short(path, e):
            raise common.SuiteError(f"{path}: damaged or cut short (a zip as torch.save writes, "
                                    "that does not read whole); copy it again, or train again") from None
        raise common.SuiteError(f"{path}: not a model.pt of this suite ({type(e).__name__})") from None
    try:
        model = models.build_model(checkpoint["spec"])
        model.load_state_dict(checkpoint["state_dict"])
        n_outputs, classes = checkpoint["spec"]["n_classes"], checkpoint["classes"]
    except common.SuiteError:
        raise
    except Exception as e:  # torch.load raises many kinds on a foreign or damaged file
        raise common.SuiteError(f"{path}: not a model.pt of this suite ({type(e).__name__})") from None
    if len(classes) != n_outputs:
        raise common.SuiteError(f"{path}: lists {len(classes)} classes for {n_outputs} outputs; the "
                         "file is damaged or was edited")
    return model.to(device).eval(), checkpoint


def load_predictor(path, device="cpu"):
    """(function: model inputs -> class scores, the saved dict) for a run's model.pt (a zip, as
    torch.save writes) or a scikit-learn baseline's model.joblib."""
    import zipfile
    path = Path(path)
    if not path.is_file():
        raise common.SuiteError(f"{path}: no such model file")
    if zipfile.is_zipfile(path) or cut_short(path):
        model, saved = load_model(path, device)
        autocast, _ = training.amp_tools(device)

        @torch.no_grad()
        def predict(x):
            with autocast():
                return model(torch.from_numpy(x).to(device)).float().cpu().numpy()
    else:
        import joblib
        try:
            saved = joblib.load(path)
            ours = {"estimator", "spec", "classes"} <= set(saved) and "preprocess" in saved["spec"]
        except Exception as e:
            if cut_short(path, e):
                raise common.SuiteError(f"{path}: damaged or cut short (a pickle as joblib writes, "
                                        "that ends too soon); copy it again, or train again") from None
            ours = False
        if not ours:
            raise common.SuiteError(f"{path}: not a model.pt or model.joblib of this suite")
        predict = functools.partial(models.estimator_scores, saved["estimator"])
    preprocess = saved["spec"]["preprocess"]
    if preprocess.get("type") not in INPUT_KINDS:
        raise common.SuiteError(f"{path}: unknown input kind {preprocess.get('type')!r}; known: "
                         f"{', '.join(INPUT_KINDS)}")
    if preprocess["type"] == "features":
        unknown = set(preprocess["columns"]) - set(audio.FEATURE_SETS[preprocess.get("feature_set", "standard")])
        if unknown:
            raise common.SuiteError(f"{path}: trained on columns no audio file gives ({sorted(unknown)[0]}, "
                             f"...): it cannot predict from audio")
    return predict, saved


@dataclass
class Predictions:
    labels: dict            # test file name -> class (unreadable files: the fallback class)
    bad: list               # (file name, reason) of the unreadable files
    fallback: str           # the class unreadable files get
    seconds_per_clip: float  # audio file to label, wall clock, readable files
    preprocess_seconds_per_clip: float  # decoding + spectrogram or features, one process
    model_seconds_per_clip: float       # the model alone
    preprocess: dict        # how audio became the model's input (model.pt's spec)
    caveats: list           # what the model's training makes of its labels (reports.caveats)


def predict_files(model_path, files, device="cpu", workers=1, batch_size=32):
    """Label audio files; an unreadable one gets the model's fallback class (the training
    set's most common) with a warning, so a submission has every id."""
    predict, saved = load_predictor(model_path, device)
    classes, preprocess = saved["classes"], saved["spec"]["preprocess"]
    fallback = saved.get("fallback_class", classes[0])
    warm = INPUT_KINDS[preprocess["type"]][1]
    common.warm_imports(warm)  # librosa imports lazily: not part of a clip's time
    start = time.time()
    labels, bad, preprocess_seconds, model_seconds = {}, [], 0.0, 0.0
    for path, inputs, error, seconds in common.parallel_map(model_inputs, [(p, preprocess) for p in files],
                                                     workers, "predict", warm):
        if error:
            print(f"warning: {path}: {error}; labelled {fallback!r} (the fallback)", file=sys.stderr)
            bad.append((path.name, error))
            labels[path.name] = fallback
            continue
        model_start = time.time()
        scores = np.concatenate([predict(inputs[i:i + batch_size])
                                 for i in range(0, len(inputs), batch_size)])
        model_seconds += time.time() - model_start
        preprocess_seconds += seconds
        labels[path.name] = classes[int(scores.mean(0).argmax())]  # segments vote
    if len(bad) == len(files):
        raise common.SuiteError(f"{Path(files[0]).parent}: no file could be read ({len(bad)} bad)")
    n = len(files) - len(bad)
    return Predictions(labels, bad, fallback, (time.time() - start) / n, preprocess_seconds / n,
                       model_seconds / n, preprocess, saved.get("caveats", []))


def submission_table(labels, fallback, id_col="id", label_col="class", sample=None):
    """(header, rows) of submission.csv: every test file once by file name; with a sample
    submission, its column names and its ids in its order (matched to the files without
    extension or zero padding), an id without a file getting the fallback class."""
    if sample is None:
        return [id_col, label_col], sorted(labels.items())
    id_col, label_col, ids = runs.read_sample_submission(sample)
    by_id = {audio.normalize_id(name): label for name, label in labels.items()}
    rows = [(i, by_id.get(audio.normalize_id(i), fallback)) for i in ids]
    missing = [i for i in ids if audio.normalize_id(i) not in by_id]
    extra = sorted(set(by_id) - {audio.normalize_id(i) for i in ids})
    if missing:
        print(f"warning: {len(missing)} ids of {sample} have no audio file; labelled "
              f"{fallback!r} (first: {missing[0]})", file=sys.stderr)
    if extra:
        print(f"warning: {len(extra)} test files are not in {sample} and are left out (first: "
              f"{extra[0]})", file=sys.stderr)
    return [id_col, label_col], rows


def record_path(model_path, csv_path):
    """Where a prediction is recorded: the model's run folder (compare.py reads it there,
    wherever the CSV went), or beside the CSV when that folder is not ours to write (a model in
    a Kaggle input)."""
    folder = Path(model_path).parent
    return folder / "prediction.json" if common.writable(folder) else \
        Path(csv_path).with_name("prediction.json")


def predict_and_submit(model_path, audio_dir, *, output=None, device="cpu", workers=1,
                       id_col="id", label_col="class", sample_submission=None, submit=None,
                       message=None, dry_run=False):
    """Predict audio_dir, write submission.csv (default: beside the model) and the record of the
    run's last prediction (prediction.json: what was predicted, how long it took per clip), then
    --submit it. Every input is checked before the model is loaded."""
    out = common.check_output_file(output or Path(model_path).parent / "submission.csv",
                                   "--output")
    if submit and not dry_run:
        kaggle_client.kaggle_api()  # credentials now, not after predicting
    files = audio.list_audio(audio_dir)
    if sample_submission:
        runs.check_sample_submission(sample_submission, files)
    result = predict_files(model_path, files, device, workers)
    for caveat in result.caveats:
        print(f"note: this model {caveat}", file=sys.stderr)
    header, rows = submission_table(result.labels, result.fallback, id_col, label_col,
                                    sample_submission)
    common.write_csv(out, header, rows)
    common.write_json(record_path(model_path, out), {
        "model": str(model_path), "audio": str(audio_dir), "files": len(files),
        "unreadable": len(result.bad), "workers": workers, "device": str(device),
        "seconds_per_clip": result.seconds_per_clip,
        "preprocess_seconds_per_clip": result.preprocess_seconds_per_clip,
        "model_seconds_per_clip": result.model_seconds_per_clip,
        "preprocess": result.preprocess})
    print(f"wrote {out}: {len(rows)} rows, {result.seconds_per_clip:.3f} s per clip (audio to "
          f"label, {workers} worker{'s' if workers > 1 else ''})")
    if result.bad:
        print(f"{len(result.bad)} unreadable files labelled {result.fallback!r} (the fallback): "
              f"{out.stem}_errors.csv")
        common.write_csv(out.with_name(out.stem + "_errors.csv"), ["file", "reason"], result.bad)
    if submit:
        kaggle_client.kaggle_submit(out, submit, kaggle_client.submission_message(message, Path(model_path).parent.name),
                      dry_run)
    return out, result


# ----------------------------------------------------------------------------------------------
# The command

def build_parser():
    p = common.ArgumentParser(prog="predict.py", description=__doc__)
    p.add_argument("model", help="a run's model.pt (or model.joblib of a scikit-learn baseline), "
                                 "or the run folder holding it")
    p.add_argument("audio_dir", help="flat folder of audio files (e.g. a Kaggle test set)")
    p.add_argument("--output", help="CSV to write (default: submission.csv beside the model)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", type=common.bounded(int, minimum=1), default=common.default_workers(),
                   help="processes that decode the audio (default: the %(default)s cores)")
    runs.add_submission_args(p)
    return p


def model_file(path):
    """A model file, or the run folder holding one (taken), or one line saying which file."""
    path = Path(path)
    if path.is_dir():
        if runs.model_in(path):
            return runs.model_in(path)
        folds = sorted(path.glob("fold*/model.*"))
        if folds:
            raise common.SuiteError(f"{path}: a K-fold run, a model per fold: give one, e.g. "
                                    f"{folds[0]}")
        if any(audio.is_audio(p) for p in path.iterdir()):
            raise common.SuiteError(f"{path}: a folder of audio, not a model: predict.py MODEL "
                                    "AUDIO_DIR (the model first)")
        raise common.SuiteError(f"{path}: no {' or '.join(runs.MODEL_FILES)} in it")
    return path


def main(argv=None):
    args = build_parser().parse_args(argv)
    models.check_torchvision()
    if Path(args.audio_dir).is_file() and Path(args.model).is_dir():
        raise common.SuiteError(f"{args.model} {args.audio_dir}: the other way round? predict.py "
                                "MODEL AUDIO_DIR")
    predict_and_submit(model_file(args.model), args.audio_dir, output=args.output,
                       device=training.pick_device(args.device), workers=args.workers,
                       id_col=args.id_col, label_col=args.label_col,
                       sample_submission=args.sample_submission, submit=args.submit,
                       message=args.message, dry_run=args.dry_run)
    return 0


cli = common.user_errors(main)  # the command line: a SuiteError is one line and an exit code


if __name__ == "__main__":
    sys.exit(cli())
