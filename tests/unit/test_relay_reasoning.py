"""``Relay`` hands reasoning to the sink's ``reasoning``, in the answer's order, also when it
comes after an action (an image being fetched) and so waits in the queue."""

import asyncio

from pgw.converters.events import Image
from pgw.converters.render import FetchImage, Reasoning
from pgw.runtime import Relay


class Sink:
    def __init__(self):
        self.got = []

    def text(self, text):
        self.got.append(("text", text))

    def reasoning(self, text, inline=False):
        self.got.append(("reasoning", text, inline))


class Conversion:
    """Gives the relay a fixed list of items for each chunk."""

    def __init__(self, batches):
        self.batches = list(batches)

    def feed(self, data):
        return self.batches.pop(0)

    def close(self):
        return []


def test_reasoning_keeps_its_place_before_and_after_an_action():
    image = FetchImage(Image("file-1"), lambda url: "<img %s>" % url)
    batches = [[Reasoning("想一想"), "先说", image, Reasoning("再想", True), "答案"], [Reasoning("尾")]]
    sink = Sink()

    async def perform(action):
        return action.render("u1")

    async def run():
        relay = Relay(Conversion(batches), sink, perform)
        relay.begin()
        relay.on_chunk(b"1")
        relay.on_chunk(b"2")
        relay.finish_input()
        await relay.drained()
    asyncio.run(run())
    assert sink.got == [("reasoning", "想一想", False), ("text", "先说"), ("text", "<img u1>"),
                        ("reasoning", "再想", True), ("text", "答案"), ("reasoning", "尾", False)]
