"""Files the gateway keeps for its clients: images and sandbox files fetched from the upstream.

Upstream download URLs expire, so the bytes are saved under IMAGES_DIR (``static/images/``) and served by
the gateway itself at ``/images/<name>`` (handlers/images.py); with IMAGES_MAX_AGE_HOURS set they
are deleted that long after they were saved (the gateway sweeps the directory now and then). Names are collision-free
(time + random part, created exclusively) and made of safe characters only, so a name taken
from a URL can be checked with one pattern before it gets near the file system.
"""

import mimetypes
import os
import re
import secrets
import stat
import time

import filetype

# What a saved file's name may look like (no slashes, no leading dot, no "..").
NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\Z")
# The names _save gives: stem_<YYYYmmddHHMMSS>_<8 hex>.ext; the only files a sweep deletes.
SAVED = re.compile(r"\A[A-Za-z0-9_-]+_[0-9]{14}_[0-9a-f]{8}\.[A-Za-z0-9_-]+\Z")
IMAGE_EXTENSIONS = {"png": "png", "jpg": "jpg", "webp": "webp", "gif": "gif"}


def image_extension(data):
    """The extension the image bytes call for (sniffed, not trusted from headers), or None."""
    kind = filetype.guess(data[:262])
    return IMAGE_EXTENSIONS.get(kind.extension) if kind is not None else None


def _safe(text, limit=60):
    text = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return text[:limit] or "file"


class MediaStore:
    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def save_image(self, data):
        """Save image bytes; the file name (``image_<time>_<random>.<ext>``), or None if the
        bytes are not an image."""
        ext = image_extension(data)
        if ext is None:
            return None
        return self._save("image", ext, data)

    def save_file(self, sandbox_path, data):
        """Save a file the code interpreter wrote, keeping its base name and extension."""
        base = sandbox_path.rsplit("/", 1)[-1]
        stem, dot, ext = base.rpartition(".")
        if not dot:
            stem, ext = base, "bin"
        return self._save(_safe(stem), _safe(ext, 10), data)

    def _save(self, stem, ext, data):
        while True:
            name = "%s_%s_%s.%s" % (stem, time.strftime("%Y%m%d%H%M%S"), secrets.token_hex(4), ext)
            try:
                with open(os.path.join(self.directory, name), "xb") as f:
                    f.write(data)
                return name
            except FileExistsError:
                continue

    def remove_older_than(self, cutoff):
        """Delete saved files last changed before ``cutoff`` (epoch seconds); how many went."""
        return self.sweep(cutoff, None)

    def sweep(self, cutoff=None, max_total_bytes=None):
        """Delete saved files changed before ``cutoff`` (epoch seconds), then, while the rest
        take more than ``max_total_bytes``, the oldest of them; how many went.

        Only names this store gives out are touched, whatever else sits in the directory, and
        a symlink is never followed (nor counted). Several workers may sweep at once: a file
        another one removed is simply gone.
        """
        removed = 0
        kept = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not SAVED.match(entry.name):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    info = entry.stat(follow_symlinks=False)
                    if cutoff is not None and info.st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                    else:
                        kept.append((info.st_mtime, entry.name, info.st_size, entry.path))
                except FileNotFoundError:
                    pass
        if max_total_bytes is not None:
            total = sum(size for _m, _n, size, _p in kept)
            for _mtime, _name, size, path in sorted(kept):
                if total <= max_total_bytes:
                    break
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
                total -= size
        return removed

    def open(self, name):
        """The saved file ``name`` (from a URL) open for reading, or None (not a name we give
        out, gone, or not a regular file: symlinks are not followed)."""
        if not isinstance(name, str) or not NAME.match(name):
            return None
        try:
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None  # missing, a symlink (ELOOP), unreadable
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            return None
        return f

    def path(self, name):
        """The saved file's path for a name from a URL, or None (not a name we give out, gone, or a symlink)."""
        f = self.open(name)
        if f is None:
            return None
        f.close()
        return os.path.join(self.directory, name)

    @staticmethod
    def content_type(name, head):
        """Sniffed from the bytes for images, from the name otherwise."""
        kind = filetype.guess(head)
        if kind is not None and kind.mime.startswith("image/"):
            return kind.mime
        guessed, _ = mimetypes.guess_type(name)
        if guessed is None:
            return "application/octet-stream"
        return guessed + "; charset=utf-8" if guessed.startswith("text/") else guessed
