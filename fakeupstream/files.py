"""The bytes the demo upstream serves for files: small, valid, deterministic images and files.

Only the standard library: ``./run.sh --demo`` installs requirements.txt alone. A PNG is
written with zlib (signature, IHDR, IDAT, IEND); the WebP is the well-known 1x1 lossless
image. A file id picks the bytes: ids containing ``webp`` are WebP, others a PNG whose colour
comes from the id, so two images of one answer differ.
"""

import base64
import hashlib
import struct
import zlib

WEBP_1X1 = base64.b64decode("UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==")

# file ids the demo upstream knows nothing about (to show a failed download)
MISSING_PREFIX = "file-missing"


def _chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png(width, height, rgb):
    """A solid-colour RGB PNG."""
    row = b"\x00" + bytes(rgb) * width          # filter byte 0, then the pixels
    raw = row * height
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b""))


def image_bytes(file_id):
    """The bytes behind ``file-service://<file_id>``, or None for an unknown file."""
    if file_id.startswith(MISSING_PREFIX):
        return None
    if "webp" in file_id:
        return WEBP_1X1
    rgb = hashlib.sha256(file_id.encode()).digest()[:3]
    return png(8, 8, rgb)


def sandbox_bytes(path):
    """What the code interpreter wrote at ``/mnt/data/...`` (a small CSV, whatever the name)."""
    return ("path,rows\n%s,2\n" % path).encode()
