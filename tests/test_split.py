import json

import pytest

import audio
import common
import data


def clips(n_per_class, classes=("a", "b", "c", "d")):
    ids = [f"{c}.{i:05d}" for c in classes for i in range(n_per_class)]
    return ids, [i.split(".")[0] for i in ids]


def test_split_is_stratified_80_10_10_and_deterministic():
    ids, labels = clips(20)
    s = data.make_split(ids, labels, seed=3)
    assert s == data.make_split(list(reversed(ids)), list(reversed(labels)), seed=3)
    assert s != data.make_split(ids, labels, seed=4)
    for part, n in (("train", 16), ("val", 2), ("test", 2)):
        for c in "abcd":
            assert sum(x.startswith(c) for x in s[part]) == n
    assert set(s["train"]) | set(s["val"]) | set(s["test"]) == set(ids)
    assert not set(s["train"]) & set(s["test"]) and not set(s["val"]) & set(s["test"])


def test_each_part_takes_its_own_fraction():
    """fractions are (train, val, test): with 60/10/30, each class of 10 clips gives 6, 1, 3."""
    ids, labels = clips(10)
    s = data.make_split(ids, labels, seed=0, fractions=(0.6, 0.1, 0.3))
    for part, n in (("train", 6), ("val", 1), ("test", 3)):
        assert [sum(x.startswith(c) for x in s[part]) for c in "abcd"] == [n] * 4, part


def test_small_classes_still_appear_in_val_and_test():
    ids, labels = clips(5)
    s = data.make_split(ids, labels)
    assert len(s["test"]) == 4 and len(s["val"]) == 4 and len(s["train"]) == 12


def test_segments_inherit_their_clip_split():
    ids, labels = clips(10)
    s = data.make_split(ids, labels)
    seg_ids = [i for i in ids for _ in range(3)]
    parts = data.split_indices(s, seg_ids)
    for part, idx in parts.items():
        assert {seg_ids[i] for i in idx} == set(s[part])


def test_split_file_written_once_reused_and_checked(tmp_path):
    ids, labels = clips(10)
    path = tmp_path / "split.json"
    first = data.load_or_make_split(path, ids, labels, seed=1)
    assert json.loads(path.read_text())["test"] == first["test"]
    assert data.load_or_make_split(path, ids, labels, seed=99)["test"] == first["test"]
    with pytest.raises(common.SuiteError, match="1 new"):
        data.load_or_make_split(path, ids + ["a.99999"], labels + ["a"])


def test_given_split_leaves_out_unlisted_clips(tmp_path):
    ids, labels = clips(10)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"train": ids[:5] + ids[10:15], "val": [ids[5], ids[15]],
                                "test": [ids[6], ids[16]]}))
    s = data.load_or_make_split(path, ids, labels, given=True)
    assert len(s["train"]) + len(s["val"]) + len(s["test"]) == 14


def test_kfold_partitions_clips():
    ids, labels = clips(10)
    folds = data.kfold_splits(ids, labels, 5, seed=0)
    assert sorted(c for f in folds for c in f["test"]) == sorted(ids)
    for f in folds:
        assert not (set(f["train"]) | set(f["val"])) & set(f["test"])
        assert len(f["val"]) == 4  # one clip of each class
    with pytest.raises(common.SuiteError, match="at least 11 clips per class"):
        data.kfold_splits(ids, labels, 11)


def test_clip_id_of_segment_names():
    assert audio.clip_id_of("blues.00000__s03.png") == "blues.00000"
    assert audio.clip_id_of("blues.00000.wav") == "blues.00000"
    assert audio.normalize_id("00042.wav") == audio.normalize_id("42") == "42"
