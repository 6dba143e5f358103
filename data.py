"""Data for training: spectrogram images decoded once into memory as uint8 (or per batch), feature
arrays, augmentations on whole batches, and the clip-level split shared by every model family.

Used by the trainers, predict.py and the kernels.
"""

import contextlib
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audio import clip_id_of, is_audio, read_conversion
from common import SuiteError, progress, writable, write_json

# ----------------------------------------------------------------------------------------------
# Datasets: spectrogram images decoded once into memory as uint8, or features as float32

def list_images(root, warn=False):
    """(paths, labels, classes) for root/<class>/*.png; classes = sorted sub-folder names (warn:
    say which folders without images are left out)."""
    root = Path(root)
    if not root.is_dir():
        raise SuiteError(f"--data {root}: no such folder (make images with data_conversion.py)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for d in class_dirs:
        files = sorted(d.glob("*.png"))
        paths += files
        labels += [d.name] * len(files)
    classes = sorted(set(labels))
    empty = [d.name for d in class_dirs if d.name not in classes]
    if warn and empty and len(classes) >= 2:
        print(f"warning: {root}: {len(empty)} class folder{'s' if len(empty) > 1 else ''} without "
              f"PNG images left out ({', '.join(empty)}); training on {len(classes)} classes",
              file=sys.stderr)
    if len(classes) < 2 and any(is_audio(p) for d in class_dirs for p in d.iterdir()):
        raise SuiteError(f"--data {root}: audio, not images: make them with python "
                         f"data_conversion.py {root} IMAGES (or train --arch cnn14 on the audio)")
    if len(classes) < 2:
        raise SuiteError(f"--data {root}: need PNG images in at least two class sub-folders, "
                         f"found {len(classes)}")
    return paths, labels, classes


def decode_image(path, img_size, channels="rgb"):
    """PNG -> uint8 tensor (3 or 1, img_size, img_size): the RGB picture (the study's input), or
    with channels="levels" the palette index of our PNGs, which is the dB level itself."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if channels == "levels":
                if im.mode != "P":
                    raise SuiteError(f"{path}: not a palette PNG of data_conversion.py, so it has "
                                     "no dB levels; use --input rgb")
                im = Image.fromarray(np.asarray(im))  # the index as a grey image
            else:
                im = im.convert("RGB")
            if img_size and im.size != (img_size, img_size):
                im = im.resize((img_size, img_size), Image.BILINEAR)
            array = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:  # what PIL raises on damaged files
        raise SuiteError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def batch_collate(batch):
    """Datasets here return whole batches from __getitems__; nothing left to collate."""
    return batch


class ArrayDataset:
    """Inputs already in memory (uint8 images, cached features, feature rows, waveforms) +
    integer labels; a part (train, val, test) is a view of them (rows), sharing their memory.
    __getitems__ returns a whole batch (x, y, index) for a DataLoader; Batches gathers batches
    where the model is, without one."""

    def __init__(self, x, labels, clip_ids, rows=None, paths=None):
        self.x, self.y = x, torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.labels, self.clip_ids = np.asarray(labels), list(clip_ids)
        self.paths = None if paths is None else list(paths)  # the file of each row of x
        self.rows = rows  # positions in x (a view of a larger set without copying it)
        self.device_copies = {}  # device -> x there; one dict for the set and all its parts

    def __len__(self):
        return len(self.y)

    @property
    def holds_images(self):
        return self.x is not None and self.x.dim() == 4

    def x_on(self, device):
        """x on the device, copied there once for the set and all its parts (train, val and
        test hold one copy between them)."""
        if str(device) not in self.device_copies:
            self.device_copies[str(device)] = self.x.to(device)
        return self.device_copies[str(device)]

    def inputs(self, index):
        return self.x[index if self.rows is None else self.rows[index]]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs(index), self.y[index], index

    def subset(self, indices):
        """The items at `indices` (a train/val/test part), sharing memory with this set."""
        import copy
        index = torch.as_tensor(list(indices), dtype=torch.long)
        part = copy.copy(self)
        part.rows = index if self.rows is None else self.rows[index]
        part.y, part.labels = self.y[index], self.labels[index.numpy()]
        part.clip_ids = [self.clip_ids[i] for i in index.tolist()]
        return part

    def __getitem__(self, i):
        x, y, index = self.__getitems__([i])
        return x[0], y[0], index[0]


class LazyImageDataset(ArrayDataset):
    """Decodes PNGs per batch: for image sets larger than the memory budget. An image that
    cannot be decoded then (in a loader worker) is named in a warning and read as silence."""

    def __init__(self, paths, labels, clip_ids, img_size, channels, shape):
        super().__init__(None, labels, clip_ids, paths=paths)
        self.img_size, self.channels, self.shape = img_size, channels, shape

    def decode(self, path):
        try:
            return decode_image(path, self.img_size, self.channels)
        except SuiteError as e:
            print(f"warning: {e}; read as silence", file=sys.stderr)
            return torch.zeros(self.shape, dtype=torch.uint8)

    def inputs(self, index):
        rows = index if self.rows is None else self.rows[index]
        return torch.stack([self.decode(self.paths[i]) for i in rows.tolist()])

    holds_images = True


@dataclass
class ImageData:
    dataset: ArrayDataset   # every image, its label index and clip id
    classes: list
    conversion: dict        # conversion.json: how audio became these images


def native_size(paths):
    """(height, width) of the first readable image."""
    from PIL import Image
    for path in paths:
        with contextlib.suppress(Exception), Image.open(path) as im:
            return im.size[::-1]
    raise SuiteError(f"{Path(paths[0]).parent.parent}: no readable image")


def load_image_data(data_dir, img_size, channels="rgb", cache_mb=4096):
    """Every image of data_dir decoded once into one uint8 tensor when it fits in cache_mb
    (else decoded per batch), resized to img_size x img_size (0: their own size, which must
    then be the same for all). Unreadable images are left out with a warning."""
    from PIL import Image
    paths, labels, classes = list_images(data_dir, warn=True)
    conversion = read_conversion(data_dir)
    if channels == "levels":
        with Image.open(paths[0]) as im:
            if im.mode != "P":
                raise SuiteError(f"--input levels reads the palette PNGs of data_conversion.py; "
                                 f"{paths[0]} is {im.mode}: use --input rgb")
    shape = (1 if channels == "levels" else 3, *((img_size, img_size) if img_size else native_size(paths)))
    mb = len(paths) * math.prod(shape) / 2 ** 20
    lazy = mb > cache_mb
    if lazy:
        print(f"note: {len(paths)} images need {mb:.0f} MiB > --cache-mb {cache_mb}; "
              "decoding per batch instead", file=sys.stderr)
    x = None if lazy else torch.empty((len(paths), *shape), dtype=torch.uint8)
    good = []
    for i, path in enumerate(progress(paths, "images")):
        try:
            if lazy:
                with Image.open(path) as im:  # whole file, checksums: cheap, no decompression
                    im.verify()
            else:
                image = decode_image(path, img_size, channels)
        except SuiteError as e:
            print(f"warning: skipped {e}", file=sys.stderr)
            continue
        except Exception as e:
            print(f"warning: skipped {path}: unreadable image ({type(e).__name__})", file=sys.stderr)
            continue
        if not lazy:
            if image.shape != x.shape[1:]:
                raise SuiteError(f"--data {data_dir}: images differ in size ({path.name}: "
                                 f"{tuple(image.shape[1:])}, others {shape[1:]}); give --img-size N")
            x[len(good)] = image
        good.append(i)
    if len(good) < len(paths) and len({labels[i] for i in good}) < 2:
        raise SuiteError(f"--data {data_dir}: too few readable images ({len(good)} of {len(paths)})")
    paths = [paths[i] for i in good]
    label_index = [classes.index(labels[i]) for i in good]
    clip_ids = [clip_id_of(p.name) for p in paths]
    if lazy:
        dataset = LazyImageDataset(paths, label_index, clip_ids, img_size, channels, shape)
    else:
        dataset = ArrayDataset(x[:len(good)], label_index, clip_ids, paths=paths)
    return ImageData(dataset, classes, conversion)


def item_uniforms(seed, epoch, items, count):
    """(len(items), count) uniform numbers in [0, 1), a pure function of (seed, epoch, item,
    k): splitmix64 of that counter, computed on the items' device. An item is augmented alike
    whatever its batch, device or torchrun rank, and after --resume; a batch's draws cost a few
    tensor operations, not a generator per item."""
    def shift(z, n):  # logical: torch's >> on int64 keeps the sign
        return (z >> n) & ((1 << (64 - n)) - 1)

    def signed(c):
        return c - (1 << 64) if c >= 1 << 63 else c
    key = ((seed * 1_000_003 + epoch) * 1_000_003) % (1 << 62)
    z = (items.to(torch.int64)[:, None] + key) * count \
        + torch.arange(count, device=items.device) + signed(0x9E3779B97F4A7C15)
    z = (z ^ shift(z, 30)) * signed(0xBF58476D1CE4E5B9)
    z = (z ^ shift(z, 27)) * signed(0x94D049BB133111EB)
    z = z ^ shift(z, 31)
    return shift(z, 40).to(torch.float32) / float(1 << 24)


class SpecAugment:
    """SpecAugment on a batch of spectrogram images (uint8, n x C x freq x time), on their
    device: per image two frequency masks and two time masks of up to 15 % each (set to level
    0, i.e. -80 dB), then a random circular shift in time."""

    def __init__(self, masks=2, max_fraction=0.15):
        self.masks, self.max_fraction = masks, max_fraction
        self.draws = 4 * masks + 1  # uniforms per image

    def __call__(self, images, uniforms):
        n, channels, height, width = images.shape
        keep, u = torch.ones(n, height, width, dtype=torch.bool, device=images.device), iter(uniforms.T)
        for axis, size in ((1, height), (2, width)):
            position = torch.arange(size, device=images.device)
            for _ in range(self.masks):
                length = (next(u) * (int(size * self.max_fraction) + 1)).long()
                start = (next(u) * (size - length + 1)).long()
                band = (position >= start[:, None]) & (position < (start + length)[:, None])
                keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
        masked = images * keep[:, None]
        shift = (next(u) * width).long()  # out[..., t] = in[..., t - shift], as torch.roll
        index = (torch.arange(width, device=images.device) - shift[:, None]) % width
        return masked.gather(3, index[:, None, None, :].expand(n, channels, height, width))


class Rotate:
    """The study's augmentation: torchvision's RandomRotation(15) (nearest, no expansion, black
    corners), each image's angle from its uniform."""
    draws = 1

    def __init__(self, degrees=15.0):
        self.degrees = degrees

    def __call__(self, images, uniforms):
        from torchvision.transforms import functional
        angles = (uniforms[:, 0] * 2 - 1) * self.degrees
        return torch.stack([functional.rotate(image, float(angle))
                            for image, angle in zip(images, angles.tolist())])


AUGMENTATIONS = {"none": None, "rotate": Rotate(), "specaugment": SpecAugment()}


def split_parts(dataset, indices):
    """train/val/test views of a dataset (images, audio windows, feature rows)."""
    return tuple(dataset.subset(indices[part]) for part in ("train", "val", "test"))


# ----------------------------------------------------------------------------------------------
# Split: clip-level, stratified, seeded, shared by every model family through split.json

SPLIT_FILE = "split.json"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def _take_per_class(clip_ids, labels, fraction, rng, one_from=3):
    """Stratified pick of `fraction` of each class's clips; at least one from a class that has
    `one_from` clips or more, so small sets still test every class."""
    by_class = {}
    for clip, label in zip(clip_ids, labels):
        by_class.setdefault(label, []).append(clip)
    picked = []
    for label in sorted(by_class):
        clips = sorted(by_class[label])
        n = int(fraction * len(clips) + 0.5)
        if len(clips) >= one_from:
            n = max(n, 1)
        picked += list(rng.permutation(clips)[:n])
    return set(picked)


def check_one_label(clip_ids, labels):
    """A clip (its segments, its rows) has one label, whatever split it is in: a copy under a
    second genre is one line, never a clip trained as two."""
    seen, twice = {}, set()
    for clip, label in zip(clip_ids, labels):
        if seen.setdefault(clip, label) != label:
            twice.add(clip)
    if twice:
        clip = sorted(twice)[0]
        raise SuiteError(f"clip {clip} appears under two labels ({seen[clip]} and another; "
                         f"{len(twice)} such clips); clip file names must be unique across genres")


def make_split(clip_ids, labels, seed=0, fractions=SPLIT_FRACTIONS):
    """{'train','val','test': sorted clip ids}: a pure function of the clip set and seed, so two
    scripts that see the same clips make the same split even without sharing the file."""
    check_one_label(clip_ids, labels)
    pairs = sorted(set(zip(clip_ids, labels)))
    clips, labs = [c for c, _ in pairs], [label for _, label in pairs]
    rng = np.random.default_rng(seed)
    test = _take_per_class(clips, labs, fractions[2], rng)
    rest = [(c, label) for c, label in zip(clips, labs) if c not in test]
    val = _take_per_class([c for c, _ in rest], [label for _, label in rest],
                          fractions[1] / (1 - fractions[2]), rng, one_from=2)
    train = [c for c, _ in rest if c not in val]
    return {"seed": seed, "train": sorted(train), "val": sorted(val), "test": sorted(test)}


def split_hash(split):
    text = json.dumps({k: split[k] for k in ("train", "val", "test")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_split(split_path):
    try:
        split = json.loads(Path(split_path).read_text())
        parts = [set(split[p]) for p in ("train", "val", "test")]
    except (OSError, ValueError, KeyError, TypeError):
        raise SuiteError(f"{split_path}: not a split file (JSON with train/val/test lists)") from None
    twice = (parts[0] & parts[1]) | (parts[0] & parts[2]) | (parts[1] & parts[2])
    if twice:
        raise SuiteError(f"{split_path}: clip {sorted(twice)[0]} is in two parts "
                         f"({len(twice)} such clips)")
    return split


def load_or_make_split(split_path, clip_ids, labels, seed=0, given=False, log=print,
                       resuming=False):
    """Read split_path (made there once, then reused); `given` (--split) leaves out unlisted clips."""
    split_path = Path(split_path)
    present = set(clip_ids)
    if split_path.exists():
        split = read_split(split_path)
        listed = set(split["train"]) | set(split["val"]) | set(split["test"])
        if not given and listed != present:
            changed = (f"{len(present - listed)} new, {len(listed - present)} missing, e.g. "
                       f"{sorted((present - listed) or (listed - present))[0]}")
            if resuming:  # the run's split is its identity: another one is another run
                raise SuiteError(f"the data changed since the run started ({changed}): put it "
                                 "back as it was to resume, or start a new run")
            raise SuiteError(
                f"{split_path} lists {len(listed)} clips but the data has {len(present)} "
                f"({changed}): delete it to make a new split, or pass --split FILE")
        unknown = sorted(listed - present)
        if unknown:
            log(f"warning: {split_path.name}: {len(unknown)} of its {len(listed)} clips are not in "
                f"the data and are left out (first: {unknown[0]})")
        for part in ("train", "val", "test"):
            split[part] = [c for c in split[part] if c in present]
        if not split["train"] or not split["test"]:
            raise SuiteError(f"{split_path}: no train or no test clip of it is in the data")
        return split
    if given:
        raise SuiteError(f"--split {split_path}: no such split file")
    split = make_split(clip_ids, labels, seed)
    write_json(split_path, split)  # every torchrun rank may get here: same bytes, atomic
    log(f"wrote {split_path}: {len(split['train'])} train, {len(split['val'])} val, "
        f"{len(split['test'])} test clips")
    return split


def kfold_splits(clip_ids, labels, k, seed=0):
    """Stratified K-fold at clip level: each fold's test part, validation from the rest."""
    from sklearn.model_selection import StratifiedKFold
    pairs = sorted(set(zip(clip_ids, labels)))
    clips, labs = np.array([c for c, _ in pairs]), np.array([label for _, label in pairs])
    counts = {label: int((labs == label).sum()) for label in set(labs)}
    if min(counts.values()) < k:
        raise SuiteError(f"--folds {k} needs at least {k} clips per class (smallest class has "
                         f"{min(counts.values())})")
    folds = []
    rng = np.random.default_rng(seed)
    for train_idx, test_idx in StratifiedKFold(k, shuffle=True, random_state=seed).split(clips, labs):
        val = _take_per_class(list(clips[train_idx]), list(labs[train_idx]), 1 / 9, rng, one_from=2)
        folds.append({"seed": seed, "train": sorted(c for c in clips[train_idx] if c not in val),
                      "val": sorted(val), "test": sorted(clips[test_idx])})
    return folds


def split_indices(split, clip_ids):
    """Per part, indices of the items (images, segments, rows) whose clip is in that part."""
    where = {c: part for part in ("train", "val", "test") for c in split[part]}
    out = {"train": [], "val": [], "test": []}
    for i, clip in enumerate(clip_ids):
        if clip in where:
            out[where[clip]].append(i)
    return out


def split_location(data_dir, runs_dir):
    """DATA/split.json, shared by every model family trained on that data; kept under the runs
    folder instead (named after the data folder) when the data folder is not ours to write:
    read-only, someone else's, a Kaggle input."""
    data_dir = Path(data_dir)
    beside = data_dir / SPLIT_FILE
    if beside.exists() or writable(data_dir):
        return beside
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return Path(runs_dir) / "splits" / f"{data_dir.name}-{key}.json"


# Splits shipped with the suite, by name (--split NAME): GTZAN's artist-filtered lists (Kereliuk,
# Sturm and Larsen 2015; 443 / 197 / 290 clips), the honest way to report GTZAN accuracy.
NAMED_SPLITS = {"gtzan-filtered": Path(__file__).resolve().parent / "splits" / "gtzan-filtered.json"}


def split_file(name):
    """--split NAME or FILE -> the file."""
    return NAMED_SPLITS.get(name, Path(name))


def split_label(args, split=None):
    """What every report says about where its test clips come from. A random split names the seed
    it was made with: a split.json made earlier is reused whatever this run's --seed."""
    if args.folds:
        return f"{args.folds}-fold (seed {args.seed})"
    if args.split:
        return args.split if args.split in NAMED_SPLITS else f"file {Path(args.split).name}"
    return f"random 80/10/10 (seed {(split or {}).get('seed', args.seed)})"


def resolve_splits(args, clip_ids, labels, split_dir, log=print):
    """[(part name, split)]: the shared split (DATA/split.json, or --split NAME|FILE), or the K
    folds; each with training, validation and test clips."""
    check_one_label(clip_ids, labels)
    if args.folds:
        splits = [(f"fold{i}", s) for i, s in
                  enumerate(kfold_splits(clip_ids, labels, args.folds, args.seed), 1)]
    else:
        path = split_file(args.split) if args.split else split_location(split_dir, args.out)
        splits = [("", load_or_make_split(path, clip_ids, labels, args.seed, bool(args.split), log,
                                          resuming=bool(args.resume)))]
    for name, split in splits:
        indices = split_indices(split, clip_ids)
        empty = [part for part in ("train", "val", "test") if not indices[part]]
        if empty:
            raise SuiteError(f"{name or 'the split'} has no {' or '.join(empty)} clips: each "
                             "class needs at least 3 clips (to train, validate and test)")
    return splits
