"""A part's test report: the model tested, its figures, the per-class report and confusion as
text, the curves and confusion charts, and the caveats a reader must see (small parts, synthetic
data, random weights).

Used by runs.py (saving a part), compare.py and predict.py.
"""

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio import CONVERSION_FILE, feature_record
from common import atomic_write
from data import split_hash, split_label
from training import Dist, amp_tools, make_loader, predict_logits, test_metrics


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(path, fig):
    """Write fig as a PNG, whole or not at all, and free it (its axes stay readable)."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    pyplot().close(fig)


def plot_curves(path, history, metrics):
    """Loss and accuracy by epoch, titled with the clips validation was measured on."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.3))
    fig.suptitle(f"{metrics['model']}: validation on {metrics['n_val']} clips, "
                 f"{metrics.get('split') or 'split not recorded'}", fontsize=10)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.plot(epochs, [h["train_acc"] for h in history], "o-", label="train accuracy")
    ax2.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation accuracy")
    ax2.plot(epochs, [h["val_balanced_acc"] for h in history], "s--", label="validation balanced")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    save_figure(path, fig)
    return fig


def plot_confusion(path, metrics, classes):
    """The test confusion matrix, titled with the balanced accuracy, the number of test clips and
    the split they came from."""
    plt = pyplot()
    cm = np.array(metrics["confusion"])
    title = (f"{metrics['model']}: balanced accuracy {metrics['test_balanced_accuracy']:.3f}\n"
             f"{metrics['n_test']} test clips, {metrics.get('split') or 'split not recorded'}")
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    save_figure(path, fig)
    return fig


@dataclass
class Tested:
    logits: np.ndarray    # per test item (segments: per segment)
    seconds: float        # the model's time on them
    probabilities: np.ndarray = None  # per clip, when the model has its own (else softmax)


def test_model(model, test_set, *, device, batch_size, dist=Dist()):
    """The model's logits on the test part (each rank its share, gathered), and their time."""
    autocast, _ = amp_tools(device)
    loader = make_loader(test_set, batch_size, False, 0, 0, device, dist)
    start = time.time()
    logits = predict_logits(model.to(device), loader, autocast, device, dist=dist)
    return Tested(logits, time.time() - start)


def clip_counts(part):
    """Clips per class in a part (classes present only)."""
    labels = dict(zip(part.clip_ids, part.labels.tolist()))
    return np.unique(list(labels.values()), return_counts=True)[1]


def small_part_note(per_class):
    """Why a part's figure means little when it is small (under 20 clips, or under 3 clips of a
    class), or None: the size of one clip in balanced accuracy."""
    n_clips, smallest = int(per_class.sum()), int(per_class.min())
    if n_clips >= 20 and smallest >= 3:
        return None
    return (f"{n_clips} clips, {smallest} in the smallest class: one clip moves balanced accuracy "
            f"by up to {1 / (len(per_class) * smallest):.3f}; --folds K tests every clip once")


@dataclass
class Report:
    metrics: dict       # metrics.json
    text: str           # scikit-learn's classification report
    predictions: tuple  # (clip ids, true labels, probabilities): predictions.csv
    history: list       # a dict per epoch trained (none for a scikit-learn estimator)


def test_report(part, model_name, classes, tested, result, *, train, val, test,
                prepare_seconds=0.0, notes=None):
    """The part's figures from the model's predictions on its test clips (scikit-learn, clip
    level), with what the run was: its split and sizes, epochs and times, whether training
    completed (result None: a scikit-learn estimator, fitted in prepare_seconds)."""
    args = part.run.args
    history = result.history if result else []
    best_epoch = result.best_epoch if result else 0
    metrics, text, predictions = test_metrics(model_name, classes, tested.logits, test,
                                              tested.probabilities)
    seconds = [h["seconds"] for h in history] or [0.0]
    metrics.update({
        "split": split_label(args, part.split), "n_train": len(set(train.clip_ids)),
        "n_val": len(set(val.clip_ids)), "epochs_run": len(history), "best_epoch": best_epoch,
        "train_seconds": prepare_seconds + seconds[-1],
        "seconds_to_best": prepare_seconds + seconds[max(best_epoch, 1) - 1],
        "seconds_to_best_val": prepare_seconds + seconds[best_validation_epoch(history) - 1],
        "epochs": getattr(args, "epochs", None),
        "predict_seconds_per_clip": tested.seconds / metrics["n_test"],
        "split_hash": split_hash(part.split), "data": str(args.data),
        "run": part.run.dir.name + (f"/{part.name}" if part.name else ""),
        "complete": result.complete if result else True, "device": part.run.device,
        "small_test": small_part_note(clip_counts(test)), "small_val": small_part_note(clip_counts(val)),
        **({"amp_skipped_steps": result.skipped_steps} if result else {}), **(notes or {})})
    if part.name:
        metrics.update({"group": part.run.dir.name, "fold": int(part.name[4:]), "folds": args.folds})
    return Report(metrics, text, predictions, history)


def best_validation_epoch(history):
    """The first epoch of the best validation balanced accuracy (1 without history): where a run
    converged, whichever epoch's weights it keeps (a cosine run keeps its last)."""
    scores = [h["val_balanced_acc"] for h in history]
    return scores.index(max(scores)) + 1 if scores else 1


def confusion_text(confusion, classes):
    """The confusion matrix as text: a row per true class, a column per predicted one."""
    width = max(4, *(len(c) for c in classes), *(len(str(n)) for row in confusion for n in row))
    head = "true \\ predicted".ljust(width + 2)
    lines = [head + " ".join(c[:width].rjust(width) for c in classes)]
    lines += [c[:width].ljust(width + 2) + " ".join(str(n).rjust(width) for n in row)
              for c, row in zip(classes, confusion)]
    return "\n".join(lines)


def synthetic_data(data):
    """Whether training data came from data_conversion.py --make-demo (its README.txt says
    SYNTHETIC): audio itself, images through their conversion.json, a table through its record."""
    data = Path(data)
    record = feature_record(data) if data.is_file() else None
    if data.is_dir() and (data / CONVERSION_FILE).is_file():
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((data / CONVERSION_FILE).read_text())
    source = Path((record or {}).get("source") or data)
    return any((folder / "README.txt").is_file()
               and (folder / "README.txt").read_text(errors="replace").startswith("SYNTHETIC")
               for folder in (source, source.parent))


def caveats(data, notes):
    """What a prediction with this model should say first: its data or weights mean little."""
    said = []
    if synthetic_data(data):
        said.append("was trained on SYNTHETIC demo data: its labels say nothing about music")
    if notes.get("weights") == "none":
        said.append("has a backbone with random weights (--weights none): no pretraining")
    if notes.get("complete") is False:
        said.append(f"did not finish training: stopped at the time limit after epoch "
                    f"{notes.get('epochs_run')} of {notes.get('epochs')} (continue the run with "
                    "--resume)")
    return said
