"""Compare training runs: a markdown table and bar charts; --demo runs the whole study.

    python compare.py                              # runs/*/metrics.json -> report/
    python compare.py --runs runs --out report --kaggle my-genre-competition
    python compare.py --ensemble mlp-run cnn-mel-run   # + their averaged probabilities as a row
    python compare.py --demo                       # synthetic data, every model, CPU, minutes

The table: model, balanced accuracy, accuracy, macro F1, epochs, time to converge (seconds to the
best validation epoch), prediction time per clip (the model alone, and audio file to label), Kaggle's public
and private scores (private once Kaggle shows it). Runs brought home from a Kaggle kernel
(kernels/kaggle_loop.py output) show its version. K-fold runs appear once, as mean +- std.
Runs tested on different splits or data are flagged: their figures are not comparable.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import common
import kaggle_client
import models
import reports
import runs
import training
import uncertainty

CHARTS = {  # file -> [(metric key, axis label)]: one panel each
    "balanced_accuracy.png": [("test_balanced_accuracy", "test balanced accuracy (bars: 95% interval)")],
    "time_to_converge.png": [("seconds_to_best_val", "seconds to the best validation epoch")],
    "predict_time.png": [("predict_ms", "model only: ms per clip"),
                         ("audio_to_label_seconds_per_clip", "audio file to label: s per clip")],
    "kaggle_score.png": [("kaggle_score", "Kaggle public score"),
                         ("kaggle_private_score", "Kaggle private score")],
}
CONVERGED = "seconds_to_best_val"  # time to converge: training seconds to the epoch of the best
# validation balanced accuracy (a cosine run keeps its last epoch, later than that)
SUMMED = (CONVERGED, "predict_seconds_per_clip")  # an ensemble's members all run
KAGGLE_KEYS = ("kaggle_score", "kaggle_private_score", "kaggle_kernel", "kaggle_version")


def build_parser():
    p = common.ArgumentParser(prog="compare.py", description=__doc__)
    p.add_argument("--runs", default="runs", help="folder of run folders (default %(default)s)")
    p.add_argument("--out", help="report folder (default: report, or DEMO_DIR/report with --demo)")
    p.add_argument("--kaggle", metavar="COMPETITION",
                   help="fill Kaggle's public and private scores from your newest scored "
                        "submission whose message names the run")
    p.add_argument("--ensemble", nargs="+", metavar="RUN",
                   help="runs (names under --runs, or paths) whose clip probabilities are averaged "
                        "into one more row: made on one split, or K-fold runs on the same folds")
    p.add_argument("--ensemble-name", default="ensemble", help="its name (default %(default)s)")
    d = p.add_argument_group("demo")
    d.add_argument("--demo", action="store_true", help="make demo data, train every model family, "
                                                       "then compare (offline, CPU, a few minutes)")
    d.add_argument("--demo-dir", default="demo", help="where the demo writes its data, runs and "
                   "report, and nothing else (default %(default)s)")
    d.add_argument("--demo-weights", default="imagenet",
                   help="vgg16 weights for the demo: imagenet (falls back to none offline), none, PATH")
    d.add_argument("--demo-epochs", type=common.bounded(int, minimum=1), default=20,
                   help="maximum epochs per model in the demo (default %(default)s)")
    d.add_argument("--demo-clips", type=common.bounded(int, minimum=3), default=20,
                   help="synthetic clips per genre in the demo (default %(default)s)")
    return p


# ----------------------------------------------------------------------------------------------
# Reading runs

def load_runs(runs_dir, names=None):
    """One entry per run (those named, or all); the folds of a K-fold run become one entry
    with mean and std."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise common.SuiteError(f"--runs {runs_dir}: no such runs folder (train a model first)")
    entries, groups = [], {}
    for path in sorted(runs_dir.rglob("metrics.json")):
        parts = path.relative_to(runs_dir).parts
        if any(p.startswith(".") for p in parts) or (names is not None and parts[0] not in names):
            continue  # .cache, a run being replaced
        try:
            m = json.loads(path.read_text())
            m["test_balanced_accuracy"]
        except (ValueError, KeyError):
            print(f"warning: skipped {path}: not a metrics.json of this suite", file=sys.stderr)
            continue
        m["_path"] = path
        m.setdefault(CONVERGED, m.get("seconds_to_best"))  # a run recorded before it was kept
        if "test_balanced_accuracy_ci" not in m:  # recorded before intervals were
            m.update(intervals_from_predictions(path.parent))
        record = prediction_record(path.parent)
        m.setdefault("audio_to_label_seconds_per_clip", audio_to_label([record]))
        m.setdefault("predict_workers", (record or {}).get("workers"))
        if m.get("complete") is False:  # stopped by --time-limit: the model so far
            m["stopped_at"] = f"epoch {m.get('epochs_run')} of {m.get('epochs') or '?'}"
        if m.get("group"):
            groups.setdefault(str(path.parent.parent), []).append(m)
        else:
            m["name"] = m.get("run", path.parent.name)
            entries.append(m)
    for group_dir, folds in groups.items():
        planned = folds[0].get("folds") or len(folds)
        entry = {"name": f"{Path(group_dir).name} ({planned}-fold)", "folds": folds,
                 "model": folds[0]["model"], "split_hash": "k-fold", "data": folds[0].get("data"),
                 "weights": folds[0].get("weights")}
        stopped = [f"fold {f['fold']}: {f['stopped_at']}" for f in folds if f.get("stopped_at")]
        if len(folds) < planned or stopped:  # killed or time-limited before its last fold
            entry["stopped_at"] = ", ".join([f"{len(folds)} of {planned} folds tested", *stopped])
        entry.update({key: folds[0].get(key) for key in KAGGLE_KEYS})  # the run's, in every fold
        entry.update(fold_means(folds, ("test_balanced_accuracy", "test_accuracy",
                                        "test_macro_f1", "epochs_run", CONVERGED,
                                        "predict_seconds_per_clip")))
        entries.append(entry)
    if not entries:
        unfinished = unfinished_runs(runs_dir, names)
        raise common.SuiteError(f"{runs_dir}: no metrics.json found " + (
            f"(unfinished: {'; '.join(f'{n} at {p}: {resume}' for n, p, resume in unfinished)})"
            if unfinished else "(train a model first)"))
    return entries


def unfinished_runs(runs_dir, names=None):
    """[(run folder name, RunProgress, the command that goes on)] of runs killed or still
    training: no test figures yet, or fewer folds tested than asked for."""
    found = []
    for config in sorted(Path(runs_dir).glob("*/config.json")):
        run = config.parent
        if run.name.startswith(".") or (names is not None and run.name not in names):
            continue
        progress = runs.run_progress(run)
        if progress is None or progress.finished or (progress.parts == 1 and
                                                      (run / "metrics.json").exists()):
            continue  # finished, or time-limited: its figures are in a table, marked
        script = runs.read_json(config).get("script", "train_cnn.py")
        found.append((run.name, progress, f"python {script} --resume {run}"))
    return found


def prediction_record(part_dir):
    """What predict.py (or --predict) recorded in the run folder of its last prediction, or None."""
    try:
        return json.loads((Path(part_dir) / "prediction.json").read_text())
    except (OSError, ValueError):
        return None


def audio_to_label(records):
    """Seconds per clip from audio file to label: for one run what its prediction measured (wall
    clock, with its workers: what predict.py printed); for models predicting together, in one
    process, decoding and preprocessing counted once per distinct preprocessing (an MLP and an
    SVM on the same features extract them once), every model's own time added."""
    if not records or None in records:
        return None
    if len(records) == 1:
        return records[0]["seconds_per_clip"]
    preprocessing = {json.dumps(r["preprocess"], sort_keys=True): r["preprocess_seconds_per_clip"]
                     for r in records}
    return sum(preprocessing.values()) + sum(r["model_seconds_per_clip"] for r in records)


def fold_means(folds, keys):
    """{key: mean, key_std: sample std} over the folds, for the keys all of them have; and the
    interval of the mean balanced accuracy (t, floored by its test clips when they are known)."""
    out = {}
    for key in keys:
        if all(f.get(key) is not None for f in folds):
            values = np.array([f[key] for f in folds], dtype=float)
            out[key], out[key + "_std"] = float(values.mean()), float(values.std(ddof=1))
    clips = sum(f.get("n_test") or 0 for f in folds) if all(f.get("n_test") for f in folds) else None
    out["test_balanced_accuracy_ci"] = uncertainty.mean_interval(
        [f["test_balanced_accuracy"] for f in folds], clips=clips)
    out["ci_method"] = {"test_balanced_accuracy_ci": uncertainty.T_MEAN}
    return out


def intervals_from_predictions(part_dir):
    """The intervals of a run recorded without them, from its predictions.csv ({} without one:
    the table shows '?')."""
    found = clip_predictions(part_dir)
    if found is None:
        return {}
    clips, classes = found
    truth, predicted = zip(*((classes.index(t), classes.index(p)) for t, p in clips.values()))
    return uncertainty.test_intervals(truth, predicted)


def sort_entries(entries):
    for e in entries:
        for suffix in ("", "_std"):
            if e.get("predict_seconds_per_clip" + suffix) is not None:
                e["predict_ms" + suffix] = e["predict_seconds_per_clip" + suffix] * 1000
    return sorted(entries, key=lambda e: -e["test_balanced_accuracy"])


# ----------------------------------------------------------------------------------------------
# Ensemble: the mean of the members' clip probabilities (predictions.csv), per split or fold

def read_predictions(part_dir):
    """({clip id: (true class, probabilities)}, classes) from a run's predictions.csv."""
    import csv
    path = part_dir / "predictions.csv"
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            classes = [c[2:] for c in reader.fieldnames if c.startswith("p_")]
            rows = {r["clip_id"]: (r["true"], np.array([float(r[f"p_{c}"]) for c in classes]))
                    for r in reader}
    except (OSError, KeyError, ValueError, TypeError):
        raise common.SuiteError(f"--ensemble {path}: no class probabilities (made by an older "
                                "version? train the run again)") from None
    if not classes:
        raise common.SuiteError(f"--ensemble {path}: no class probabilities")
    return rows, classes


def clip_predictions(part_dir):
    """({clip id: (true class, predicted class)}, classes) from a part's predictions.csv (the
    predicted class: the most probable); None without one."""
    try:
        rows, classes = read_predictions(Path(part_dir))
    except common.SuiteError:
        return None
    clips = {clip: (true, classes[int(np.argmax(p))]) for clip, (true, p) in rows.items()}
    if not clips or any(true not in classes for true, _ in clips.values()):
        return None
    return clips, classes


def part_predictions(entry):
    """Per tested part (the run, or each of its folds) its clip predictions; None when a part
    has none (recorded before predictions.csv)."""
    parts = [clip_predictions(p["_path"].parent) if p.get("_path") else None
             for p in entry.get("folds", [entry])]
    return None if None in parts else [clips for clips, _ in parts]


def paired(a, b):
    """Run a against run b on the same test clips (uncertainty.paired_difference), or why not."""
    first, second = part_predictions(a), part_predictions(b)
    if first is None or second is None:
        return "not compared: no predictions.csv"
    same = len(first) == len(second) and all(  # the same clips, each with the same true class
        {c: t for c, (t, _) in x.items()} == {c: t for c, (t, _) in y.items()}
        for x, y in zip(first, second))
    if not same:
        return "not compared: not the same test clips"
    classes = sorted({name for part in first + second for pair in part.values() for name in pair})
    index = {name: i for i, name in enumerate(classes)}
    parts = []
    for x, y in zip(first, second):
        clips = sorted(x)
        parts.append((np.array([index[x[c][0]] for c in clips]),   # the true classes
                      np.array([index[x[c][1]] for c in clips]),   # a's predictions
                      np.array([index[y[c][1]] for c in clips])))  # b's
    return str(uncertainty.paired_difference(parts))


def paired_text(group):
    """Under a split's table: its best run against each other one, on the same test clips."""
    if len(group) < 2:
        return ""
    lines = "".join(f"- {group[0]['name']} vs {e['name']}: {paired(group[0], e)}\n"
                    for e in group[1:])
    return ("Paired, the best run against each other (balanced accuracy, first minus second; "
            "95% paired bootstrap interval over the test clips, per fold for K-fold runs; "
            "McNemar's exact test on the clips only one got right):\n\n" + lines + "\n")


def ensemble_entry(runs_dir, members, name, out):
    """The ensemble as a table entry; its per-part metrics, predictions and confusion chart
    are written to OUT/NAME/."""
    dirs = [Path(m) if Path(m).is_dir() else Path(runs_dir) / m for m in members]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing or len(dirs) < 2:
        raise common.SuiteError(f"--ensemble: give two runs or more ({', '.join(missing)}: no such run)"
                                if missing else "--ensemble: give two runs or more")
    parts = [runs.tested_parts(d) for d in dirs]
    if not all(parts):
        unfinished = next(d for d, p in zip(dirs, parts) if not p)
        raise common.SuiteError(f"--ensemble {unfinished}: no metrics.json (not a finished run)")
    if len({len(p) for p in parts}) != 1:
        raise common.SuiteError("--ensemble: the runs have different numbers of folds")
    results, member_metrics = [], [[runs.read_metrics(p) for p in run] for run in parts]
    for i in range(len(parts[0])):
        if len({m[i].get("split_hash") for m in member_metrics}) != 1:
            raise common.SuiteError(f"--ensemble: {', '.join(map(str, dirs))} were tested on "
                                    "different clips (split hash); ensemble runs of one split")
        predictions = [read_predictions(run[i]) for run in parts]
        classes = predictions[0][1]
        clips = sorted(predictions[0][0])
        if any(c != classes or sorted(rows) != clips for rows, c in predictions):
            raise common.SuiteError("--ensemble: the runs differ in classes or test clips")
        mean = np.mean([[rows[c][1] for c in clips] for rows, _ in predictions], axis=0)
        truth = [classes.index(predictions[0][0][c][0]) for c in clips]
        s = training.classification_scores(truth, mean.argmax(1), len(classes))
        metrics = {"model": name, "members": [str(d.name) for d in dirs], "classes": classes,
                   "data": " + ".join(sorted({str(m[i].get("data")) for m in member_metrics})),
                   "test_accuracy": s["accuracy"], "test_balanced_accuracy": s["balanced_accuracy"],
                   "test_macro_f1": s["macro_f1"], "confusion": s["confusion"],
                   "n_test": len(clips), "split_hash": member_metrics[0][i].get("split_hash"),
                   "split": member_metrics[0][i].get("split"),
                   "small_test": member_metrics[0][i].get("small_test"),
                   **uncertainty.test_intervals(truth, mean.argmax(1))}
        for key in SUMMED:  # every member runs: their times add up
            values = [m[i].get(key) for m in member_metrics]
            metrics[key] = sum(values) if None not in values else None
        metrics["audio_to_label_seconds_per_clip"] = audio_to_label(
            [prediction_record(run[i]) for run in parts])
        folder = out / name / (parts[0][i].name if len(parts[0]) > 1 else "")
        common.write_json(folder / "metrics.json", metrics)
        training.write_predictions(folder / "predictions.csv", classes, clips, truth, mean)
        reports.plot_confusion(folder / "confusion.png", metrics, classes)
        results.append({**metrics, "_path": folder / "metrics.json"})  # its predictions: paired
    if len(results) == 1:
        return {**results[0], "name": name, "epochs_run": None}
    entry = {"name": f"{name} ({len(results)}-fold)", "model": name, "split_hash": "k-fold",
             "folds": results}
    entry.update(fold_means(results, ("test_balanced_accuracy", "test_accuracy", "test_macro_f1",
                                      *SUMMED, "audio_to_label_seconds_per_clip")))
    return entry


def fill_kaggle_scores(entries, competition):
    """Kaggle's public and private score (private: None until Kaggle shows it) of the newest
    scored submission whose message names the run, into the entries and their metrics.json."""
    submissions = kaggle_client.all_submissions(kaggle_client.kaggle_api(), competition)
    filled = 0
    for entry in entries:
        parts = entry.get("folds", [entry])
        run_name = (parts[0]["_path"].parent.parent if "folds" in entry
                    else entry["_path"].parent).name
        scored = next((s for s in submissions  # newest first
                       if kaggle_client.names_run(s.description, run_name)
                       and s.public_score not in (None, "")), None)
        if scored is None:
            continue
        private = scored.private_score
        scores = {"kaggle_score": float(scored.public_score),
                  "kaggle_private_score": float(private) if private not in (None, "") else None}
        entry.update(scores)
        for part in parts:
            runs.update_metrics(part["_path"].parent, **scores)
        filled += 1
    print(f"Kaggle scores found for {filled} of {len(entries)} runs "
          f"({len(submissions)} submissions to {competition})")


# ----------------------------------------------------------------------------------------------
# Table and charts

def cell(entry, key, fmt):
    value = entry.get(key)
    if value is None:
        return "-"
    text = fmt.format(value)
    if entry.get(key + "_std") is not None:
        text += " ± " + fmt.format(entry[key + "_std"])
    return text


def markdown_table(entries):
    header = ["run", "model", "balanced acc", "95% CI", "accuracy", "macro F1", "epochs",
              "time to best val. (s)", "model (ms/clip)", "audio to label (s/clip)",
              "Kaggle public", "Kaggle private"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        model = e["model"] + (" (random weights)" if e.get("weights") == "none" else "")
        relay = "relay " if str(e.get("kaggle_kernel", "")).endswith("-relay") else ""
        name = e["name"] + (f" (Kaggle {relay}v{e['kaggle_version']})" if e.get("kaggle_version")
                            else "")
        if e.get("stopped_at"):
            name += f" (incomplete: stopped at {e['stopped_at']})"
        small = " †" if e.get("small_test") else ""
        workers = f" ({e['predict_workers']} workers)" if e.get("predict_workers") else ""
        row = [name, model, cell(e, "test_balanced_accuracy", "{:.3f}") + small,
               uncertainty.interval_text(e.get("test_balanced_accuracy_ci")),
               cell(e, "test_accuracy", "{:.3f}"), cell(e, "test_macro_f1", "{:.3f}"),
               cell(e, "epochs_run", "{:.0f}"), cell(e, CONVERGED, "{:.2f}"),
               cell(e, "predict_ms", "{:.2f}"),
               cell(e, "audio_to_label_seconds_per_clip", "{:.3f}") + workers,
               cell(e, "kaggle_score", "{:.3f}"), cell(e, "kaggle_private_score", "{:.3f}")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def split_key(entry):
    """Runs are comparable when they were tested on the same clips: the same split (images and
    features of the same clips share one), or the same folds."""
    parts = entry.get("folds", [entry])
    return tuple(str(p.get("split_hash")) for p in parts)


def by_split(entries):
    """[(heading, entries sorted best first)], one group per split: runs on different splits
    are never ranked together."""
    groups = {}
    for e in entries:
        groups.setdefault(split_key(e), []).append(e)
    out = []
    for key, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        label = next((e.get("folds", [e])[0].get("split") for e in group
                      if e.get("folds", [e])[0].get("split")), "split not recorded")
        n_test = max(sum(p.get("n_test") or 0 for p in e.get("folds", [e])) for e in group)
        data = ", ".join(sorted({str(e.get("data")) for e in group}))
        out.append((f"{label}: {n_test or '?'} test clips (split {key[0][:8]}"
                    + (f" ...{len(key)} folds" if len(key) > 1 else "") + f"; data: {data})",
                    sort_entries(group)))
    return out


def error_bars(entries, key):
    """(below, above) each bar: its 95 % interval where the figure has one, else the std over
    folds (or nothing)."""
    below, above = [], []
    for e in entries:
        ci, std = e.get(key + "_ci"), e.get(key + "_std") or 0
        below.append(max(0, e[key] - ci[0]) if ci else std)
        above.append(max(0, ci[1] - e[key]) if ci else std)
    return [below, above]


def bar_chart(path, groups, panels):
    """One bar panel per (metric key, label), runs grouped by split (a colour each, never
    ranked together, the legend naming the split and its number of test clips), with error bars
    (error_bars); runs without that figure are left out of it."""
    plt = reports.pyplot()
    n = sum(len(entries) for _, entries in groups) + len(groups) - 1
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * max(5, 1.1 * n + 2), 4),
                             squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        x, ticks, names = 0, [], []
        for k, (heading, entries) in enumerate(groups):
            shown = [e for e in entries if e.get(key) is not None]
            if not shown:
                continue
            xs = list(range(x, x + len(shown)))
            ax.bar(xs, [e[key] for e in shown], yerr=error_bars(shown, key), capsize=4,
                   color=f"C{k}", label=heading.split(" (split ")[0])  # + its test clips
            for i, e in zip(xs, shown):
                ax.annotate(f"{e[key]:.3g}", (i, e[key]), ha="center", va="bottom", fontsize=8)
            ticks += xs
            names += [e["name"] for e in shown]
            x += len(shown) + 1  # a gap between splits
        if ticks:
            ax.set_xticks(ticks, names, rotation=30, ha="right")
            ax.legend(fontsize=7, title="split")  # a figure always says what it was tested on
        else:
            ax.text(0.5, 0.5, "no run has this figure yet", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_xticks([])
        ax.set(ylabel=label, xlabel="run", title=label)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    reports.save_figure(path, fig)
    return fig


def check_report_folder(out):
    """The report folder is new, empty, or a report of ours (compare.md): never someone's."""
    common.check_output_folder(out, "--out")
    if out.is_dir() and any(out.iterdir()) and not (out / "compare.md").is_file():
        raise common.SuiteError(f"--out {out}: not empty and not a report of compare.py (no "
                                "compare.md); give a new or empty folder")
    return out


def write_report(entries, out, unfinished=()):
    """compare.md: a table per split (best first), the small test parts noted, the runs with no
    test figures yet; the charts (Kaggle's scores only once there are some)."""
    out = Path(out)
    groups = by_split(entries)
    text = "# Model comparison\n\n"
    if len(groups) > 1:
        text += (f"These runs were tested on {len(groups)} different splits: each has its own "
                 "table, and figures compare only within one.\n\n")
    for heading, group in groups:
        text += f"## {heading}\n\n{markdown_table(group)}\n\n"
        notes = {}
        for e in group:
            if e.get("small_test"):
                notes.setdefault(e["small_test"], []).append(e["name"])
        for note, names in notes.items():  # runs of one split share one note
            who = "every run here" if len(names) == len(group) else ", ".join(names)
            text += f"† a small test part ({who}): {note}\n\n"
        text += paired_text(group)
    if unfinished:
        text += "## Unfinished (killed, or still training)\n\n" + "".join(
            f"- {name}: at {progress}; `{resume}` goes on\n"
            for name, progress, resume in unfinished) + "\n"
    charts = {name: panels for name, panels in CHARTS.items()
              if any(e.get(key) is not None for _, group in groups for e in group
                     for key, _ in panels)}
    for name in set(CHARTS) - set(charts):  # a chart of this report's from before: gone
        (out / name).unlink(missing_ok=True)
    text += "Charts: " + ", ".join(f"[{name}]({name})" for name in charts) + "\n"
    common.atomic_write(out / "compare.md", lambda f: f.write(text))
    for name, panels in charts.items():
        bar_chart(out / name, groups, panels)
    print(text.split("Charts:")[0].replace("## ", "").rstrip())
    return out / "compare.md"


# ----------------------------------------------------------------------------------------------
# The demo: the study end to end on synthetic data

def step(title):
    print(f"\n=== {title} ===", flush=True)


def run_demo(args):
    import conversion
    import data_conversion
    import train_cnn
    import train_mlp
    import train_transfer
    demo = Path(args.demo_dir)
    models.check_torchvision()
    common.check_output_folder(demo, "--demo-dir")
    report_dir = check_report_folder(Path(args.out or demo / "report"))
    audio, images, features, runs = demo / "audio", demo / "images", demo / "features.csv", demo / "runs"
    try:  # a table the demo did not extract (the public one) is the user's: never replaced
        conversion.check_feature_table(features, audio, "standard", overwrite=False)
    except common.SuiteError:
        raise common.SuiteError(f"--demo-dir {demo}: {features.name} there was not made by the "
                                "demo; give the demo another --demo-dir") from None
    # the suite's cache (and matplotlib's) inside the demo's folder: it writes nothing outside it
    os.environ["SUITE_CACHE"] = str(demo.resolve() / ".cache")
    os.environ.setdefault("MPLCONFIGDIR", str(demo.resolve() / ".cache" / "matplotlib"))
    test = demo / "test"  # unlabeled, as a Kaggle test set: every model predicts it
    start = time.time()
    epochs = str(args.demo_epochs)

    step("1/6 synthetic demo audio (not music, not GTZAN)")
    data_conversion.main(["--make-demo", str(audio), "--clips-per-genre", str(args.demo_clips)])
    data_conversion.main(["--make-demo", str(test), "--clips-per-genre", "1", "--seed", "1",
                          "--unlabeled"])
    step("2/6 spectrogram images")
    data_conversion.main([str(audio), str(images), "--size", "64"])
    small = ["--data", str(images), "--img-size", "64", "--epochs", epochs, "--batch-size", "8",
             "--patience", "8", "--out", str(runs), "--overwrite", "--predict", str(test)]
    step("3/6 ConvolNeuNet from scratch")
    train_cnn.main(small + ["--name", "demo-cnn"])
    step("4/6 VGG16 transfer learning")
    weights = args.demo_weights
    transfer = small + ["--arch", "vgg16", "--name", "demo-vgg16"]
    try:
        train_transfer.main(transfer + ["--weights", weights])
    except common.SuiteError as e:
        if e.code != 2 or weights != "imagenet":  # 2: the weights could not be downloaded
            raise
        print("note: ImageNet weights could not be downloaded; the demo's VGG16 uses random "
              "weights (--weights none), so its figures say nothing about transfer learning")
        weights = "none"
        train_transfer.main(transfer + ["--weights", "none"])
    step("5/6 audio features -> MLP and SVM")
    data_conversion.main([str(audio), "--features", str(features)])
    mlp = ["--features", str(features), "--out", str(runs), "--overwrite", "--predict", str(test)]
    train_mlp.main(mlp + ["--hidden", "256:relu,128:relu", "--dropout", "0.3", "--pca", "0",
                          "--patience", "10", "--name", "demo-mlp"])
    train_mlp.main(mlp + ["--baseline", "svm", "--name", "demo-svm"])
    step("6/6 comparison")
    names = ["demo-cnn", "demo-vgg16", "demo-mlp", "demo-svm"]
    entries = load_runs(runs, names) + [ensemble_entry(runs, ["demo-cnn", "demo-mlp"],
                                                       "demo-cnn+mlp", report_dir)]
    report = write_report(entries, report_dir)
    note = f"\nDemo data is synthetic. VGG16 weights: {weights}.\n"
    common.atomic_write(report, lambda f: f.write(report.read_text() + note))
    print(f"\ndemo finished in {time.time() - start:.0f} s; VGG16 weights: {weights}; "
          f"report: {report} (charts beside it), runs: {runs}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.demo:
        return run_demo(args)
    parser = build_parser()
    for flag in ("demo_dir", "demo_weights", "demo_epochs", "demo_clips"):
        if getattr(args, flag) != parser.get_default(flag):
            raise common.SuiteError(f"--{flag.replace('_', '-')}: a setting of the demo; add "
                                    "--demo, or leave it out")
    out = check_report_folder(Path(args.out or "report"))
    entries = load_runs(args.runs)
    if args.ensemble and args.ensemble_name in {e["name"] for e in entries}:
        raise common.SuiteError(f"--ensemble-name {args.ensemble_name}: a run in {args.runs} has "
                                "that name (two rows would read the same); name the ensemble "
                                "otherwise")
    if args.kaggle:
        fill_kaggle_scores(entries, args.kaggle)
    if args.ensemble:
        entries.append(ensemble_entry(args.runs, args.ensemble, args.ensemble_name, out))
    report = write_report(entries, out, unfinished_runs(args.runs))
    print(f"\nreport: {report}")
    return 0


cli = common.user_errors(main)  # the command line: a SuiteError is one line and an exit code


if __name__ == "__main__":
    sys.exit(cli())
