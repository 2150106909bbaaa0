"""Renderers: segments in, the text a client shows out (plus actions that need IO).

``MarkdownRenderer`` is for web UIs: tool material in fenced blocks, citations as links,
images as markdown. An image needs fetching before it can be shown, so the renderer emits a
``FetchImage`` action in its place; the handler performs it and calls ``action.render(url)``
for the text, keeping the answer's order.
"""

from converters.events import BlockClose, BlockOpen, BlockText, Cite, Image, SandboxFile, Text


class FetchImage:
    """Action: fetch ``image`` from the upstream, save it, then ``render(public_url or None)``."""
    __slots__ = ("image", "render")

    def __init__(self, image, render):
        self.image = image
        self.render = render

    def __repr__(self):
        return "FetchImage(%r)" % (self.image,)


class FetchSandboxFile:
    """Action: fetch a file the code interpreter wrote, then ``render(public_url or None)``."""
    __slots__ = ("file", "render")

    def __init__(self, file, render):
        self.file = file
        self.render = render


_FENCE_OPEN = {
    "code": "```%s\n",
    "output": "Result:\n```\n",
    "browser": "```\n",
    "dalle_prompt": "```%s\n",
    "tool_call": "```\n",
}


class MarkdownRenderer:
    def __init__(self):
        self._at_line_start = True

    def render(self, segments):
        """Segments in; a list of ``str`` and actions out."""
        out = []
        for seg in segments:
            t = type(seg)
            if t is Text or t is BlockText:
                text = seg.text
                if text:
                    out.append(text)
                    self._at_line_start = text[-1] == "\n"
            elif t is BlockOpen:
                fence = _FENCE_OPEN[seg.kind]
                if "%s" in fence:
                    fence = fence % (seg.language or "")
                self._line(out, fence)
            elif t is BlockClose:
                self._line(out, "```\n")
            elif t is Cite:
                out.append("[[%d](%s)]" % (seg.number, seg.url) if seg.url else "[%d]" % seg.number)
                self._at_line_start = False
            elif t is Image:
                out.append(FetchImage(seg, self._image_text))
                self._at_line_start = True
            elif t is SandboxFile:
                out.append(FetchSandboxFile(seg, self._link_text))
                self._at_line_start = False
        return out

    def _line(self, out, text):
        """Write ``text`` at the start of a line."""
        out.append(text if self._at_line_start else "\n" + text)
        self._at_line_start = True

    @staticmethod
    def _image_text(url):
        if url is None:
            return "\n(an image could not be fetched from the upstream)\n"
        return "\n![image](%s)\n[download](%s)\n" % (url, url)

    @staticmethod
    def _link_text(url):
        return url if url is not None else "#file-unavailable"
