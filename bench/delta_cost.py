"""Cost per upstream event as an answer grows, legacy (whole messages) vs v1 (patches).

    ./.venv/bin/python bench/delta_cost.py [--events 5000] [--long-events 100000] [--step 4]

Streams one long answer from the fake upstream's script renderers through the gateway's
conversion (SSE decoding, dialect, answer, markdown), one event per network chunk, and times
each ``feed``. In the legacy dialect every event repeats the whole text, so the cost of an
event grows with the answer; in v1 an event carries only its own text and the cost should stay
flat. Prints a table; asserts nothing (timing belongs here, not in tests).
"""

import argparse
import time

from pgw.converters.pipeline import Conversion
from pgw.converters.render import MarkdownRenderer
from fakeupstream.script import Msg, Script, legacy_events, v1_events

BASE = "长回答 long answer 的一部分，mixed 中文 and ASCII. "
WINDOW = 1000
# events before the first text event (no user message echoed); v1 (2025-2026 form): delta_encoding,
# the resume token, the hidden system root, the answer's root and its first message_marker
LEADING = {"legacy": 0, "v1": 5}


def answer(events, step):
    chars = events * step
    return Script([Msg((BASE * (chars // len(BASE) + 1))[:chars], step=step)])


def measure(render, events, step):
    """Render the stream, feed it event by event; return per-event seconds and stream bytes."""
    stream = render(answer(events, step), "bench-conversation", [], pings=False)
    conv = Conversion(MarkdownRenderer())
    clock = time.perf_counter
    costs = []
    size = 0
    produced = 0
    for event in stream:
        size += len(event)
        t0 = clock()
        out = conv.feed(event)
        costs.append(clock() - t0)
        produced += sum(len(x) for x in out if type(x) is str)
    produced += sum(len(x) for x in conv.close() if type(x) is str)
    if produced != events * step:
        raise SystemExit("conversion lost text: %d of %d characters" % (produced, events * step))
    return costs, size


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=5000, help="text events of the answer compared in both dialects")
    p.add_argument("--long-events", type=int, default=100000, help="text events of the extra long v1 answer")
    p.add_argument("--step", type=int, default=4, help="characters per event")
    args = p.parse_args()
    runs = [("legacy", legacy_events, args.events), ("v1", v1_events, args.events),
            ("v1", v1_events, args.long_events)]
    print("%-7s %8s %9s %10s %14s %14s %8s %9s" % ("dialect", "events", "chars", "stream MB", "first us/evt",
                                                   "last us/evt", "last/1st", "end ms"))
    for name, render, events in runs:
        costs, size = measure(render, events, args.step)
        # The events that each add `step` characters: in legacy the stream starts with them, in
        # v1 after `delta_encoding` and the message's `add`. After them comes the message's end
        # (v1: the final patch list, where the kept pieces are joined once) and the closing events.
        lead = LEADING[name]
        text = costs[lead:lead + events - 1]
        window = min(WINDOW, len(text))
        first = sum(text[:window]) / window
        last = sum(text[-window:]) / window
        end = sum(costs[lead + events - 1:])
        print("%-7s %8d %9d %10.1f %14.2f %14.2f %8.1f %9.2f" % (
            name, events, events * args.step, size / 1e6, first * 1e6, last * 1e6, last / first, end * 1e3))


if __name__ == "__main__":
    main()
