"""The media store: extensions from the bytes, names that cannot leave static/images."""

import os

import pytest

from fakeupstream.files import WEBP_1X1, png
from pgw.media import MediaStore, image_extension

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 32


def test_extension_is_sniffed_from_the_bytes():
    assert image_extension(png(2, 2, (1, 2, 3))) == "png"
    assert image_extension(WEBP_1X1) == "webp"
    assert image_extension(JPEG) == "jpg"
    assert image_extension(b"<html>not an image</html>") is None


def test_saved_names_never_collide_and_keep_the_bytes(tmp_path):
    store = MediaStore(str(tmp_path))
    names = {store.save_image(WEBP_1X1) for _ in range(20)}
    assert len(names) == 20 and all(n.endswith(".webp") for n in names)
    name = names.pop()
    with open(store.path(name), "rb") as f:
        assert f.read() == WEBP_1X1
    assert store.save_image(b"plain text") is None


def test_sandbox_file_keeps_a_safe_version_of_its_name(tmp_path):
    store = MediaStore(str(tmp_path))
    name = store.save_file("/mnt/data/../我的 report.v2.csv", b"a,b\n")
    assert name.startswith("report_v2_") and name.endswith(".csv")
    assert os.path.dirname(store.path(name)) == str(tmp_path)


@pytest.mark.parametrize("name", ["../conf/config.json", "..", ".gitkeep", "/etc/passwd", "a/b.png",
                                  "a\\b.png", "x.png\x00", "", "nope.png"])
def test_names_outside_the_store_are_refused(tmp_path, name):
    store = MediaStore(str(tmp_path))
    (tmp_path / ".gitkeep").write_bytes(b"")
    assert store.path(name) is None


def test_sweep_removes_only_saved_files_older_than_the_cutoff(tmp_path):
    store = MediaStore(str(tmp_path))
    old = store.save_image(png(1, 1, (0, 0, 0)))
    new = store.save_file("/mnt/data/report.csv", b"a,b\n")
    other = tmp_path / "notes_20200101000000.txt"  # not a name the store gives out
    other.write_text("keep me")
    for name in (old, other.name):
        os.utime(tmp_path / name, (1_000_000, 1_000_000))
    assert store.remove_older_than(2_000_000) == 1
    assert sorted(os.listdir(tmp_path)) == sorted([new, other.name])
    assert store.remove_older_than(2_000_000) == 0


def test_gateway_sweeps_old_saved_files_when_told(gateway_factory, tmp_path):
    import time
    store = MediaStore(str(tmp_path))
    old, fresh = store.save_image(png(1, 1, (0, 0, 0))), store.save_image(png(1, 1, (9, 9, 9)))
    os.utime(tmp_path / old, (time.time() - 3 * 3600,) * 2)
    gateway_factory(IMAGES_DIR=str(tmp_path), IMAGES_MAX_AGE_HOURS=2)
    deadline = time.monotonic() + 10
    while (tmp_path / old).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(os.listdir(tmp_path)) == [fresh]


def test_the_same_upstream_file_shown_twice_in_an_answer_is_fetched_and_saved_once(tmp_path):
    import asyncio

    from pgw.converters.events import Image, SandboxFile
    from pgw.converters.render import FetchImage, FetchSandboxFile, image_text
    from pgw.runtime import MediaDownloads

    class Upstream:
        calls = []

        async def download_url(self, key, path, **query):
            self.calls.append(path)
            return "https://blob.example/" + path, None

        async def fetch_url(self, url):
            class Got:
                status, too_big = 200, False
                body = png(2, 2, (1, 2, 3)) if "files/" in url else b"a,b\n"
            return Got()

    class Conversion:
        conversation_id = "c1"

    store = MediaStore(str(tmp_path))
    downloads = MediaDownloads(Upstream(), store, "k", "https://gw")
    downloads.conversion = Conversion()

    def show(file_id):
        return FetchImage(Image(file_id), lambda url: image_text("", "plain", url))

    async def run():
        return [await downloads.perform(show("file-a")), await downloads.perform(show("file-a")),
                await downloads.perform(show("file-b")),
                await downloads.perform(FetchSandboxFile(SandboxFile("/mnt/data/x.csv", "m1"), lambda u: u)),
                await downloads.perform(FetchSandboxFile(SandboxFile("/mnt/data/x.csv", "m1"), lambda u: u))]
    texts = asyncio.run(run())
    assert texts[0] == texts[1] != texts[2] and texts[3] == texts[4]
    assert Upstream.calls == ["files/file-a/download", "files/file-b/download", "conversation/c1/interpreter/download"]
    assert len(os.listdir(tmp_path)) == 3
    assert len(downloads.saved) == 3
