"""Renderers: the answer stage calls them, and they write the text a client shows.

The answer stage calls ``prose(text)``, ``block_open(kind, language)``, ``block_text(text)``,
``block_close(kind)``, ``cite(Cite)``, ``image(Image)`` and ``sandbox_file(SandboxFile)`` in the
answer's order, and ``close()`` once at its end. What the client should see is appended to
``out`` (``str`` and actions); ``take()`` hands it over (``Conversion`` does, after every network
chunk). ``MarkdownRenderer`` is for web UIs: tool material in fenced blocks, citations as links,
images as markdown. ``BotRenderer`` is for QQ/WeChat bots (BOT_MODE): only what a person
should read, as its four switches say. An image or a sandbox file needs fetching before it can
be shown, so a renderer emits a ``FetchImage`` / ``FetchSandboxFile`` action in its place; the
handler performs it and calls ``action.render(url)`` (url None: the fetch failed) for the text,
keeping the answer's order.
"""


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
        self.out = []         # what the client should see, until take()n
        self._last = "\n"     # the last character written ("\n" at the start)
        self._gap = False     # a marker vanished after a space: skip the spaces that follow it

    def take(self):
        """What was written since the last call: a list of ``str`` and actions."""
        out, self.out = self.out, []
        return out

    def close(self):
        """The answer has ended: anything still to say."""

    # what the answer stage calls (and subclasses change)

    def prose(self, text):
        if self._gap:
            text = text.lstrip(" ")
            if not text:
                return  # still only spaces after the vanished marker
            self._gap = False
        if text:  # _write, in place: prose is almost everything an answer says
            self.out.append(text)
            self._last = text[-1]

    def block_open(self, kind, language=None):
        """Start of tool material: ``kind`` is code, output, browser, dalle_prompt or tool_call."""
        fence = _FENCE_OPEN[kind]
        if "%s" in fence:
            fence = fence % (language or "")
        self._line(fence)

    def block_text(self, text):
        self._write(text)

    def block_close(self, kind):
        self._line("```\n")

    def cite(self, cite):
        if cite.url is None:
            self._vanish()  # a marker with no source
        else:
            self._write("[[%d](%s)]" % (cite.number, cite.url) if cite.url else "[%d]" % cite.number)

    def image(self, image):
        lead = self._lead()

        def text(url):
            if url is None:
                return lead + IMAGE_FAILED + "\n"
            return "%s![image](%s)\n[download](%s)\n" % (lead, url, url)
        self.out.append(FetchImage(image, text))
        self._last = "\n"

    def sandbox_file(self, file):
        self.out.append(FetchSandboxFile(file, _file_link_text))
        self._last = ")"

    # helpers

    def _write(self, text):
        if text:
            self.out.append(text)
            self._last = text[-1]

    def _vanish(self):
        """A marker disappears: if a space came before it, the spaces after it must not double it."""
        if self._last in " \n":
            self._gap = True

    def _lead(self):
        """What puts the next text at the start of a line."""
        return "" if self._last == "\n" else "\n"

    def _line(self, text):
        """Write ``text`` at the start of a line."""
        self.out.append(self._lead() + text)
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
            return
        text = "%s\n%s" % (self._lead(), "\n".join(self._sources.values()))
        self._sources = {}
        self._last = text[-1]
        self.out.append(text)

    def cite(self, cite):
        if cite.url is None or not self.reference_output:
            self._vanish()
            return
        if cite.number not in self._sources:
            self._sources[cite.number] = " ".join(
                x for x in ("[%d]" % cite.number, cite.title, cite.url) if x)
        self._write("[%d]" % cite.number)

    def block_open(self, kind, language=None):
        if self.plugin_output:
            super().block_open(kind, language)

    def block_text(self, text):
        if self.plugin_output:
            super().block_text(text)

    def block_close(self, kind):
        if self.plugin_output:
            super().block_close(kind)
        else:
            self._hidden_block = True

    def prose(self, text):
        # "Let me check." + (hidden code run) + "It is 42." must not read "Let me check.It is 42."
        if self._hidden_block and text:
            self._hidden_block = False
            if self._last != "\n" and text[0] != "\n":
                text = "\n" + text
        super().prose(text)

    def image(self, image):
        style = self.image_style
        if style is None:
            return  # no image in the text: nothing to fetch either
        lead = self._lead()

        def text(url):
            if url is None:
                return lead + IMAGE_FAILED + "\n"
            return "%s%s\n" % (lead, url if style == "plain" else "![image](%s)" % url)
        self.out.append(FetchImage(image, text))
        self._last = "\n"
