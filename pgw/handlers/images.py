"""Images: ``POST /v1/images/generations`` and ``GET /images/<name>`` (the saved files).

Drawing is a chat answer in disguise: the prompt goes to a model that can call DALL·E, and
the answer runs through the same conversation path as chat completions (``converse``) into
``ImageSink``, which keeps the images the answer showed (fetched and saved by the gateway) and
the assistant's words. No image means the model declined: an error carrying its words.
"""

import base64
import time

from pgw.converters.payload import image_prompt, parse_image_request
from pgw.converters.render import FetchImage
from pgw.errors import ApiError
from pgw.handlers.base import ApiHandler
from pgw.handlers.conversation import ConversationHandler
from pgw.runtime import GatherSink, renderer_for
from pgw.media import MediaStore


class ImageSink(GatherSink):
    """Collects the answer of a drawing request and writes the images response."""

    def __init__(self, handler, request, downloads):
        super().__init__(handler)
        self.request = request
        self.downloads = downloads   # what the answer showed, fetched and saved

    def finish(self, reason, prompt_messages):
        reply = "".join(self.texts)
        images = [(url, raw, action.image.prompt) for action, url, raw in self.downloads.saved
                  if type(action) is FetchImage]
        if not images:
            failed = sum(type(action) is FetchImage for action in self.downloads.failed)
            if failed:
                error = ApiError(502, "the upstream drew %d image(s) but they could not be fetched" % failed,
                                       "upstream_error", "image_download_failed")
            else:
                error = ApiError(400, "no image was generated; the model answered: %s" % reply.strip(),
                                       "invalid_request_error", "no_image_generated", "prompt")
            return self.fail(error)
        data = []
        for url, raw, revised in images:
            item = {"url": url} if self.request.response_format == "url" else {
                "b64_json": base64.b64encode(raw).decode("ascii")}
            item["revised_prompt"] = revised or self.request.prompt
            data.append(item)
        self.handler.write_json({"created": int(time.time()), "data": data, "reply": reply})


class ImageGenerationsHandler(ConversationHandler):
    async def post(self):
        gw = self.gateway
        key = self.api_key()
        request = parse_image_request(self.json_body(), gw.models.first_drawing_model())
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


INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


class SavedFileHandler(ApiHandler):
    """Serves what the gateway saved under static/images; any other name is a 404."""

    def get(self, name):
        path = self.gateway.media.path(name)
        if path is None:
            raise ApiError(404, "no such image: %s" % name[:100], "invalid_request_error", "not_found")
        with open(path, "rb") as f:
            data = f.read()
        content_type = MediaStore.content_type(name, data[:262])
        self.set_header("Content-Type", content_type)
        # Names are never reused: a saved file never changes.
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        self.set_header("X-Content-Type-Options", "nosniff")
        # What the code interpreter wrote is whatever a prompt (or a page it read) asked for:
        # only raster images recognised from their bytes are shown inline; anything else (an SVG
        # or HTML with scripts, say) is a download, and nothing served here may run scripts.
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        if content_type not in INLINE_TYPES:
            self.set_header("Content-Disposition", 'attachment; filename="%s"' % name)
        self.finish(data)
