"""Renderers: segments in, the text a client shows out (plus actions that need IO).

``MarkdownRenderer`` is for web UIs: tool material in fenced blocks, citations as links,
images as markdown. ``BotRenderer`` is for QQ/WeChat bots (BOT_MODE): only what a person
should read, as its four switches say. An image or a sandbox file needs fetching before it can
be shown, so a renderer emits a ``FetchImage`` / ``FetchSandboxFile`` action in its place; the
handler performs it and calls ``action.render(url)`` (url None: the fetch failed) for the text,
keeping the answer's order. ``close()`` is called once at the end of the answer.
"""

from converters.events import BlockClose, BlockOpen, BlockText, Cite, Image, SandboxFile


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

    def __repr__(self):
        return "FetchSandboxFile(%r)" % (self.file,)


_FENCE_OPEN = {
    "code": "```%s\n",
    "output": "Result:\n```\n",
    "browser": "```\n",
    "dalle_prompt": "```%s\n",
    "tool_call": "```\n",
}

IMAGE_FAILED = "(an image could not be fetched from the upstream)"


def _file_link_text(url):
    return url if url is not None else "#file-unavailable"


class MarkdownRenderer:
    def __init__(self):
        self._last = "\n"     # the last character written ("\n" at the start)
        self._gap = False     # a marker vanished after a space: skip the spaces that follow it

    def render(self, segments):
        """Segments in; a list of ``str`` and actions out."""
        out = []
        for seg in segments:
            t = type(seg)
            if t is str:
                self._prose(out, seg)
            elif t is BlockText:
                self._block_text(out, seg.text)
            elif t is BlockOpen:
                self._block_open(out, seg)
            elif t is BlockClose:
                self._block_close(out, seg)
            elif t is Cite:
                if seg.url is None:
                    self._vanish()
                else:
                    self._cite(out, seg)
            elif t is Image:
                self._image(out, seg)
            elif t is SandboxFile:
                out.append(FetchSandboxFile(seg, _file_link_text))
                self._last = ")"
        return out

    def close(self):
        """The answer has ended: anything still to say."""
        return []

    # what subclasses change

    def _cite(self, out, seg):
        self._write(out, "[[%d](%s)]" % (seg.number, seg.url) if seg.url else "[%d]" % seg.number)

    def _block_open(self, out, seg):
        fence = _FENCE_OPEN[seg.kind]
        if "%s" in fence:
            fence = fence % (seg.language or "")
        self._line(out, fence)

    def _block_text(self, out, text):
        self._write(out, text)

    def _block_close(self, out, seg):
        self._line(out, "```\n")

    def _image(self, out, seg):
        lead = self._lead()

        def text(url):
            if url is None:
                return lead + IMAGE_FAILED + "\n"
            return "%s![image](%s)\n[download](%s)\n" % (lead, url, url)
        out.append(FetchImage(seg, text))
        self._last = "\n"

    # helpers

    def _write(self, out, text):
        if text:
            out.append(text)
            self._last = text[-1]

    def _prose(self, out, text):
        if self._gap:
            text = text.lstrip(" ")
            if not text:
                return  # still only spaces after the vanished marker
            self._gap = False
        if text:  # _write, in place: prose is almost every segment
            out.append(text)
            self._last = text[-1]

    def _vanish(self):
        """A marker disappears: if a space came before it, the spaces after it must not double it."""
        if self._last in " \n":
            self._gap = True

    def _lead(self):
        """What puts the next text at the start of a line."""
        return "" if self._last == "\n" else "\n"

    def _line(self, out, text):
        """Write ``text`` at the start of a line."""
        out.append(self._lead() + text)
        self._last = text[-1]


class BotRenderer(MarkdownRenderer):
    """Only what a person should read in a chat app (BOT_MODE), with RefreshToV1Api's switches.

    ``plugin_output``: show code, execution output, browser calls and the DALL·E prompt (as the
    markdown renderer does); otherwise none of it, not even its fences.
    ``reference_output``: citation markers become ``[n]`` and one plain list of sources
    (``[n] title url``) ends the answer; otherwise they vanish without leaving double spaces.
    ``markdown_image`` / ``plain_image_url``: an image as ``![image](url)`` or as a bare URL on
    its own line (the bare URL wins when both are on); both off: no image in the text at all.
    """

    def __init__(self, plugin_output=False, reference_output=False, markdown_image=True,
                 plain_image_url=False):
        super().__init__()
        self.plugin_output = plugin_output
        self.reference_output = reference_output
        self.image_style = "plain" if plain_image_url else "markdown" if markdown_image else None
        self._sources = {}   # number -> "[n] title url", in the order first cited
        self._hidden_block = False  # a tool block was left out: what follows starts a new line

    def close(self):
        if not self._sources:
            return []
        text = "%s\n%s" % (self._lead(), "\n".join(self._sources.values()))
        self._sources = {}
        self._last = text[-1]
        return [text]

    def _cite(self, out, seg):
        if not self.reference_output:
            self._vanish()
            return
        if seg.number not in self._sources:
            self._sources[seg.number] = " ".join(x for x in ("[%d]" % seg.number, seg.title, seg.url) if x)
        self._write(out, "[%d]" % seg.number)

    def _block_open(self, out, seg):
        if self.plugin_output:
            super()._block_open(out, seg)

    def _block_text(self, out, text):
        if self.plugin_output:
            super()._block_text(out, text)

    def _block_close(self, out, seg):
        if self.plugin_output:
            super()._block_close(out, seg)
        else:
            self._hidden_block = True

    def _prose(self, out, text):
        # "Let me check." + (hidden code run) + "It is 42." must not read "Let me check.It is 42."
        if self._hidden_block and text:
            self._hidden_block = False
            if self._last != "\n" and text[0] != "\n":
                text = "\n" + text
        super()._prose(out, text)

    def _image(self, out, seg):
        style = self.image_style
        if style is None:
            return  # no image in the text: nothing to fetch either
        lead = self._lead()

        def text(url):
            if url is None:
                return lead + IMAGE_FAILED + "\n"
            return "%s%s\n" % (lead, url if style == "plain" else "![image](%s)" % url)
        out.append(FetchImage(seg, text))
        self._last = "\n"
