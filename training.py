"""Training: the device, torchrun's processes, batches on the device, the one loop every trainer
uses (fit: Adam, plateau or cosine schedule, early stopping, AMP on CUDA, DDP, a checkpoint to
resume from, a time limit), evaluation, and every figure from scikit-learn on one set of
predictions (segments vote per clip).

Used by the trainers, predict.py and reports.py.
"""

import contextlib
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import uncertainty
from common import SuiteError, atomic_write, clock_text, progress, time_left, write_csv, write_json
from data import AUGMENTATIONS, LazyImageDataset, batch_collate, item_uniforms

# ----------------------------------------------------------------------------------------------
# Processes: torchrun's ranks

@dataclass(frozen=True)
class Dist:
    """The processes of one training: torchrun's (Dist.from_env()), or one process (Dist()).
    A trainer makes it once and passes it to what depends on it (split, loaders, fit)."""
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    active: bool = False  # launched by torchrun, even with one process: DDP and a process group

    @classmethod
    def from_env(cls):
        env = os.environ
        return cls(int(env.get("WORLD_SIZE", 1)), int(env.get("RANK", 0)),
                   int(env.get("LOCAL_RANK", 0)), "WORLD_SIZE" in env)

    @property
    def main(self):
        return self.rank == 0

    def setup(self, device):
        """Join the process group (nccl on CUDA, gloo on CPU); returns this rank's device."""
        if not self.active:
            return device
        import torch.distributed as dist
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def sum(self, values, device):
        """All-reduce a list of numbers (sum over ranks)."""
        if not self.active:
            return list(values)
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj):
        if not self.active:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def log(self, line):
        """print on rank 0 only (a warning to stderr)."""
        if self.main:
            print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)

    def finish(self):
        """Wait for every rank, then leave the process group."""
        import torch.distributed as dist
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
# ----------------------------------------------------------------------------------------------
# Training loop: one for every trainer (plateau LR, early stopping or cosine, AMP on CUDA, DDP,
# seeds, a checkpoint at every improvement to resume from, a time limit)

def cuda_unsupported_reason(index=0):
    """Why this torch build cannot run on CUDA device `index` (None when it can). A card older
    than the build's kernels (Kaggle's P100, sm_60, on current wheels) reports CUDA as available
    and then fails at the first operation."""
    major, minor = torch.cuda.get_device_capability(index)
    built = torch.cuda.get_arch_list()
    for arch in built:  # 'sm_86': binary kernels, 'compute_90': PTX compiled on the fly
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        arch_major, arch_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return None  # binaries run on later minor versions of the same major
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return None
    if not built:
        return None
    return (f"{torch.cuda.get_device_name(index)} (sm_{major}{minor}) is not supported by this "
            f"torch build (built for {', '.join(built)})")


def usable_gpus():
    """How many CUDA devices this torch build can run on (0 when none, or the card is too old)."""
    if not torch.cuda.is_available():
        return 0
    return sum(cuda_unsupported_reason(i) is None for i in range(torch.cuda.device_count()))


def device_label(device):
    """What a run's results say it ran on: 'cpu', 'mps', 'cuda (Tesla T4)'."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return f"cuda ({torch.cuda.get_device_name(device.index or 0)})"


def pick_device(name="auto"):
    """cuda (a card this torch build supports), then mps, then cpu; or the one named."""
    if name == "auto":
        if torch.cuda.is_available():
            reason = cuda_unsupported_reason()
            if reason is None:
                return torch.device("cuda")
            print(f"note: {reason}; training on the CPU", file=sys.stderr)
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SuiteError(f"--device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SuiteError(f"--device {name}: CUDA is not available here; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise SuiteError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
        reason = cuda_unsupported_reason(index)
        if reason:
            raise SuiteError(f"--device {name}: {reason}; use --device cpu or another torch build")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise SuiteError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_tools(device):
    """(autocast context factory, GradScaler): real on CUDA, no-ops elsewhere."""
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else contextlib.nullcontext
    return autocast, torch.amp.GradScaler("cuda", enabled=cuda)


class Batches:
    """Batches (x, y, index) of this rank's share of an in-memory dataset, gathered on the
    device: the inputs go there once (no copy on the CPU), then a batch is one index gather, and
    no loader process is needed. The order is DistributedSampler's, so one process and N see
    the same global batches for the same seed (set_epoch reshuffles, as a DataLoader's does)."""

    def __init__(self, dataset, batch_size, shuffle, seed, device, dist=Dist()):
        from torch.utils.data import DistributedSampler
        self.dataset, self.batch_size = dataset, max(1, batch_size // dist.world)
        self.sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank,
                                          shuffle=shuffle, seed=seed, drop_last=False)
        self.x, self.y = dataset.x_on(device), dataset.y.to(device)
        rows = dataset.rows if dataset.rows is not None else torch.arange(len(dataset))
        self.rows = rows.to(device)

    def __len__(self):
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        order = torch.as_tensor(list(self.sampler), dtype=torch.long, device=self.y.device)
        for batch in order.split(self.batch_size):
            yield self.x[self.rows[batch]], self.y[batch], batch


def make_loader(dataset, batch_size, shuffle, seed, workers, device, dist=Dist()):
    """Batches of this rank's share: Batches for data in memory; for images decoded per batch
    (LazyImageDataset) a DataLoader, its `workers` processes decoding. Both sample with
    DistributedSampler, even for one process, so one process and N processes see the same
    global batches for the same seed; the DataLoader's own generator keeps its draws out of the
    global one (dropout draws the same with or without workers)."""
    if not isinstance(dataset, LazyImageDataset):
        return Batches(dataset, batch_size, shuffle, seed, device, dist)
    from torch.utils.data import DataLoader, DistributedSampler
    sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank,
                                 shuffle=shuffle, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=max(1, batch_size // dist.world), sampler=sampler,
                      collate_fn=batch_collate, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed),
                      pin_memory=device.type == "cuda")


def on_device(model, device, images):
    """The model on the device; a network that reads images in channels-last memory, where
    convolutions run faster (measured 1.4x for SpecNet on this CPU; on GPUs, tensor cores)."""
    return model.to(device, memory_format=torch.channels_last if images else torch.preserve_format)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def mixup_pairs(x, y, alpha, rng):
    """Convex mixes of the batch with a shuffled copy of itself: (mixed x, partner labels,
    weight of the original), weight ~ Beta(alpha, alpha); draws from the NumPy generator rng."""
    weight = float(rng.beta(alpha, alpha))
    partner = torch.from_numpy(rng.permutation(len(y))).to(x.device)
    return weight * x.float() + (1 - weight) * x[partner].float(), y[partner], weight


def train_epoch(model, loader, criterion, optimizer, scaler, autocast, device, desc="train",
                mixup=0.0, rng=None, augment=None, seed=0, epoch=0, dist=Dist()):
    """One pass over this rank's share; loss and accuracy over all ranks, and the optimizer
    steps GradScaler skipped (inf/NaN gradients under AMP). augment (AUGMENTATIONS) transforms
    each batch on the device, its draws item_uniforms(seed, epoch, item). mixup > 0 trains on
    mixed pairs drawn from rng, the loss mixed with the same weight; a mix is predicted right
    when it gets the label of the larger share. Sums stay on the device until the end: no step
    waits for the host."""
    model.train()
    start, steps_before = time.time(), optimizer_steps(optimizer)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct, count, batches = torch.zeros((), dtype=torch.long, device=device), 0, 0
    for x, y, index in progress(loader, desc, unit="batch", leave=False, show=dist.main):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if augment is not None:
            x = augment(x, item_uniforms(seed, epoch, index.to(device), augment.draws))
        target = y
        if mixup:
            x, y_partner, weight = mixup_pairs(x, y, mixup, rng)
            target = y if weight >= 0.5 else y_partner
        with autocast():
            logits = model(x)
            loss = criterion(logits, y)
            if mixup:
                loss = weight * loss + (1 - weight) * criterion(logits, y_partner)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == target).sum()
        count, batches = count + len(y), batches + 1
    total_loss, correct, count = dist.sum([total_loss.item(), correct.item(), count], device)
    # every rank skips the same steps (their gradients are one all-reduced sum)
    skipped = batches - (optimizer_steps(optimizer) - steps_before)
    return {"loss": total_loss / count, "acc": correct / count, "skipped": skipped,
            "seconds": time.time() - start}


def optimizer_steps(optimizer):
    """Steps the optimizer has taken: Adam's own count, which a step GradScaler skips (inf or
    NaN gradients) leaves as it was."""
    return max((int(state["step"]) for state in optimizer.state.values() if "step" in state),
               default=0)


@torch.inference_mode()
def predict_logits(model, loader, autocast, device, forward=None, desc=None, dist=Dist()):
    """Outputs (logits, or `forward`'s features) for the whole dataset in its order, each rank
    computing its share and all of them gathered. desc: show a progress bar."""
    model.eval()
    indices, outputs = [], []
    for x, _, index in progress(loader, desc, unit="batch", leave=False,
                                show=desc is not None and dist.main):
        with autocast():
            outputs.append((forward or model)(x.to(device, non_blocking=True)).float())
        indices.append(index)
    mine = (torch.cat(indices).cpu().numpy(), torch.cat(outputs).cpu().numpy())  # one copy
    out = np.zeros((len(loader.dataset), mine[1].shape[1]), dtype=np.float32)
    for index, logits in dist.gather(mine):  # DistributedSampler pads with repeats: same values
        out[index] = logits
    return out


def evaluate(model, loader, criterion, autocast, device, dist=Dist()):
    """Loss over items; accuracy and balanced accuracy at clip level (segments vote)."""
    dataset = loader.dataset
    logits = predict_logits(model, loader, autocast, device, dist=dist)
    loss = criterion(torch.from_numpy(logits), dataset.y).item()
    scores = clip_scores(logits, dataset.labels, dataset.clip_ids)
    return {"loss": loss, "acc": scores["accuracy"], "balanced_acc": scores["balanced_accuracy"],
            "logits": logits}


@dataclass
class FitResult:
    history: list        # a dict per epoch: HISTORY_COLUMNS
    best_epoch: int      # the epoch whose weights the model holds now
    skipped_steps: int   # optimizer steps GradScaler skipped (AMP on CUDA)
    complete: bool = True  # False: stopped by the time limit, to be resumed from its checkpoint


@dataclass(frozen=True)
class EarlyStopping:
    """Stop once `patience` epochs pass without a better validation balanced accuracy (not before
    epoch `min_epochs`), and end with the best epoch's weights."""
    patience: int = 5
    min_epochs: int = 0


SCHEDULES = ("plateau", "cosine")


def fit_options(args):
    """fit()'s keyword arguments from a trainer's flags. --schedule plateau (the study's): the lr
    x0.1 when the validation loss stalls, early stopping, the best epoch's weights; cosine: every
    epoch trained, the last epoch's weights (choosing an epoch by a few validation clips picks
    noise)."""
    plateau = args.schedule == "plateau"
    return {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
            "schedule": args.schedule, "weight_decay": args.weight_decay, "mixup": args.mixup,
            "early_stopping": EarlyStopping(args.patience, args.min_epochs) if plateau else None,
            "workers": args.workers}


def make_scheduler(optimizer, schedule, epochs):
    """plateau: ReduceLROnPlateau on the validation loss (x0.1, patience 3); cosine: the lr falls
    from its start to 0 over `epochs`."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=3)


def rng_state():
    """The random generators training draws from outside its own seeded ones (dropout: torch's),
    as tensors (the checkpoint loads with weights_only=True)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class BadCheckpoint(SuiteError):
    """A checkpoint.pt the run cannot go on from: saying `--resume` again would not help."""


def save_checkpoint(path, state):
    """All that training depends on (a plain dict: weights, optimizer, scheduler, scaler,
    early-stopping state, random generators, history) into path, atomically; then beside it
    checkpoint.json, which says where it stands (what a resumed run starts after) without loading
    it."""
    path = Path(path)
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")
    write_checkpoint_summary(path, state)


def write_checkpoint_summary(path, state):
    """checkpoint.json from the state in checkpoint.pt. A kill between the two writes leaves it
    an epoch behind: a resumed run rewrites it from the state it loaded."""
    write_json(Path(path).with_suffix(".json"), {"epochs_done": len(state["history"]),
                                                 "best_epoch": state["best_epoch"]})


def load_checkpoint(path, device):
    """The state save_checkpoint wrote; a damaged file (cut short by a full disk or a killed copy)
    or one trained on another kind of device is one line saying what to do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        trained_on = state["device_type"]
    except Exception as e:
        raise BadCheckpoint(f"{path} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:80]}); "
                            "the run cannot go on from it: copy the file again if a copy was cut "
                            "short, or train anew with --overwrite") from None
    if trained_on != device.type:  # AMP and kernels differ: not the same run
        raise SuiteError(f"{path}: trained on {trained_on}; resume it with --device {trained_on}")
    return state


def fit(model, train_set, val_set, *, criterion, epochs, lr, batch_size, seed, device,
        schedule="plateau", early_stopping=None, weight_decay=0.0, mixup=0.0, augment="none",
        param_groups=None, workers=1, checkpoint=None, deadline=None, clock=time.time,
        dist=Dist(), log=print):
    """Train `model` with Adam (param_groups may give parts of the model their own lr) and the
    lr `schedule` (make_scheduler), the training images augmented (AUGMENTATIONS[augment],
    seeded by `seed`); returns a FitResult. A network on images trains in channels-last
    memory (faster convolutions on CPU and GPU).

    early_stopping (EarlyStopping): stop when validation stops improving and end with the best
    epoch's weights; None: train every epoch and end with the last one's. AMP on CUDA; one
    device or torchrun (DDP, `dist`). checkpoint: a file written (save_checkpoint) at every
    improvement, or after every epoch without early stopping; if it exists, training goes on from
    it and ends as an uninterrupted run would. deadline (seconds on `clock`, which is read when
    each epoch starts and ends): no epoch is started that would end after it; the state is
    checkpointed and the result says it is not complete."""
    if not len(train_set) or not len(val_set):
        raise SuiteError(f"{len(train_set)} training and {len(val_set)} validation items: each "
                         "class needs at least 3 clips (one to train, validate and test)")
    model = on_device(model, device, train_set.holds_images)
    trainable = param_groups or [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay,
                                 fused=device.type in ("cpu", "cuda"))  # one kernel: 2x on a big head
    scheduler = make_scheduler(optimizer, schedule, epochs)
    autocast, scaler = amp_tools(device)
    net = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    loader_workers = workers if isinstance(train_set, LazyImageDataset) and workers > 1 else 0
    train_loader = make_loader(train_set, batch_size, True, seed, loader_workers, device, dist)
    val_loader = make_loader(val_set, batch_size, False, seed, loader_workers, device, dist)
    parts = (model, optimizer, scheduler, scaler)
    standing = Standing()
    if checkpoint and Path(checkpoint).exists():
        standing = resume(checkpoint, *parts, device, early_stopping, dist)
        if dist.main:
            log(f"resuming from {checkpoint} after epoch {len(standing.history)}" + (
                f" (best so far: epoch {standing.best_epoch}, {standing.best_score:.3f})"
                if early_stopping else ""))
    epoch_seconds = []  # this session's, each with its validation
    for epoch in range(len(standing.history) + 1, epochs + 1):
        started = clock()
        if out_of_time(deadline, started, epoch_seconds, device, dist):
            if dist.main:
                log(f"time limit: stopping before epoch {epoch} (" + (
                    f"an epoch takes about {clock_text(max(epoch_seconds))}" if epoch_seconds
                    else "the time is up") + "); continue with --resume")
                if checkpoint:  # where it stands, and the best weights when they differ
                    best = None if standing.best_epoch == len(standing.history) else standing.best_state
                    save_checkpoint(checkpoint, training_state(*parts, standing, device, best))
            return standing.result(model, complete=False)
        train_loader.sampler.set_epoch(epoch)
        if hasattr(train_loader, "generator"):  # a DataLoader's workers
            train_loader.generator.manual_seed(seed * 100003 + epoch)
        lr_now = optimizer.param_groups[0]["lr"]
        tr = train_epoch(net, train_loader, criterion, optimizer, scaler, autocast, device,
                         desc=f"epoch {epoch}/{epochs}", mixup=mixup,
                         rng=np.random.default_rng([seed, epoch]), augment=AUGMENTATIONS[augment],
                         seed=seed, epoch=epoch, dist=dist)
        va = evaluate(net, val_loader, criterion, autocast, device, dist)
        if schedule == "plateau":
            scheduler.step(va["loss"])  # every rank sees the same gathered val loss: same decision
        else:
            scheduler.step()
        improved = standing.record(epoch, tr, va, lr_now, model, keep_best=early_stopping is not None)
        if improved and checkpoint and dist.main:
            save_checkpoint(checkpoint, training_state(*parts, standing, device))  # the model to keep
        epoch_seconds.append(clock() - started)
        if dist.main:
            log(f"epoch {epoch:3d}  train loss {tr['loss']:.4f} acc {tr['acc']:.3f}  "
                f"val loss {va['loss']:.4f} acc {va['acc']:.3f} bal {va['balanced_acc']:.3f}  "
                f"lr {lr_now:.1e}  {tr['seconds']:.1f}s{'  *' if improved and early_stopping else ''}"
                + time_left(deadline))
        if early_stopping and epoch - standing.best_epoch >= early_stopping.patience \
                and epoch >= early_stopping.min_epochs:
            if dist.main:
                log(f"early stop: no better validation balanced accuracy for {early_stopping.patience} "
                    f"epochs; best epoch {standing.best_epoch} ({standing.best_score:.3f})")
            break
    return standing.result(model)


@dataclass
class Standing:
    """Where a training stands between epochs: its history, the best epoch so far (and, with
    early stopping, its weights to end with), GradScaler's skipped steps."""
    history: list = field(default_factory=list)  # a dict per epoch: HISTORY_COLUMNS
    best_epoch: int = 0
    best_score: float = -1.0  # validation balanced accuracy of best_epoch
    best_state: dict = None
    skipped: int = 0

    def record(self, epoch, tr, va, lr, model, *, keep_best):
        """Add the epoch (train_epoch's and evaluate's figures) to the history; True when its
        weights are the ones to keep: a better validation score, or every epoch without
        early stopping (keep_best False: the last weights are kept)."""
        seconds = (self.history[-1]["seconds"] if self.history else 0.0) + tr["seconds"]
        self.history.append({"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                             "val_loss": va["loss"], "val_acc": va["acc"],
                             "val_balanced_acc": va["balanced_acc"], "lr": lr, "seconds": seconds})
        self.skipped += tr["skipped"]
        improved = not keep_best or va["balanced_acc"] > self.best_score
        if improved:
            self.best_score, self.best_epoch = va["balanced_acc"], epoch
            if keep_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return improved

    def result(self, model, complete=True):
        """The FitResult, the model given the weights to end with."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return FitResult(self.history, self.best_epoch, self.skipped, complete)


def training_state(model, optimizer, scheduler, scaler, standing, device, best_model=None):
    """What a checkpoint holds: all that the next epoch depends on, as a plain dict (best_model:
    the weights to end with, when they are not the model's own)."""
    return {"model": model.state_dict(), "best_model": best_model,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "history": standing.history,
            "best_epoch": standing.best_epoch, "best_score": standing.best_score,
            "skipped_steps": standing.skipped, "rng": rng_state(), "device_type": device.type}


def resume(checkpoint, model, optimizer, scheduler, scaler, device, early_stopping, dist):
    """Load the checkpoint's states into the model, optimizer, scheduler, scaler and random
    generators; the Standing it saved."""
    saved = load_checkpoint(checkpoint, device)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    standing = Standing(saved["history"], saved["best_epoch"], saved["best_score"],
                        skipped=saved["skipped_steps"])
    if early_stopping:  # the weights to end with, unless a better epoch comes
        standing.best_state = saved["best_model"] or saved["model"]
    set_rng_state(saved["rng"])
    if dist.main:
        write_checkpoint_summary(checkpoint, saved)
    return standing


def out_of_time(deadline, now, epoch_seconds, device, dist):
    """Whether the longest epoch so far, with a 20 % margin, would end after the deadline (all
    ranks agree)."""
    return bool(deadline) and bool(
        dist.sum([now + 1.2 * max(epoch_seconds, default=0.0) > deadline], device)[0])


# ----------------------------------------------------------------------------------------------
# Metrics: every figure from scikit-learn on one set of predictions; segments vote per clip

def clip_vote(logits, labels, clip_ids):
    """Mean logits per clip: (clip ids in first-seen order, clip logits, clip labels)."""
    order, rows = [], {}
    for i, clip in enumerate(clip_ids):
        if clip not in rows:
            order.append(clip)
            rows[clip] = []
        rows[clip].append(i)
    clip_logits = np.stack([logits[rows[c]].mean(0) for c in order])
    clip_labels = np.array([labels[rows[c][0]] for c in order])
    return order, clip_logits, clip_labels


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classification_scores(y_true, y_pred, n_classes):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny sets: classes absent from y_true
        return {"accuracy": float(accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, average="macro",
                                           labels=list(range(n_classes)), zero_division=0)),
                "confusion": confusion_matrix(y_true, y_pred, labels=list(range(n_classes))).tolist()}


def clip_scores(logits, labels, clip_ids):
    _, clip_logits, clip_labels = clip_vote(logits, labels, clip_ids)
    return classification_scores(clip_labels, clip_logits.argmax(1), logits.shape[1])


def test_metrics(model_name, classes, logits, test_set, probabilities=None):
    """Clip-level figures (segments vote) with their 95 % intervals over the test clips,
    segment-level beside them when there are segments; the sklearn report; per clip: id, true
    and predicted class, class probabilities (softmax of the clip's mean logits unless given)."""
    from sklearn.metrics import classification_report
    clips, clip_logits, clip_labels = clip_vote(logits, test_set.labels, test_set.clip_ids)
    predicted = clip_logits.argmax(1)
    s = classification_scores(clip_labels, predicted, len(classes))
    metrics = {"model": model_name, "test_accuracy": s["accuracy"],
               "test_balanced_accuracy": s["balanced_accuracy"], "test_macro_f1": s["macro_f1"],
               "classes": list(classes), "confusion": s["confusion"], "n_test": len(clips),
               "kaggle_score": None, **uncertainty.test_intervals(clip_labels, predicted)}
    if len(test_set) > len(clips):
        seg = classification_scores(test_set.labels, logits.argmax(1), len(classes))
        metrics.update({"segment_test_accuracy": seg["accuracy"],
                        "segment_test_balanced_accuracy": seg["balanced_accuracy"],
                        "segment_test_macro_f1": seg["macro_f1"], "n_test_segments": len(test_set)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = classification_report(clip_labels, predicted, labels=list(range(len(classes))),
                                       target_names=list(classes), zero_division=0)
    predictions = (clips, clip_labels, softmax(clip_logits) if probabilities is None else probabilities)
    return metrics, report, predictions


def write_predictions(path, classes, clip_ids, truth, probabilities):
    """predictions.csv: per test clip its id, true and predicted class, and each class's
    probability (what compare.py --ensemble averages)."""
    write_csv(path, ["clip_id", "true", "predicted", *(f"p_{c}" for c in classes)],
              [(c, classes[t], classes[int(np.argmax(p))], *(f"{q:.6f}" for q in p))
               for c, t, p in zip(clip_ids, truth, probabilities)])


def majority_class(classes, labels):
    """The most common class of a training part: the label of a test file that cannot be read."""
    return classes[int(np.bincount(labels).argmax())]
