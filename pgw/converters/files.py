"""Files in chat messages: what a client sent, what the bytes really are, how upstream sees them. No IO.

A client names a file by URL (``data:`` or ``http(s)://``) in an ``image_url`` or ``file`` content
part (``FileRef``). Once its bytes are at hand (the gateway fetches http URLs), ``inspect_file``
checks them against the type the client or the web server claimed, so a non-image labelled
``image/png`` or a zip labelled PDF is refused here with a clear 400 instead of confusing the
upstream. Pillow reads image sizes (the upstream wants width and height with every image) and
filetype sniffs the other types by their signatures.
"""

import base64
import binascii
import hashlib
import io
import mimetypes
import posixpath
import re
import urllib.parse
import warnings

import filetype
from PIL import Image

from pgw.errors import bad_request

# Image formats the upstream takes, as Pillow names them, and their MIME types.
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}

# Documents the upstream's file reader knows (the list the web client accepted): use case my_files.
# Anything else that is not an image goes up as ace_upload (code interpreter input).
DOCUMENT_TYPES = frozenset((
    "application/pdf", "application/msword", "application/json", "application/x-latext",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "text/plain", "text/markdown", "text/html", "text/javascript", "text/x-php", "text/x-c", "text/x-c++",
    "text/x-csharp", "text/x-java", "text/x-tex", "text/x-typescript", "text/x-sh", "text/x-ruby",
    "text/x-script.python",
))

GENERIC_TYPES = frozenset(("", "application/octet-stream", "binary/octet-stream", "application/unknown"))
# Text is not recognisable by signature; these claims are checked by "is it UTF-8 text".
TEXT_LIKE_APPLICATION = frozenset(("application/json", "application/javascript", "application/xml",
                                   "application/x-latext", "application/x-sh", "application/x-tex"))
# Containers shared by several types: a docx sniffs as "some zip", a .doc as "some OLE file".
ZIP_FAMILY = frozenset(("application/zip", "application/epub+zip",
                        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))
# Types whose bytes always start with a signature the sniffer knows: a claim without it is false.
SIGNED_TYPES = frozenset(("application/pdf",)) | ZIP_FAMILY


class FileRef:
    """A file a client put in a message: where it is, and what the client called it."""
    __slots__ = ("url", "name", "where")

    def __init__(self, url, name, where):
        self.url = url        # data: or http(s) URL
        self.name = name      # a file name the client gave, or None
        self.where = where    # "messages[i].content[j]" for error messages

    def __eq__(self, other):
        return isinstance(other, FileRef) and (self.url, self.name, self.where) == (other.url, other.name, other.where)

    def __repr__(self):
        return "FileRef(%r, %r, %r)" % (self.url[:40], self.name, self.where)


class FileInfo:
    """A checked file, ready to upload: true MIME type, size, image size, content hash."""
    __slots__ = ("data", "mime", "name", "size", "width", "height", "sha256")

    def __init__(self, data, mime, name, width=None, height=None):
        self.data = data
        self.mime = mime
        self.size = len(data)
        self.width = width
        self.height = height
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.name = name or self.sha256 + extension(mime)

    @property
    def is_image(self):
        return self.width is not None

    @property
    def use_case(self):
        """The upstream's ``use_case`` for ``POST /files``."""
        if self.is_image:
            return "multimodal"
        return "my_files" if self.mime in DOCUMENT_TYPES else "ace_upload"


def file_error(where, text, code):
    """A 400 about one content part: ``where`` is ``messages[i].content[j]``, the param its dotted form."""
    param = where.replace("[", ".").replace("]", "")
    return bad_request("%s: %s" % (where, text), param, code)


def extension(mime):
    if mime == "text/markdown":
        return ".md"
    return mimetypes.guess_extension(mime) or (".txt" if mime.startswith("text/") else ".bin")


def parse_data_url(url, where):
    """``data:<mime>[;params];base64,<data>`` -> ``(mime, bytes)``; a clear 400 when it is not one."""
    head, comma, payload = url.partition(",")
    if not comma:
        raise file_error(where, "the data URL has no ',' before its data", "invalid_data_url")
    params = head[5:].split(";")
    mime = params[0].strip().lower()
    if "base64" in (p.strip().lower() for p in params[1:]):
        compact = "".join(payload.split())
        compact = compact.replace("-", "+").replace("_", "/")  # tolerate the URL-safe alphabet
        compact += "=" * (-len(compact) % 4)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise file_error(where, "the data URL's base64 data cannot be decoded", "invalid_base64") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return mime, data


def name_from_url(url):
    """The last path segment of an http(s) URL, when it looks like a file name."""
    path = urllib.parse.urlsplit(url).path
    name = posixpath.basename(urllib.parse.unquote(path))
    return name if name and "." in name.strip(".") else None


def _image(data, where):
    """``(mime, width, height)`` when the bytes are an image the upstream takes, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decompression-bomb warnings: we never decode pixels
            with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as im:
                width, height = im.size
                fmt = im.format
                im.verify()  # checks the structure (chunk CRCs and the like) without decoding pixels
    except Image.DecompressionBombError:
        raise file_error(where, "the image has more pixels than this gateway accepts", "invalid_image") from None
    except Exception:
        return None
    if fmt not in IMAGE_FORMATS:
        return None
    return IMAGE_FORMATS[fmt], width, height


def _sniffed(data):
    """The MIME type the bytes' signature says, as a list ([] when nothing is recognised)."""
    kind = filetype.guess(data)
    return [kind.mime] if kind is not None and kind.mime not in GENERIC_TYPES else []


_BINARY_CONTROLS = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")


def _is_text(data):
    """UTF-8 without the control characters that only binary data holds."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _BINARY_CONTROLS.search(data) is None


def inspect_file(data, claimed, name, where):
    """Check the bytes against the claimed MIME type; return a ``FileInfo`` or raise a 400.

    An image must decode as PNG, JPEG, GIF or WebP whatever it is labelled; its real format
    wins over the label. Other files must fit their label: a signature-less claim is accepted
    only where the bytes agree (text is UTF-8, a PDF starts like one).
    """
    claimed = (claimed or "").split(";")[0].strip().lower()
    if not data:
        raise file_error(where, "the file is empty", "invalid_file")
    image = _image(data, where)
    if image is not None:
        return FileInfo(data, image[0], name, image[1], image[2])
    if claimed.startswith("image/"):
        raise file_error(where, "the data is labelled %s but is not a PNG, JPEG, GIF or WebP image" % claimed,
                         "invalid_image")
    sniffed = _sniffed(data)
    if claimed in GENERIC_TYPES:
        if sniffed:
            mime = sniffed[0]
        else:
            mime = "text/plain" if _is_text(data) else "application/octet-stream"
        return FileInfo(data, mime, name)
    if claimed.startswith("text/") or claimed in TEXT_LIKE_APPLICATION:
        if not _is_text(data):
            raise file_error(where, "the file is labelled %s but is not UTF-8 text" % claimed, "invalid_file")
        return FileInfo(data, claimed, name)
    fits = claimed in sniffed or (claimed in ZIP_FAMILY and any(s in ZIP_FAMILY for s in sniffed))
    if not fits and (sniffed or claimed in SIGNED_TYPES):
        seen = " (its bytes look like %s)" % sniffed[0] if sniffed else ""
        raise file_error(where, "the file is labelled %s but its bytes are not%s" % (claimed, seen), "invalid_file")
    return FileInfo(data, claimed, name)


def image_part(file_id, info):
    """An image in a ``multimodal_text`` message, as docs/upstream.md ("The request body") describes it."""
    return {"asset_pointer": "file-service://" + file_id, "size_bytes": info.size,
            "width": info.width, "height": info.height}


def attachment(file_id, info):
    """An entry of ``metadata.attachments``; documents have no width/height."""
    item = {"id": file_id, "name": info.name, "mimeType": info.mime, "size": info.size}
    if info.is_image:
        item["width"] = info.width
        item["height"] = info.height
    return item


def multimodal_message(message_id, role, text, files):
    """One upstream message with files: ``files`` is [(file_id, FileInfo)] in the client's order.

    Images come first as asset pointers, then the text; every file, image or not, is listed in
    ``metadata.attachments``.
    """
    unique = list(dict((fid, info) for fid, info in files).items())  # the same file twice: listed once
    parts = [image_part(fid, info) for fid, info in unique if info.is_image]
    parts.append(text)
    return {"id": message_id, "author": {"role": role},
            "content": {"content_type": "multimodal_text", "parts": parts},
            "metadata": {"attachments": [attachment(fid, info) for fid, info in unique]}}
