"""Mutation check of the core: when the core is wrong, does a test fail?

    python bench/mutate.py                  # every mutation, one at a time (see the README)
    python bench/mutate.py --list           # the table: mutations, files, guarding tests
    python bench/mutate.py -k mixup -k resume --jobs 2

Each row of MUTATIONS breaks one promise of the core (a loss without its label smoothing,
segments voting by their first one, a resume that forgets the optimizer, ...) by replacing one
exact piece of source text, and names the fast tests that should notice. For each mutation the
repository (git's tracked and untracked-but-not-ignored files) is copied into a temporary
folder, the text replaced there, and the guarding tests run against the copy (pytest -x, a time
limit per mutant). The working tree is never written, even when the check is interrupted.

    killed     a guarding test failed, or the run passed its time limit: the tests see the bug
    SURVIVED   every guarding test passed: a gap in the tests (or a mutant that changes nothing
               observable, which the table should then drop or change)
    error      the mutant could not be tested: its anchor is stale, it does not compile, or its
               selection selects no test

Score = killed / mutations: the share of these bugs that the tests catch (1.000 = all). It
says nothing about bugs outside the table. Before the mutants, the guarding tests run once on
the unmutated copy; one that fails there stops the check (it would "kill" every mutant it guards).

Exit code 0 whatever the score; 1 when the table is stale: an anchor text is not found exactly
once in its file, a selection selects no test, or a guarding test fails without a mutation.
Run by hand, not in CI. Tests run with MPLBACKEND=Agg and OMP_NUM_THREADS=1; --jobs N runs N
mutants at once (default 1: on 2 cores a second pytest already competes with the tests' own
subprocesses).
"""
import argparse
import concurrent.futures
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per mutant (its tests, not the copy)


@dataclass
class Mutation:
    name: str
    file: str    # relative to the repository root
    old: str     # exact source text, found exactly once in the file
    new: str     # what replaces it
    tests: str   # pytest arguments: test files, node ids, -k EXPR


CNN = "tests/test_train_cnn.py"
MLP = "tests/test_train_mlp.py"
SPLIT = "tests/test_split.py"
PREDICT = "tests/test_predict.py"

LOSSES = (f"{MLP}::test_each_loss_is_its_formula {MLP}::test_kl_to_one_hot_equals_cross_entropy "
          f"{MLP}::test_the_chosen_loss_is_what_training_minimizes")
MIXUP = f"{CNN}::test_mixup_mixes_pairs_and_their_losses"
PREPROCESSING = f"{MLP}::test_mlp_trains_with_scaler_and_pca_fitted_on_train_only"
SPECAUGMENT = f"{CNN}::test_specaugment_masks_bands_and_spans_then_shifts_in_time"
CLIP_VOTE = f"{CNN}::test_clip_vote_averages_segment_logits {CNN}::test_segments_scored_per_clip"
METRICS = (f"{CNN}::test_scores_balance_the_classes_and_confusion_rows_are_the_truth "
           f"{CNN}::test_clip_vote_averages_segment_logits "
           f"{CNN}::test_run_folder_complete_and_metrics_match_sklearn")
RESUME = (f"{CNN}::test_cosine_run_resumes_from_its_last_epoch "
          f"{CNN}::test_time_limit_stops_between_epochs_and_resume_finishes "
          f"{CNN}::test_plateau_run_stopped_by_the_time_limit_resumes_to_the_uninterrupted_result")
STOPPING = (f"{CNN}::test_plateau_lowers_lr_after_3_flat_epochs_and_stops_after_5 "
            f"{CNN}::test_min_epochs_delays_early_stopping "
            f"{CNN}::test_early_stopping_restores_best_weights "
            f"{CNN}::test_cosine_trains_every_epoch_and_keeps_the_last")
PREDICT_IMAGES = (f"{PREDICT}::test_prediction_uses_training_preprocessing "
                  f"{PREDICT}::test_prediction_repeats_mel_levels_preprocessing")
FINISHED = (f"{CNN}::test_a_part_stopped_by_the_time_limit_is_not_finished "
            f"{CNN}::test_resume_of_a_finished_run_changes_nothing "
            f"{CNN}::test_the_end_of_a_run_resumes_at_every_instant "
            f"{CNN}::test_resume_may_change_workers_and_device")
UNCERTAINTY = "tests/test_uncertainty.py"
FOLD_SUMMARY = f"{MLP}::test_folds_summary_for_baseline"
COMPARE_CI = "tests/test_compare.py::test_intervals_and_paired_differences_in_the_table"

M = Mutation
MUTATIONS = [
    # losses (train_mlp.make_criterion)
    M("ce: label smoothing dropped", "train_mlp.py",
      "torch.nn.CrossEntropyLoss(label_smoothing=smoothing)", "torch.nn.CrossEntropyLoss()", LOSSES),
    M("hinge: cross entropy instead", "train_mlp.py",
      "return torch.nn.MultiMarginLoss()", "return torch.nn.CrossEntropyLoss()", LOSSES),
    M("kl: softmax for log_softmax", "train_mlp.py",
      "kl(torch.log_softmax(logits.float(), 1), target)", "kl(torch.softmax(logits.float(), 1), target)",
      LOSSES),
    M("kl: label smoothing dropped", "train_mlp.py",
      "target.scatter_(1, y[:, None], 1 - smoothing + smoothing / n_classes)",
      "target.zero_().scatter_(1, y[:, None], 1.0)", LOSSES),
    M("--smoothing not passed to the loss", "train_mlp.py",
      "make_criterion(args.loss, len(classes), args.smoothing)", "make_criterion(args.loss, len(classes))",
      LOSSES),
    # mixup (training.mixup_pairs, training.train_epoch)
    M("mixup: inputs not mixed", "training.py",
      "return weight * x.float() + (1 - weight) * x[partner].float(),", "return x.float(),", MIXUP),
    M("mixup: partner labels not permuted", "training.py",
      "x[partner].float(), y[partner], weight", "x[partner].float(), y, weight", MIXUP),
    M("mixup: weight not applied to the loss", "training.py",
      "loss = weight * loss + (1 - weight) * criterion(logits, y_partner)",
      "loss = (loss + criterion(logits, y_partner)) / 2", MIXUP),
    M("mixup: accuracy by the original's label", "training.py",
      "target = y if weight >= 0.5 else y_partner", "target = y", MIXUP),
    # augmentations
    M("SpecAugment: returns its input unchanged", "data.py",
      "masked = images * keep[:, None]", "return images", SPECAUGMENT),
    M("SpecAugment: masks only time", "data.py",
      "for axis, size in ((1, height), (2, width)):", "for axis, size in ((2, width),):",
      SPECAUGMENT),
    M("SpecAugment: no time shift", "data.py",
      "return masked.gather(3, index[:, None, None, :].expand(n, channels, height, width))",
      "return masked", SPECAUGMENT),
    M("rotate: angle 0", "data.py",
      "functional.rotate(image, float(angle))", "functional.rotate(image, 0.0)",
      f"{CNN}::test_rotate_turns_the_image_by_the_drawn_angle_within_15_degrees"),
    # the MLP's scaler and PCA
    M("FeatureMLP: PCA parameters not copied", "models.py",
      "if pca is not None:", "if False:", PREPROCESSING),
    M("FeatureMLP: scale not applied", "models.py",
      "((x - self.mean) / self.scale - self.pca_mean)", "((x - self.mean) - self.pca_mean)",
      PREPROCESSING),
    M("scaler fitted on every row, not the training rows", "train_mlp.py",
      "scaler = StandardScaler().fit(train_rows)", "scaler = StandardScaler().fit(x)", PREPROCESSING),
    M("PCA fitted on unscaled rows", "train_mlp.py",
      ".fit(scaler.transform(train_rows))", ".fit(train_rows)", PREPROCESSING),
    # segments vote per clip
    M("clip vote: majority of argmax, not mean logits", "training.py",
      "np.stack([logits[rows[c]].mean(0) for c in order])",
      "np.stack([np.bincount(logits[rows[c]].argmax(1), minlength=logits.shape[1]) / len(rows[c])"
      " for c in order])",
      CLIP_VOTE),
    M("clip vote: first segment only", "training.py",
      "np.stack([logits[rows[c]].mean(0) for c in order])",
      "np.stack([logits[rows[c][0]] for c in order])",
      CLIP_VOTE),
    # metrics
    M("metrics: accuracy as balanced accuracy", "training.py",
      '"balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred))',
      '"balanced_accuracy": float(accuracy_score(y_true, y_pred))', METRICS),
    M("metrics: confusion transposed", "training.py",
      "confusion_matrix(y_true, y_pred, labels=", "confusion_matrix(y_pred, y_true, labels=", METRICS),
    # split
    M("split: not stratified", "data.py",
      "by_class.setdefault(label, []).append(clip)", "by_class.setdefault(0, []).append(clip)", SPLIT),
    M("split: test and val swapped", "data.py",  # 80/10/10 makes them alike: tested on 60/10/30
      '"val": sorted(val), "test": sorted(test)}', '"val": sorted(test), "test": sorted(val)}', SPLIT),
    M("split_indices: test items go to val and val to test", "data.py",
      'where = {c: part for part in ("train", "val", "test") for c in split[part]}',
      'where = {c: part for part, p in (("train", "train"), ("val", "test"), ("test", "val"))'
      ' for c in split[p]}',
      SPLIT),
    M("segments of one clip split across parts (segment tag kept)", "audio.py",
      "return stem.split(SEGMENT_TAG)[0]", "return stem", SPLIT),
    M("3-second feature rows of one clip split across parts", "train_mlp.py",
      'return head if tail.isdigit() and head.rpartition(".")[2].isdigit() else stem', "return stem",
      f"{MLP}::test_three_second_table_keeps_a_clips_rows_together"),
    # checkpoint and resume (training.fit)
    M("resume: RNG state not restored", "training.py",
      'set_rng_state(saved["rng"])', "pass", RESUME),
    M("resume: optimizer state not restored", "training.py",
      'optimizer.load_state_dict(saved["optimizer"])', "pass", RESUME),
    M("resume: scheduler state not restored", "training.py",
      'scheduler.load_state_dict(saved["scheduler"])', "pass", RESUME),
    M("resume: history not restored", "training.py",
      'Standing(saved["history"], saved["best_epoch"]', 'Standing([], saved["best_epoch"]', RESUME),
    M("resume: best validation score not restored", "training.py",
      'saved["best_epoch"], saved["best_score"]', 'saved["best_epoch"], -1.0', RESUME),
    M("resume: best weights of a stopped run forgotten", "training.py",
      'best_state = saved["best_model"] or saved["model"]', 'best_state = saved["model"]', RESUME),
    # schedules and early stopping
    M("cosine: scheduler not stepped", "training.py",
      "else:\n            scheduler.step()", "else:\n            pass", STOPPING),
    M("plateau: scheduler not stepped", "training.py", 'scheduler.step(va["loss"])', "pass", STOPPING),
    M("early stopping: one epoch late", "training.py",
      "epoch - standing.best_epoch >= early_stopping.patience",
      "epoch - standing.best_epoch > early_stopping.patience",
      STOPPING),
    M("early stopping: best weights not restored", "training.py",
      "            model.load_state_dict(self.best_state)\n", "            pass\n", STOPPING),
    # time limit
    M("time limit: deadline ignored", "training.py",
      "return bool(deadline) and bool(", "return False and bool(", RESUME),
    M("time limit: a stopped run reported complete", "training.py",
      "return standing.result(model, complete=False)",
      "return standing.result(model, complete=True)", RESUME),
    # prediction repeats training's preprocessing
    M("prediction: resize skipped", "predict.py",
      "if size and image.size != (size, size):", "if False:", PREDICT_IMAGES),
    M("prediction: levels and rgb swapped", "predict.py",
      'if preprocess.get("channels", "rgb") == "levels":',
      'if preprocess.get("channels", "rgb") != "levels":',
      PREDICT_IMAGES),
    M("audio windows: the last one dropped, not padded", "audio.py",
      "y = np.pad(y, (0, max(0, count * n - len(y))))[:count * n]",
      "count = len(y) // n; y = y[:count * n]",
      "tests/test_cnn14.py::test_audio_windows_pad_the_last_one_with_silence"),
    # (also killed by the end-to-end test_predict_from_audio_labels_new_clips_right: a minute)
    M("prediction: feature columns reordered", "predict.py",
      'np.array([[row[c] for c in preprocess["columns"]]], np.float32)',
      'np.array([[row[c] for c in sorted(preprocess["columns"])]], np.float32)',
      f"{MLP}::test_prediction_gives_the_features_in_the_models_column_order"),
    # a finished part is not trained again; an unfinished one is
    M("part_finished: model file ignored", "runs.py",
      "and (not model or model_in(folder) is not None)", "and True", FINISHED),
    M("part_finished: a part stopped by the time limit counts as finished", "runs.py",
      'return bool(metrics) and metrics.get("complete", True)', "return bool(metrics) and True",
      FINISHED),
    # the input path and AMP's bookkeeping
    M("Batches: the data copied to the device per loader", "training.py",
      "self.x, self.y = dataset.x_on(device), dataset.y.to(device)",
      "self.x, self.y = dataset.x.to(device), dataset.y.to(device)",
      f"{CNN}::test_the_parts_of_a_set_share_one_copy_on_the_device"),
    M("GradScaler's skipped steps not counted", "training.py",
      "skipped = batches - (optimizer_steps(optimizer) - steps_before)", "skipped = 0",
      f"{CNN}::test_steps_gradscaler_skips_are_counted_per_epoch"),
    # Kaggle: the relay and what a kernel resumes
    M("relay: the kernel pushed again, not its partner", "kernels/kaggle_loop.py",
      "partner = kernel.relay if best[0].kernel == kernel.id else kernel.id",
      "partner = kernel.id if best[0].kernel == kernel.id else kernel.relay",
      "tests/test_kaggle_loop.py::test_push_alternates_and_says_what_it_resumes_from"),
    M("kernel resume: a file under input/ compared by its path", "kernels/kernel_main.py",
      'named = key in ("weights", "split", "labels") and value', "named = False",
      "tests/test_kernels.py::test_a_run_is_the_same_run_wherever_its_input_files_are_mounted_now"),
    M("compare: a K-fold run killed between folds shown complete", "compare.py",
      "if len(folds) < planned or stopped:", "if stopped:",
      "tests/test_compare.py::test_runs_without_test_figures_are_shown_not_dropped"),
    # intervals: every figure with its uncertainty (uncertainty.py and where it is shown)
    M("interval: the bootstrap without its exact floor", "uncertainty.py",
      "return [min(low, floor[0]), max(high, floor[1])]", "return [low, high]", UNCERTAINTY),
    M("interval: a fold mean's by the normal, not t", "uncertainty.py",
      "stats.t.interval(confidence, len(values) - 1, loc=mean, scale=scale)",
      "stats.norm.interval(confidence, loc=mean, scale=scale)", f"{UNCERTAINTY} {FOLD_SUMMARY}"),
    M("interval: repeated K-fold not corrected for overlap", "uncertainty.py",
      "np.sqrt(1 / len(values) + overlap)", "np.sqrt(1 / len(values))", UNCERTAINTY),
    M("paired: the bootstrap alone calls a difference", "uncertainty.py",
      "(self.interval[0] > 0 or self.interval[1] < 0) and self.p_value < 0.05",
      "self.interval[0] > 0 or self.interval[1] < 0", f"{UNCERTAINTY} {COMPARE_CI}"),
    M("paired: the runs resampled apart", "uncertainty.py",
      "- balanced_accuracies(counts, truth, right_b, n_classes))",
      "- balanced_accuracies(np.random.default_rng().permuted(counts, axis=1), truth, right_b, n_classes))",
      UNCERTAINTY),
    M("metrics: no intervals recorded", "training.py",
      '"kaggle_score": None, **uncertainty.test_intervals(clip_labels, predicted)}',
      '"kaggle_score": None}', FOLD_SUMMARY),
    M("summary: the folds' range for the interval of the mean", "runs.py",
      '"balanced_accuracy_ci": mean_interval(bal, clips=clips)',
      '"balanced_accuracy_ci": [float(bal.min()), float(bal.max())]', FOLD_SUMMARY),
    M("interval: a K-fold mean's without its exact floor", "uncertainty.py",
      "low, high = min(low, floor[0]), max(high, floor[1])\n    lo, hi", "pass\n    lo, hi",
      f"{UNCERTAINTY} {FOLD_SUMMARY}"),
    M("compare: a run recorded without intervals left without", "compare.py",
      "m.update(intervals_from_predictions(path.parent))", "pass", COMPARE_CI),
    M("compare chart: error bars without the interval", "compare.py",
      "yerr=error_bars(shown, key)", 'yerr=[e.get(key + "_std") or 0 for e in shown]', COMPARE_CI),
    M("kernel results: balanced accuracy without its interval", "kernels/kernel_main.py",
      '("balanced accuracy", with_interval("test_balanced_accuracy"))',
      """("balanced accuracy", f"{m['test_balanced_accuracy']:.3f}")""",
      "tests/test_kernels.py::test_the_results_show_each_figure_with_its_interval"),
]


# ----------------------------------------------------------------------------------------------
# The table against the source: every anchor found exactly once, every mutant compiles

def problems(mutation, repo=ROOT):
    """Why the table row cannot be applied to the code in repo ('' when it can)."""
    path = repo / mutation.file
    if not path.is_file():
        return f"no file {mutation.file}"
    source = path.read_text()
    count = source.count(mutation.old)
    if count != 1:
        return f"anchor found {count} times in {mutation.file} (stale table)"
    if mutation.old == mutation.new:
        return "replacement equals the anchor"
    try:
        compile(source.replace(mutation.old, mutation.new), mutation.file, "exec")
    except SyntaxError as e:
        return f"the mutant does not compile: {e.msg} (line {e.lineno})"
    return ""


# ----------------------------------------------------------------------------------------------
# Running tests on a copy of the repository

LIVE = set()  # running pytest processes, killed as a group on Ctrl-C
LIVE_LOCK = threading.Lock()
INTERRUPTED = threading.Event()  # Ctrl-C: start no more


def repository_files():
    """Tracked and untracked-but-not-ignored files: what a checkout of the working tree holds."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def snapshot(dest):
    """Copy the working tree into dest once: every mutant starts from this copy, so editing the
    working tree while the check runs changes nothing in it."""
    for name in repository_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


def pytest(repo, selection, timeout):
    """Run pytest -x on `selection` in `repo`: (return code or None on timeout, output)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider",
               *shlex.split(selection)]
    with LIVE_LOCK:
        if INTERRUPTED.is_set():
            return None, "interrupted"
        proc = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        LIVE.add(proc)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the tests' own subprocesses too
        return None, proc.communicate()[0]
    except KeyboardInterrupt:  # Ctrl-C reaches only us: the tests run in their own session
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        with LIVE_LOCK:
            LIVE.discard(proc)


def stop_all():
    """Ctrl-C: kill the running tests (in other threads) and start no more."""
    with LIVE_LOCK:
        INTERRUPTED.set()
        for proc in LIVE:
            os.killpg(proc.pid, signal.SIGKILL)


def first_failure(output):
    """'test_file.py::test_name' of the first failed or erroring test in pytest's summary, else
    pytest's last line."""
    match = re.search(r"^(?:FAILED|ERROR) tests/(\S+)", output, re.MULTILINE)
    if match:
        return match.group(1)
    lines = output.strip().splitlines()
    return lines[-1][:80] if lines else "?"


def run_mutant(mutation, source, timeout):
    """(status, by, seconds) for one mutation, tested in a temporary copy of source."""
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        repo = shutil.copytree(source, Path(tmp) / "repo")
        path = repo / mutation.file
        path.write_text(path.read_text().replace(mutation.old, mutation.new, 1))
        code, output = pytest(repo, mutation.tests, timeout)
    seconds = time.time() - start
    if code is None:
        return "killed", f"timeout ({timeout} s)", seconds
    if code == 0:
        return "SURVIVED", "", seconds
    if code == 1:
        return "killed", first_failure(output), seconds
    return "error", f"pytest exit {code}: {first_failure(output)}", seconds  # 4, 5: no such test


def baseline(mutations, source, timeout):
    """The guarding tests on the unmutated copy, each distinct selection once (those without
    -k in one run): what failed, if anything."""
    selections = list(dict.fromkeys(m.tests for m in mutations))
    plain = [s for s in selections if "-k" not in shlex.split(s)]
    runs = [" ".join(dict.fromkeys(arg for s in plain for arg in shlex.split(s)))] if plain else []
    runs += [s for s in selections if s not in plain]
    failed = []
    with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as tmp:
        repo = shutil.copytree(source, Path(tmp) / "repo")
        for selection in runs:
            code, output = pytest(repo, selection, timeout * 2)
            if code is None:
                failed.append(f"{selection}: timeout")
            elif code in (4, 5):  # a node id that does not exist, a -k that matches nothing
                failed.append(f"{selection} selects no test; pytest: {first_failure(output)}")
            elif code != 0:
                failed.append(f"{first_failure(output)} fails")
    return failed


# ----------------------------------------------------------------------------------------------
# Command line

def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the mutations and their tests, and exit")
    p.add_argument("-k", dest="names", action="append", default=[], metavar="NAME",
                   help="only the mutations whose name contains NAME (case-insensitive; repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    p.add_argument("--timeout", type=int, default=TIMEOUT,
                   help="seconds for one mutant's tests (default %(default)s)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    chosen = [m for m in MUTATIONS
              if not args.names or any(n.lower() in m.name.lower() for n in args.names)]
    if not chosen:
        print(f"no mutation matches {' or '.join(args.names)}", file=sys.stderr)
        return 1
    if args.list:
        for m in chosen:
            problem = problems(m)
            print(f"{m.name}  [{m.file}]" + (f"  ERROR: {problem}" if problem else ""))
            print(f"    {m.tests}")
        return 1 if any(problems(m) for m in chosen) else 0
    if args.jobs > (os.cpu_count() or 1):
        print(f"note: --jobs {args.jobs} on {os.cpu_count()} cores: the tests will compete for them")
    try:
        with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
            return check(chosen, snapshot(Path(tmp) / "repo"), args.jobs, args.timeout)
    except KeyboardInterrupt:
        print("\ninterrupted: the working tree is untouched, the copies removed", file=sys.stderr)
        return 130


def check(chosen, source, jobs, timeout):
    """Test every chosen mutation on copies of source; print the table and the score."""
    started = time.time()
    stale = {m.name: problems(m, source) for m in chosen if problems(m, source)}
    testable = [m for m in chosen if m.name not in stale]
    for name, problem in stale.items():
        print(f"error: {name}: {problem}", file=sys.stderr)
    print(f"{len(chosen)} mutations; their tests on the unmutated code first ...", flush=True)
    broken = baseline(testable, source, timeout)
    for failure in broken:
        print(f"error: without any mutation, {failure}: fix the test or the table", file=sys.stderr)
    if broken:
        return 1  # every mutant would be "killed" by it: a score would mean nothing
    results = {m.name: ("error", stale[m.name], 0.0) for m in chosen if m.name in stale}
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        try:
            futures = {pool.submit(run_mutant, m, source, timeout): m for m in testable}
            for future in concurrent.futures.as_completed(futures):
                m = futures[future]
                results[m.name] = status, by, seconds = future.result()
                print(f"  {status:8s} {m.name} ({seconds:.0f} s)", flush=True)
        except KeyboardInterrupt:
            stop_all()
            pool.shutdown(cancel_futures=True)  # waits for each running mutant to remove its copy
            raise

    width = max(len(m.name) for m in chosen)
    print(f"\n| {'mutation':{width}s} | result   | by | seconds |")
    print(f"|{'-' * (width + 2)}|----------|----|---------|")
    for m in chosen:
        status, by, seconds = results[m.name]
        print(f"| {m.name:{width}s} | {status:8s} | {by} | {seconds:.0f} |")
    killed = sum(results[m.name][0] == "killed" for m in chosen)
    survived = sum(results[m.name][0] == "SURVIVED" for m in chosen)
    print(f"\nmutation score: {killed}/{len(chosen)} = {killed / len(chosen):.3f} killed, "
          f"{survived} survived ({time.time() - started:.0f} s)")
    errors = [m.name for m in chosen if results[m.name][0] == "error"]
    return 1 if stale or errors else 0


if __name__ == "__main__":
    sys.exit(main())
