"""Renderers: the answer stage calls them, and they write the text a client shows.

The answer stage calls ``prose(text)``, ``block_open(kind, language)``, ``block_text(text)``,
``block_close(kind)``, ``cite(Cite)``, ``links(sources)`` (a 2025-2026 citation),
``footnote(sources)`` (the answer's source list), ``reasoning(text)`` / ``reasoning_break(line)``,
``image(Image)`` and ``sandbox_file(SandboxFile)`` in the answer's order, and ``close()`` once
at its end. What the client should see is appended to ``out`` (``str``, ``Reasoning`` values and
actions); ``take()`` hands it over (``Conversion`` does, after every network chunk).
``MarkdownRenderer`` is for web UIs: tool material in fenced blocks, citations as links, images
as markdown. ``BotRenderer`` is for QQ/WeChat bots (BOT_MODE): only plain text a person should
read, as its switches say. An image or a sandbox file needs fetching before it can be shown, so
a renderer emits a ``FetchImage`` / ``FetchSandboxFile`` action in its place; the handler
performs it and calls ``action.render(url)`` (url None: the fetch failed) for the text, keeping
the answer's order.

Reasoning (a thinking model's thoughts) is never prose. How a client gets it is the renderer's
``reasoning`` mode: ``reasoning_content`` (a ``Reasoning`` value: the sink writes it to the
``reasoning_content`` field), ``think`` (in the content, first, inside ``<think>`` tags),
``plain`` (in the content as plain text before the answer: bot mode) or ``hidden``.
"""

import functools
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

from pgw.converters.events import Cite, Image, SandboxFile


class Reasoning(NamedTuple):
    """Reasoning text for the sink. ``inline``: it is also part of the content (``think`` and
    ``plain`` modes), so the sink writes it as content and only counts it as reasoning."""
    text: str
    inline: bool = False


class Source(NamedTuple):
    """One source a 2025-2026 citation or source list names."""
    title: str
    url: str
    attribution: str = ""

    def label(self) -> str:
        """The short name a reader recognises: the site's name, else the page title."""
        return self.attribution or self.title or _host(self.url)


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0] or url


def _md_text(text: str) -> str:
    """Text inside a markdown link's brackets."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace("\n", " ")


def _md_url(url: str) -> str:
    """A URL inside a markdown link's parentheses."""
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


class FetchImage:
    """Action: fetch ``image`` from the upstream, save it, then ``render(public_url or None)``."""
    __slots__ = ("image", "render")

    def __init__(self, image: Image, render: Callable[[Optional[str]], str]):
        self.image = image
        self.render = render

    def __repr__(self) -> str:
        return "FetchImage(%r)" % (self.image,)


class FetchSandboxFile:
    """Action: fetch a file the code interpreter wrote, then ``render(public_url or None)``."""
    __slots__ = ("file", "render")

    def __init__(self, file: SandboxFile, render: Callable[[Optional[str]], str]):
        self.file = file
        self.render = render

    def __repr__(self) -> str:
        return "FetchSandboxFile(%r)" % (self.file,)


_FENCE_OPEN = {
    "code": "```%s\n",
    "output": "Result:\n```\n",
    "browser": "```\n",
    "dalle_prompt": "```%s\n",
    "tool_call": "```\n",
}

# Bot mode with plugin output on: the same material as plain text, no fences.
_PLAIN_OPEN = {"code": "", "output": "Result:\n", "browser": "", "dalle_prompt": "", "tool_call": ""}

IMAGE_FAILED = "(an image could not be fetched from the upstream)"
FILE_FAILED = "#file-unavailable"

# Image styles: "page" (web UIs: the image and a download link), "markdown", "plain" (a bare
# URL), None (no image in the text).
IMAGE_STYLES = ("page", "markdown", "plain", None)
REASONING_MODES = ("reasoning_content", "think", "plain", "hidden")


def image_text(lead: str, style: Optional[str], url: Optional[str]) -> str:
    """The text that shows a fetched image (``url`` None: the fetch failed) in ``style``;
    ``lead`` puts it at the start of a line."""
    if style is None:
        return ""
    if url is None:
        return lead + IMAGE_FAILED + "\n"
    if style == "plain":
        return "%s%s\n" % (lead, url)
    if style == "markdown":
        return "%s![image](%s)\n" % (lead, url)
    return "%s![image](%s)\n[download](%s)\n" % (lead, url, url)


def _file_link(label: Optional[str], url: Optional[str]) -> str:
    """A sandbox file as a markdown link: ``[label](sandbox:/mnt/data/x)`` -> ``[label](url)``
    (``label`` None: the link's label was already written)."""
    return "%s(%s)" % ("" if label is None else "[%s]" % label, url if url is not None else FILE_FAILED)


def _file_line(lead: str, url: Optional[str]) -> str:
    """A sandbox file as a bare URL on its own line (bot mode, plain URLs)."""
    return "%s%s\n" % (lead, url if url is not None else "(a file could not be fetched from the upstream)")


class MarkdownRenderer:
    """``reasoning``: how reasoning reaches the client (``REASONING_MODES``)."""

    image_style: Optional[str] = "page"

    def __init__(self, reasoning: str = "reasoning_content", fetch_images: bool = False):
        if reasoning not in REASONING_MODES:
            raise ValueError("unknown reasoning mode %r" % reasoning)
        self.out: list = []        # what the client should see, until take()n
        self._last = "\n"          # the last character written ("\n" at the start)
        self._gap = False          # a marker vanished after a space: skip the spaces that follow it
        self.reasoning_mode = reasoning
        # An image is fetched even when the text does not show it (the images endpoint answers
        # with the pictures themselves).
        self.fetch_images = fetch_images
        self._thinking = False     # reasoning is being written inline (think/plain): close it first
        self._reasoned = False     # reasoning text was written (in this inline run, or at all)
        self._reason_sep = ""      # what goes before the next reasoning text
        self._footnotes: dict = {}  # url -> Source, the answer's source list (2025-2026)

    def take(self) -> list:
        """What was written since the last call: a list of ``str``, ``Reasoning`` and actions."""
        out, self.out = self.out, []
        return out

    def close(self) -> None:
        """The answer has ended: anything still to say."""
        if self._thinking:
            self._end_thinking(closing=True)
        if self._footnotes:
            sources, self._footnotes = list(self._footnotes.values()), {}
            self._write_sources(sources)

    # what the answer stage calls (and subclasses change)

    def prose(self, text: str) -> None:
        if self._thinking:
            self._end_thinking()
        if self._gap:
            text = text.lstrip(" ")
            if not text:
                return  # still only spaces after the vanished marker
            self._gap = False
        if text:  # _write, in place: prose is almost everything an answer says
            self.out.append(text)
            self._last = text[-1]

    def block_open(self, kind: str, language: Optional[str] = None) -> None:
        """Start of tool material: ``kind`` is code, output, browser, dalle_prompt or tool_call."""
        fence = _FENCE_OPEN[kind]
        if "%s" in fence:
            fence = fence % (language or "")
        self._line(fence)

    def block_text(self, text: str) -> None:
        self._write(text)

    def block_close(self, kind: str) -> None:
        self._line("```\n")

    def cite(self, cite: Cite) -> None:
        if cite.url is None:
            self._vanish()  # a marker with no source
        else:
            self._write("[[%d](%s)]" % (cite.number, cite.url) if cite.url else "[%d]" % cite.number)

    def links(self, sources: Sequence[Source]) -> None:
        """A 2025-2026 citation: one link per source, as legacy citations look (``[[name](url)]``);
        no sources: the marker vanishes."""
        if not sources:
            self._vanish()
            return
        self._write("".join("[[%s](%s)]" % (_md_text(s.label()), _md_url(s.url)) for s in sources))

    def footnote(self, sources: Iterable[Source]) -> None:
        """The answer's source list (``sources_footnote``): written once, at the end."""
        for s in sources:
            self._footnotes.setdefault(s.url, s)

    def reasoning(self, text: str) -> None:
        """Reasoning text, as it arrives."""
        mode = self.reasoning_mode
        if not text or mode == "hidden":
            return
        if self._reason_sep:
            if self._reasoned:
                text = self._reason_sep + text
            self._reason_sep = ""
        self._reasoned = True
        if mode == "reasoning_content":
            self.out.append(Reasoning(text))
            return
        if not self._thinking:
            if self._gap:
                self._gap = False
            self._thinking = True
            self.out.append(self._lead() + ("<think>\n" if mode == "think" else ""))
        self.out.append(Reasoning(text, True))
        self._last = text[-1]

    def reasoning_break(self, line: bool = False) -> None:
        """A new piece of reasoning begins (a thought, a message): a blank line before its text,
        or only a line break (``line``: the recap line, "Thought for 15s")."""
        self._reason_sep = "\n" if line else "\n\n"

    def image(self, image: Image) -> None:
        style = self.image_style
        if style is None and not self.fetch_images:
            return  # no image in the text: nothing to fetch either
        if self._thinking:
            self._end_thinking()
        lead = self._lead() if style is not None else ""
        self.out.append(FetchImage(image, functools.partial(image_text, lead, style)))
        if style is not None:
            self._last = "\n"

    def sandbox_file(self, file: SandboxFile, label: Optional[str] = None) -> None:
        """A file the code wrote, where its link ``[label](sandbox:/mnt/data/x)`` stood
        (``label`` None: only the target was left, ``(sandbox:/mnt/data/x)``)."""
        if self._thinking:
            self._end_thinking()
        self.out.append(FetchSandboxFile(file, functools.partial(_file_link, label)))
        self._last = ")"

    # helpers

    def _write(self, text: str) -> None:
        if self._thinking:
            self._end_thinking()
        if text:
            self.out.append(text)
            self._last = text[-1]

    def _end_thinking(self, closing: bool = False) -> None:
        """Inline reasoning ends: the answer (or the end) follows."""
        self._thinking = False
        self._reasoned = False
        self._reason_sep = ""
        if self.reasoning_mode == "think":
            tail = "\n</think>" if closing else "\n</think>\n\n"
        else:
            tail = "" if closing else "\n\n"
        if tail:
            self.out.append(tail)
            self._last = "\n"

    def _write_sources(self, sources: Sequence[Source]) -> None:
        lines = ["- [%s](%s)" % (_md_text(s.title or s.label()), _md_url(s.url)) for s in sources]
        self._write("%s\nSources:\n%s\n" % (self._lead(), "\n".join(lines)))

    def _vanish(self) -> None:
        """A marker disappears: if a space came before it, the spaces after it must not double it."""
        if self._last in " \n":
            self._gap = True

    def _lead(self) -> str:
        """What puts the next text at the start of a line."""
        return "" if self._last == "\n" else "\n"

    def _line(self, text: str) -> None:
        """Write ``text`` at the start of a line."""
        if self._thinking:
            self._end_thinking()
        text = self._lead() + text
        if text:
            self.out.append(text)
            self._last = text[-1]


class BotRenderer(MarkdownRenderer):
    """Only plain text a person should read in a chat app (BOT_MODE), with RefreshToV1Api's
    switches.

    ``plugin_output``: show code, execution output, browser calls and the DALL·E prompt, as
    plain lines (no fences); otherwise none of it.
    ``reference_output``: citation markers (``【n†source】`` and 2025-2026 citations) become
    ``[n]`` and one plain list of sources (``[n] title url``) ends the answer; otherwise they
    vanish without leaving double spaces (a named entity keeps its name either way).
    ``markdown_image`` / ``plain_image_url``: an image as ``![image](url)`` or as a bare URL on
    its own line (the bare URL wins when both are on); both off: no image in the text at all. A
    file the code wrote is a bare URL on its own line too when ``plain_image_url`` is on.
    ``reasoning_output``: a thinking model's reasoning as plain text before the answer;
    otherwise hidden.
    """

    def __init__(self, plugin_output: bool = False, reference_output: bool = False, markdown_image: bool = True,
                 plain_image_url: bool = False, reasoning_output: bool = False, fetch_images: bool = False):
        super().__init__("plain" if reasoning_output else "hidden", fetch_images)
        self.plugin_output = plugin_output
        self.reference_output = reference_output
        self.image_style = "plain" if plain_image_url else "markdown" if markdown_image else None
        self.plain_files = plain_image_url
        self._sources: dict = {}   # key -> "[n] title url", in the order first cited
        self._numbers: dict = {}   # url of a 2025-2026 source -> its number
        self._hidden_block = False  # a tool block was left out: what follows starts a new line
        self._star = ""            # a "*" held back from plain reasoning: maybe half of "**"

    def close(self) -> None:
        if self._thinking:
            self._end_thinking(closing=True)
        if self._footnotes:
            footnotes, self._footnotes = list(self._footnotes.values()), {}
            if self.reference_output:
                for s in footnotes:
                    self._number(s)
        if not self._sources:
            return
        text = "%s\n%s" % (self._lead(), "\n".join(self._sources.values()))
        self._sources = {}
        self._last = text[-1]
        self.out.append(text)

    def cite(self, cite: Cite) -> None:
        if cite.url is None or not self.reference_output:
            self._vanish()
            return
        if cite.number not in self._sources:
            self._sources[cite.number] = " ".join(
                x for x in ("[%d]" % cite.number, cite.title, cite.url) if x)
        self._write("[%d]" % cite.number)

    def links(self, sources: Sequence[Source]) -> None:
        if not sources or not self.reference_output:
            self._vanish()
            return
        self._write("".join("[%d]" % self._number(s) for s in sources))

    def reasoning(self, text: str) -> None:
        # Reasoning summaries mark their headings in markdown bold ("**Planning the answer**");
        # a chat app would show the asterisks, so plain reasoning goes without them.
        if self.reasoning_mode != "plain" or not text:
            super().reasoning(text)
            return
        text = self._star + text
        self._star = ""
        if text.endswith("*") and not text.endswith("**"):
            self._star, text = "*", text[:-1]  # may be half of a "**" the next piece completes
        super().reasoning(text.replace("**", ""))

    def _end_thinking(self, closing: bool = False) -> None:
        if self._star:
            self._star = ""
            self.out.append(Reasoning("*", True))
        super()._end_thinking(closing)

    def _number(self, source: Source) -> int:
        """The number of a 2025-2026 source in the answer's one source list."""
        n = self._numbers.get(source.url)
        if n is None:
            n = self._numbers[source.url] = len(self._numbers) + 1
            self._sources[("url", source.url)] = " ".join(
                x for x in ("[%d]" % n, source.title or source.attribution, source.url) if x)
        return n

    def block_open(self, kind: str, language: Optional[str] = None) -> None:
        if self.plugin_output:
            self._line(_PLAIN_OPEN[kind])

    def block_text(self, text: str) -> None:
        if self.plugin_output:
            super().block_text(text)

    def block_close(self, kind: str) -> None:
        if self.plugin_output:
            if self._last != "\n":
                self._write("\n")
        else:
            self._hidden_block = True

    def prose(self, text: str) -> None:
        # "Let me check." + (hidden code run) + "It is 42." must not read "Let me check.It is 42."
        if self._hidden_block and text:
            self._hidden_block = False
            if self._last != "\n" and text[0] != "\n":
                text = "\n" + text
        super().prose(text)

    def sandbox_file(self, file: SandboxFile, label: Optional[str] = None) -> None:
        if not self.plain_files:
            super().sandbox_file(file, label)
            return
        if label:
            self._write(label)  # the file's name as text, its URL on a line of its own
        if self._thinking:
            self._end_thinking()
        self.out.append(FetchSandboxFile(file, functools.partial(_file_line, self._lead())))
        self._last = "\n"
