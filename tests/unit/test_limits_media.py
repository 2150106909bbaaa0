"""Saved files: a total size budget (oldest removed first) beside the age limit; symlinks are
neither served nor counted nor followed."""

import os

from pgw.media import MediaStore


def _saved(store, tmp_path, size, mtime):
    name = store.save_file("/mnt/data/f.bin", b"x" * size)
    os.utime(tmp_path / name, (mtime, mtime))
    return name


def test_the_oldest_files_go_first_until_the_rest_fit_the_budget(tmp_path):
    store = MediaStore(str(tmp_path))
    oldest, middle, newest = (_saved(store, tmp_path, 1000, t) for t in (1_000, 2_000, 3_000))
    assert store.sweep(None, 2500) == 1
    assert sorted(os.listdir(tmp_path)) == sorted([middle, newest])
    assert store.sweep(None, 2500) == 0
    assert store.sweep(None, 999) == 2 and os.listdir(tmp_path) == []
    assert oldest not in os.listdir(tmp_path)


def test_age_and_budget_together(tmp_path):
    store = MediaStore(str(tmp_path))
    old = _saved(store, tmp_path, 10, 1_000)
    big = _saved(store, tmp_path, 5000, 5_000)
    small = _saved(store, tmp_path, 10, 6_000)
    assert store.sweep(2_000, 1000) == 2  # old by age, then big by size
    assert os.listdir(tmp_path) == [small]
    assert old != big


def test_symlinks_are_not_served_counted_or_followed(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("do not serve me")
    images = tmp_path / "images"
    store = MediaStore(str(images))
    link = "image_20240101000000_deadbeef.png"  # a name the store could have given
    os.symlink(outside, images / link)
    assert store.open(link) is None and store.path(link) is None
    assert store.sweep(None, 0) == 0  # the link is not the store's file: untouched
    assert outside.exists() and (images / link).is_symlink()
    real = store.save_file("/mnt/data/a.txt", b"abc")
    with store.open(real) as f:
        assert f.read() == b"abc"
