"""Images: ``POST /v1/images/generations`` and ``GET /images/<name>`` (the saved files).

Drawing is a chat answer in disguise: the prompt goes to a model that can draw, and the answer
runs through the same conversation path as chat completions (``converse``): for ``dall-e-*`` and
drawing aliases one conversation with a DALL·E model into ``ImageSink``; for ``gpt-image-*`` one
conversation per image with IMAGE_MODEL and the image tool (``system_hints: ["picture_v2"]``),
concurrently, each followed until its picture arrives (the runtime polls), into ``ImageGather``.
Both keep the images the answer showed (fetched and saved by the gateway) and the assistant's
words. No image means the model declined: an error carrying its words.
"""

import asyncio
import base64
import os
import time

from tornado.iostream import StreamClosedError

from pgw.conf.models import Route
from pgw.converters.payload import RequestLimits, image_prompt, parse_image_request
from pgw.converters.render import FetchImage
from pgw.errors import ApiError
from pgw.handlers.base import ApiHandler
from pgw.handlers.conversation import ConversationHandler
from pgw.runtime import GatherSink, renderer_for
from pgw.media import MediaStore

# OpenAI's names for the image tool's model: one conversation with IMAGE_MODEL per picture.
IMAGE_TOOL_MODELS = ("gpt-image-1", "gpt-image-2")


class ImageSink(GatherSink):
    """Collects the answer of a drawing request and writes the images response."""

    def __init__(self, handler, request, downloads):
        super().__init__(handler)
        self.request = request
        self.downloads = downloads   # what the answer showed, fetched and saved

    def finish(self, reason, prompt_messages):
        reply = "".join(self.texts)
        images = saved_images(self.downloads)
        if not images:
            return self.fail(no_image_error(self.downloads, reply))
        self.handler.write_json(images_response(self.request, images, reply))


def saved_images(downloads):
    """``[(url, bytes, prompt)]`` of the images an answer showed and the gateway saved."""
    return [(url, raw, action.image.prompt) for action, url, raw in downloads.saved if type(action) is FetchImage]


def no_image_error(downloads, reply):
    failed = sum(type(action) is FetchImage for action in downloads.failed)
    if failed:
        return ApiError(502, "the upstream drew %d image(s) but they could not be fetched" % failed,
                        "upstream_error", "image_download_failed")
    return ApiError(400, "no image was generated; the model answered: %s" % reply.strip(),
                    "invalid_request_error", "no_image_generated", "prompt")


def images_response(request, images, reply):
    """OpenAI's images response, with RefreshToV1Api's ``reply`` (the answers as chat shows them)."""
    data = []
    for url, raw, revised in images:
        item = {"url": url} if request.response_format == "url" else {
            "b64_json": base64.b64encode(raw).decode("ascii")}
        item["revised_prompt"] = revised or request.prompt
        data.append(item)
    return {"created": int(time.time()), "data": data, "reply": reply}


class ImageGather(GatherSink):
    """One of the conversations of a ``gpt-image-*`` request: keeps its words and how it ended;
    the handler answers once all of them have."""

    def __init__(self, handler):
        super().__init__(handler)
        self.error = None

    def finish(self, reason, prompt_messages):
        pass

    def fail(self, error):
        self.error = error


class ImageGenerationsHandler(ConversationHandler):
    async def post(self):
        gw = self.gateway
        key = self.api_key()
        request = parse_image_request(self.json_body(), gw.models.first_drawing_model(), RequestLimits.of(gw.settings))
        if request.model in IMAGE_TOOL_MODELS and all(r.name != request.model for r in gw.models.routes()):
            return await self.draw_with_image_tool(key, request)
        route = gw.models.drawing_route(request.model)
        if route is None or not route.can_draw:
            raise ApiError(400 if route else 404, "The model `%s` cannot draw; use one of: %s" % (
                request.model, ", ".join(r.name for r in gw.models.routes() if r.can_draw)),
                "invalid_request_error", "model_not_found" if route is None else "model_cannot_draw", "model")
        prompt = image_prompt(gw.settings.dalle_prompt_prefix, request)
        payload = self.payload([("user", prompt)], route, await self.while_connected(gw.gizmos.gizmo(route)),
                               hints=("picture_v2",))
        downloads = self.downloads(key)
        sink = ImageSink(self, request, downloads)
        # The reply follows the settings (BOT_MODE: plain text); the pictures are fetched whatever
        # the image switches say, since they are the answer.
        await self.converse(key, payload, sink, downloads, [("user", prompt)],
                            renderer_for(gw.settings, fetch_images=True), model=route.slug)

    async def draw_with_image_tool(self, key, request):
        """``gpt-image-*``: ``n`` conversations with IMAGE_MODEL (``n`` is at most 4; at once over
        the account pool, one after another on a forwarded key's one account), one picture
        each, each followed until its picture arrives; the pictures that came, or the first
        failure when none did (a quota hit is a 429 with the upstream's words)."""
        gw = self.gateway
        name = gw.settings.image_model
        route = gw.models.resolve(name) or Route(name, name, can_draw=True, accepts_files=True)
        prompt = "%s\n\nImage size: %s." % (request.prompt, request.size)

        async def one():
            payload = self.payload([("user", prompt)], route, hints=("picture_v2",))
            payload.setdefault("system_hints", ["picture_v2"])  # even in a late-2023 body: this asks for the tool
            downloads = self.downloads(key)
            sink = ImageGather(self)
            try:
                await self.converse(key, payload, sink, downloads, [("user", prompt)],
                                    renderer_for(gw.settings, fetch_images=True))
            except ApiError as e:
                sink.error = e
            return sink, downloads

        pool = gw.pool
        if pool is not None and pool.is_access_key(key):  # each conversation its own account
            results = await asyncio.gather(*(one() for _ in range(request.n)))
        else:
            # A forwarded key is one account, which answers one message at a time: at once, all
            # but the first would get the upstream's 429 and the client fewer pictures than asked.
            results = []
            for _ in range(request.n):
                results.append(await one())
                if self._gone:
                    return
        if self._gone:
            return
        images = [image for _, downloads in results for image in saved_images(downloads)]
        reply = "\n\n".join("".join(sink.texts) for sink, _ in results if sink.texts)
        if not images:
            errors = [sink.error for sink, _ in results if sink.error is not None]
            raise errors[0] if errors else no_image_error(results[0][1], reply)
        self.write_json(images_response(request, images, reply))


INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


CHUNK = 64 * 1024  # bytes read from disk and written per step: a large file is never held whole


class SavedFileHandler(ApiHandler):
    """Serves what the gateway saved under IMAGES_DIR, streamed from disk; any other name (and any
    symlink) is a 404."""

    async def get(self, name):
        f = self.gateway.media.open(name)
        if f is None:
            raise ApiError(404, "no such image: %s" % name[:100], "invalid_request_error", "not_found")
        with f:
            head = f.read(CHUNK)
            content_type = MediaStore.content_type(name, head[:262])
            self.set_header("Content-Type", content_type)
            self.set_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            # Names are never reused: a saved file never changes.
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")
            self.set_header("X-Content-Type-Options", "nosniff")
            # What the code interpreter wrote is whatever a prompt (or a page it read) asked for:
            # only raster images recognised from their bytes are shown inline; anything else (an SVG
            # or HTML with scripts, say) is a download, and nothing served here may run scripts.
            self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
            if content_type not in INLINE_TYPES:
                self.set_header("Content-Disposition", 'attachment; filename="%s"' % name)
            chunk = head
            while chunk:
                self.write(chunk)
                try:
                    await self.flush()  # waits until the client took it: memory stays at one chunk
                except StreamClosedError:
                    return
                chunk = f.read(CHUNK)
        self.finish()
