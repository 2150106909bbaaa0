"""The answers the bench streams: E events of C characters each, mixed Chinese and ASCII.

Rendering reuses the fake upstream's ``Script``/``Msg`` and its dialect renderers, so the bench
streams exactly what the tests' fake upstream would. ``frames`` groups the rendered events into
E frames that each reveal C more characters of the answer: the paced upstream sends frame i at
t0 + i*T, and the load generator knows when each character was due.
"""

from pgw.converters.pipeline import Conversion
from pgw.converters.render import MarkdownRenderer
from fakeupstream import script as fake_script


def _dialects():
    """The fake upstream's renderers by the bench's names: ``legacy`` (late 2023), ``v1-2024``
    (patches, early 2024), ``v1-2025`` (what live accounts send in 2025-2026: roots with ``c``,
    typed frames between the messages); ``v1`` is the fake upstream's own default v1 form."""
    renderers = dict(getattr(fake_script, "RENDERERS", {"legacy": fake_script.legacy_events,
                                                        "v1": fake_script.v1_events}))
    found = {"legacy": renderers["legacy"], "v1": renderers["v1"]}
    if "v1-2024" in renderers:  # the fake upstream's v1 is then the 2025-2026 form
        found["v1-2024"] = renderers["v1-2024"]
        found["v1-2025"] = renderers["v1"]
    else:
        found["v1-2024"] = renderers["v1"]
    return found


DIALECTS = _dialects()

_BASE = "性能测试 bench 的回答，mixed 中文 and ASCII text; 每个事件 adds a few characters. "
USER = {"id": "aaa2bench-0000-4000-8000-000000000000", "author": {"role": "user"},
        "content": {"content_type": "text", "parts": ["bench"]}, "metadata": {}}
CONVERSATION_ID = "5d6bbenc-0000-4000-8000-000000000000"


def answer_text(events, chars):
    n = events * chars
    return (_BASE * (n // len(_BASE) + 1))[:n]


def render(events, chars, dialect="legacy"):
    """The upstream's event stream (a list of bytes, one per SSE event) and the answer text."""
    text = answer_text(events, chars)
    script = fake_script.Script([fake_script.Msg(text, step=chars)], model="gpt-4")
    return DIALECTS[dialect](script, CONVERSATION_ID, [USER], pings=False), text


def text_of(stream):
    """The answer text the gateway's converter reads from an upstream event stream (bytes)."""
    conv = Conversion(MarkdownRenderer())
    return "".join(x for x in conv.feed(stream) + conv.close() if type(x) is str)


def frames(events):
    """Group events into frames that each reveal new answer text: ``[(bytes, chars so far)]``.

    How much text an event reveals is dialect-specific, so it is read off the gateway's own
    converter (exactness is checked separately, against the script's text). Events that reveal
    nothing travel with the frame before them (leading ones with the first frame).
    """
    conv = Conversion(MarkdownRenderer())
    out, leading, total = [], [], 0
    for ev in list(events) + [None]:
        new = conv.close() if ev is None else conv.feed(ev)
        revealed = sum(len(x) for x in new if type(x) is str)
        total += revealed
        end = ev is None
        ev = ev or b""
        if revealed or end and not out:
            out.append([b"".join(leading) + ev, total])
            leading = []
        elif out:
            out[-1][0] += ev
        else:
            leading.append(ev)
    return [tuple(f) for f in out]
