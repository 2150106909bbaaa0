"""The conversation runtime: how one upstream answer reaches one client.

The one place that knows how an answer is relayed: ``Relay`` feeds upstream bytes to the
sans-IO ``Conversion`` and hands what comes out to a sink, in order, performing actions (an
image to fetch) in between without blocking other streams; ``StreamSink`` writes OpenAI chunks
as they come, ``CollectSink`` gathers them into one ``chat.completion`` (non-stream is the stream
collected); ``StreamWatch`` sends keep-alives and enforces upstream silence and client write
stalls for all streams with one timer. ``MediaDownloads`` fetches and saves what one answer
shows (``SavedFiles``: one upstream file saved once per process); ``ConversationRun`` is one
upstream conversation from the POST to the sink's last byte, following the answer past the SSE
body when it goes on elsewhere (a picture drawn later: polls of the conversation; a hand-off: the
resume endpoint, else polls; an answer cut at max_tokens: continue), all of it fed to the same
``Conversion``. Handlers (chat, images) build these; nothing here knows HTTP routes.

Flow control: a client that reads slower than the upstream sends pauses the upstream transfer
once more than STREAM_BUFFER_BYTES wait unsent for it, and resumes it when they have gone out;
so a stream holds a bounded amount whatever its client does. A client that takes nothing for
WRITE_TIMEOUT seconds is disconnected (and its transfer aborted).
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import gc
import logging
import time
import urllib.parse
import uuid
import weakref
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Protocol, Sequence, Union

from tornado.concurrent import Future, future_set_result_unless_cancelled
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import StreamClosedError

from pgw.converters import followup, openai_format
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, FetchImage, FetchSandboxFile, MarkdownRenderer, Reasoning
from pgw.converters.sse import EventTooLarge
from pgw.errors import ApiError, from_upstream
from pgw.logs import mask

if TYPE_CHECKING:  # for annotations only: these modules import this one, or are not needed at run time
    from pgw.conf.settings import Settings
    from pgw.converters.answer import Answer
    from pgw.converters.events import Renderer
    from pgw.converters.followup import Message
    from pgw.gateway import Gateway
    from pgw.handlers.base import ApiHandler
    from pgw.media import MediaStore
    from pgw.metrics import Metrics
    from pgw.upstream import Transfer, UpstreamClient
    from pgw.usage import TokenCounter

    # What a renderer asks the runtime to do (``MediaDownloads.perform``), and what one fetch
    # saved: ``(saved name, bytes)``.
    Action = Union[FetchImage, FetchSandboxFile]
    Saved = tuple[str, bytes]
    # The prompt as the token counter reads it: ``[(role, text)]``.
    PromptMessages = Sequence[tuple[str, str]]

log = logging.getLogger("gateway.runtime")


class Sink(Protocol):
    """Where a ``ConversationRun`` puts its answer: ``StreamSink``, the ``GatherSink``s with a
    ``finish`` (``CollectSink``, the images endpoint's ``ImageSink`` and ``ImageGather``).

    ``StreamWatch`` also reads a streaming sink's ``last_write``, ``backlog()`` and
    ``disconnect()``; only ``StreamSink`` streams, so those are ``StreamSink``'s, not here."""

    @property
    def streaming(self) -> bool: ...

    @property
    def started(self) -> bool: ...

    def attach(self, run: ConversationRun) -> None: ...

    def detach(self, run: ConversationRun) -> None: ...

    def start(self) -> None: ...

    def text(self, text: str) -> None: ...

    def reasoning(self, text: str, inline: bool = False) -> None: ...

    def keepalive(self) -> None: ...

    def stalled(self, now: float, timeout: float) -> bool: ...

    def finish(self, reason: str, prompt_messages: PromptMessages) -> None: ...

    def fail(self, error: ApiError) -> None: ...


def new_id() -> str:
    return str(uuid.uuid4())


class WriteBatch:
    """The streams with chunks to send this loop turn: one loop callback sends them all.

    Events of many streams arrive in one loop turn (every upstream socket epoll reported); a
    loop callback per stream and turn was the biggest single cost of a streamed event under
    Tornado's asyncio loop (bench/profile.py pyspy: ``add_callback`` 10% of the server's time at
    2,000 paced streams). One batch per loop.
    """

    _by_loop: "weakref.WeakKeyDictionary[IOLoop, WriteBatch]" = weakref.WeakKeyDictionary()

    def __init__(self, loop: IOLoop) -> None:
        self._loop = loop
        self._sinks: list[StreamSink] = []
        self._due = False

    @classmethod
    def current(cls) -> WriteBatch:
        loop = IOLoop.current()
        batch = cls._by_loop.get(loop)
        if batch is None:
            batch = cls._by_loop[loop] = cls(loop)
        return batch

    def add(self, sink: StreamSink) -> None:
        self._sinks.append(sink)
        if not self._due:
            self._due = True
            self._loop.add_callback(self._send)

    def _send(self) -> None:
        self._due = False
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.flush()
            except Exception:  # one stream's failure must not keep the others' text back
                log.exception("writing a stream failed")


class StreamSink:
    """Writes the answer as ``chat.completion.chunk`` events.

    Chunks wait in ``_pending`` until the loop turn ends (``WriteBatch``), then leave in one
    HTTP chunk. On an HTTP/1.1 connection the chunk is framed here and handed to the socket
    directly when Tornado has nothing queued for it: Tornado's own path (``RequestHandler.flush``
    -> ``HTTP1Connection.write`` -> ``IOStream.write``) makes two futures and two more loop
    callbacks per write. What the socket does not take goes to ``IOStream.write``, which sends it
    when the socket is writable again, in order. Relies on Tornado 6.6 internals
    (``HTTP1Connection._chunking_output``, ``IOStream._write_buffer``); tests cover it.

    A client that does not keep up pauses the upstream transfer (``_check_backlog``, see the
    module docstring); the headers wait for the first chunk (or the keep-alive sweep's start).
    """

    streaming = True
    paused = False

    def __init__(self, handler: ApiHandler, encoder: openai_format.ChunkEncoder, include_usage: bool,
                 tokens: TokenCounter) -> None:
        self.handler = handler
        self.encoder = encoder
        self.include_usage = include_usage
        self.tokens = tokens
        self.texts: Optional[list[str]] = [] if include_usage else None
        self.reasonings: Optional[list[str]] = [] if include_usage else None
        self.reasoning_inline = False
        self.last_write = time.monotonic()
        self.started = False
        self.ended = False
        self._pending: list[bytes] = []
        self._batch = WriteBatch.current()  # looked up once: text() runs for every chunk
        connection = getattr(getattr(handler, "request", None), "connection", None)
        self._connection = connection
        self._stream = getattr(connection, "stream", None)  # HTTP/1: Tornado's IOStream
        self._direct = False  # set once the headers are out on a chunked HTTP/1.1 response
        self._run: Optional[ConversationRun] = None
        self._held: Optional[Transfer] = None  # the transfer paused for this client
        self._progress = (0, 0.0)     # (bytes the client had taken, when that was last seen to grow)

    def attach(self, run: ConversationRun) -> None:
        """The conversation this sink writes: its transfer is paused and resumed from here."""
        self._run = run

    def detach(self, run: ConversationRun) -> None:
        """``run`` is over: let go of it (see ``ConversationRun.run``), unless a later run (the
        next account a pooled request tries) writes here now."""
        if self._run is run:
            self._run = None

    def start(self) -> None:
        if self.started:
            return  # started early: a request that waited in the account queue got its headers then
        self.started = True
        h = self.handler
        h.set_header("Content-Type", "text/event-stream; charset=utf-8")
        h.set_header("Cache-Control", "no-cache")
        h.set_header("X-Accel-Buffering", "no")  # tell nginx in front of us not to buffer
        h.write(self.encoder.role())
        h.flush()
        self.last_write = time.monotonic()
        self._direct = (self._stream is not None and hasattr(h, "count_sent")
                        and getattr(self._connection, "_chunking_output", False) is True)

    def text(self, text: str) -> None:
        """Queue a content chunk; it is sent when the loop turn ends, so text that arrives in a
        burst (an upstream at full speed) leaves in one send, not one per chunk."""
        if not self.started:
            self.start()
        if self.texts is not None:
            self.texts.append(text)
        self._pending.append(self.encoder.content(text))
        if len(self._pending) == 1:
            self._batch.add(self)

    def reasoning(self, text: str, inline: bool = False) -> None:
        """Reasoning text: a ``reasoning_content`` chunk, or (``inline``) content that counts as
        reasoning. Either way the stream is not quiet, so keep-alives wait."""
        if self.reasonings is not None:
            self.reasonings.append(text)
            self.reasoning_inline = inline
        if inline:
            self.text(text)
            return
        if not self.started:
            self.start()
        self._pending.append(self.encoder.reasoning(text))
        if len(self._pending) == 1:
            self._batch.add(self)

    def flush(self) -> None:
        """Send what is pending (``WriteBatch`` calls this once per loop turn)."""
        pending = self._pending
        if not pending or self.ended:
            return
        self._pending = []
        self._write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _write(self, data: bytes) -> None:
        self.last_write = time.monotonic()
        if not self._direct:
            self.handler.write(data)
            self.handler.flush()
            self._check_backlog()
            return
        stream = self._stream
        if stream is None or stream.closed():
            return  # the handler has seen the close and cancels the run
        self.handler.count_sent(len(data))
        framed = b"%x\r\n%s\r\n" % (len(data), data)
        rest = memoryview(framed)
        if not stream._write_buffer:
            try:
                sent = stream.socket.send(framed)
            except OSError:  # full (BlockingIOError), or failed: IOStream.write retries or closes
                sent = 0
            if sent == len(framed):
                return
            rest = rest[sent:]
        try:
            stream.write(rest)
        except StreamClosedError:
            return
        self._check_backlog()  # only what Tornado holds counts: what the socket took is gone

    def keepalive(self) -> None:
        if not self.started:
            self.start()  # a quiet start (a model thinking): the headers go now, UIs stop their timers
        elif not self.paused:  # a client that is not reading needs no sign of life
            self._pending.append(openai_format.KEEPALIVE)
            self.flush()

    def _tail(self, last: bytes) -> bytes:
        """What is still pending, then ``last``: the stream's final write."""
        pending = self._pending
        self._pending = []
        self.ended = True
        return b"".join(pending) + last if pending else last

    def finish(self, reason: str, prompt_messages: PromptMessages) -> None:
        if not self.started:
            self.start()
        tail = self.encoder.finish(reason)
        if self.include_usage:
            tail += self.encoder.usage(self.tokens.usage(prompt_messages, "".join(self.texts or ()),
                                                         "".join(self.reasonings or ()), self.reasoning_inline))
        self.handler.finish(self._tail(tail + openai_format.DONE))

    def fail(self, error: ApiError) -> None:
        if not self.started:
            self.start()
        self.handler.finish(self._tail(openai_format.error_event(error) + openai_format.DONE))

    def backlog(self) -> int:
        """Bytes written for this client that its socket has not taken yet."""
        stream = self._stream
        if stream is None or stream.closed():
            return 0
        return stream._total_write_index - stream._total_write_done_index  # Tornado 6.6 IOStream

    def _check_backlog(self) -> None:
        """Above the high-water mark, pause the upstream until what is written has gone out.

        The wait is the IOStream's own (a write of nothing resolves once everything before it
        is sent): the futures ``handler.flush()`` returns are not all resolved when several
        flushes overlap (Tornado 6.6's HTTP1Connection keeps only the latest)."""
        run = self._run
        if self.paused or run is None or self.backlog() <= run.gateway.settings.stream_buffer_bytes:
            return
        transfer = run.reading
        pause = getattr(transfer, "pause", None)  # a Transfer; not a poll of the conversation
        if pause is None:
            return
        self.paused = True
        self._held = transfer
        pause()
        self._stream.write(b"").add_done_callback(self._drained)  # type: ignore[union-attr]

    def _drained(self, flushed: Future[None]) -> None:
        if not flushed.cancelled():
            flushed.exception()  # a closed connection: the handler cancels the run
        self.paused = False
        transfer, self._held = self._held, None
        if not self.ended and transfer is not None:
            transfer.resume()

    def stalled(self, now: float, timeout: float) -> bool:
        """Whether the client has taken nothing for ``timeout`` seconds while bytes wait for it."""
        stream = self._stream
        if stream is None or stream.closed() or self.backlog() == 0:
            self._progress = (0, now)
            return False
        taken, since = self._progress
        done = stream._total_write_done_index
        if done != taken:
            self._progress = (done, now)
            return False
        return now - since >= timeout

    def disconnect(self) -> None:
        if self._stream is not None:
            self._stream.close()


class GatherSink:
    """Gathers the answer's text for one response at the end (``finish`` is the subclass's),
    at most MAX_ANSWER_BYTES of it: a longer answer is aborted with a 502 naming the setting."""

    streaming = False
    started = False
    paused = False

    def __init__(self, handler: ApiHandler) -> None:
        self.handler = handler
        self.texts: list[str] = []
        self.reasonings: list[str] = []  # the reasoning text (also in ``texts`` when inline)
        self.reasoning_inline = False
        self._run: Optional[ConversationRun] = None
        self._room: Optional[int] = None   # bytes the answer may still take

    def attach(self, run: ConversationRun) -> None:
        self._run = run
        self._room = run.gateway.settings.max_answer_bytes

    def detach(self, run: ConversationRun) -> None:
        if self._run is run:
            self._run = None

    def start(self) -> None:
        pass

    def text(self, text: str) -> None:
        self.texts.append(text)
        if self._room is not None:
            self._room -= len(text.encode("utf-8", "surrogatepass"))
            run = self._run
            if self._room < 0 and run is not None:
                limit = run.gateway.settings.max_answer_bytes
                self._room = None
                run.abort(ApiError(
                    502, "the answer is longer than MAX_ANSWER_BYTES (%d bytes) allows; ask for a shorter answer "
                         "or use stream: true" % limit, "upstream_error", "answer_too_large"))

    def stalled(self, now: float, timeout: float) -> bool:
        return False

    def reasoning(self, text: str, inline: bool = False) -> None:
        self.reasonings.append(text)
        self.reasoning_inline = inline
        if inline:
            self.texts.append(text)

    def keepalive(self) -> None:
        pass  # a status line sent early could not honestly report a later failure

    def fail(self, error: ApiError) -> None:
        self.handler.send_error_json(error)


class CollectSink(GatherSink):
    """Gathers the answer and writes one ``chat.completion`` at the end."""

    def __init__(self, handler: ApiHandler, encoder: openai_format.ChunkEncoder, tokens: TokenCounter) -> None:
        super().__init__(handler)
        self.encoder = encoder
        self.tokens = tokens

    def finish(self, reason: str, prompt_messages: PromptMessages) -> None:
        e = self.encoder
        text = "".join(self.texts)
        reasoning = "".join(self.reasonings)
        body = openai_format.completion(e.completion_id, e.created, e.model, text, reason,
                                        self.tokens.usage(prompt_messages, text, reasoning, self.reasoning_inline),
                                        None if self.reasoning_inline else reasoning)
        self.handler.write_json(body)


class Relay:
    """Upstream bytes -> ``Conversion`` -> sink, in order, with actions performed in between.

    ``abort(error)`` is called when the upstream sends what the gateway refuses to hold (an
    event larger than MAX_UPSTREAM_EVENT_BYTES); ``halted``: nothing more reaches the sink.
    """

    def __init__(self, conversion: Conversion, sink: Sink, perform: Callable[[Action], Awaitable[str]],
                 abort: Optional[Callable[[ApiError], None]] = None) -> None:
        self.conversion = conversion
        self.sink = sink
        self.perform = perform          # async function: action -> text
        self.abort = abort
        self.closed = False             # the client went away
        self.halted = False             # the client went away, or the answer was aborted
        self.last_upstream = time.monotonic()
        self._queue: collections.deque[Any] = collections.deque()
        self._busy = True               # hold everything until begin(): the sink is not ready
        self.begun = False              # the upstream accepted: what comes is the answer
        self._idle: Optional[Future[None]] = None
        # None once bad bytes were noted
        self._utf8: Optional[codecs.IncrementalDecoder] = codecs.getincrementaldecoder("utf-8")()

    def on_chunk(self, data: bytes) -> None:
        self.last_upstream = time.monotonic()
        if self.halted:
            return
        if self._utf8 is not None and not data.isascii():  # the real upstream escapes non-ASCII: rare
            self._check_utf8(data)
        try:
            items = self.conversion.feed(data)
        except EventTooLarge as e:
            self.halted = True
            if self.abort is not None:
                self.abort(ApiError(502, "the upstream sent an event larger than MAX_UPSTREAM_EVENT_BYTES (%d bytes)"
                                         % e.limit, "upstream_error", "upstream_event_too_large"))
            return
        if items:
            self._emit(items)

    def _check_utf8(self, data: bytes) -> None:
        """Note (once, for the log) bytes that are not UTF-8: the events holding them cannot be
        read and are skipped. ASCII chunks are not decoded: one cut inside a character and
        followed by ASCII is invalid anyway, so skipping them never raises a false alarm."""
        decoder = self._utf8
        try:
            if decoder is not None:
                decoder.decode(data)
        except UnicodeDecodeError as e:
            self._utf8 = None
            self.conversion.warnings.note("the upstream sent bytes that are not UTF-8 (%s); the events holding "
                                            "them were skipped" % e.reason)

    def finish_input(self) -> None:
        items = self.conversion.close()
        if items:
            self._emit(items)

    def follow(self, message: Optional[Message] = None, reopen: Optional[str] = None) -> None:
        """The answer goes on past the upstream body that ended: a polled message, or a new
        body about to stream (``Conversion.follow``); what it gives reaches the sink in order."""
        self.last_upstream = time.monotonic()
        items = self.conversion.follow(message, reopen)
        if items:
            self._emit(items)

    def begin(self) -> None:
        """The upstream accepted: pass on what arrived before, then everything as it comes."""
        self.begun = True
        items = list(self._queue)
        self._queue.clear()
        self._busy = False
        self._emit(items)

    def _emit(self, items: list[Any]) -> None:
        if self.halted:
            return
        if self._busy:
            self._queue.extend(items)
            return
        for i, item in enumerate(items):
            t = type(item)
            if t is str:
                self.sink.text(item)
            elif t is Reasoning:
                self.sink.reasoning(item.text, item.inline)
            else:
                self._queue.extend(items[i:])
                self._busy = True
                IOLoop.current().add_callback(self._drain)
                return

    async def _drain(self) -> None:
        try:
            while self._queue and not self.halted:
                item = self._queue.popleft()
                if type(item) is Reasoning:
                    self.sink.reasoning(item.text, item.inline)
                    continue
                text = item if type(item) is str else await self.perform(item)
                if text and not self.halted:
                    self.sink.text(text)
        finally:
            self._busy = False
            if self._idle is not None:
                future_set_result_unless_cancelled(self._idle, None)

    async def drained(self) -> None:
        """Wait until every queued item, including actions, has reached the sink."""
        while self._busy and not self.halted:
            self._idle = Future()
            await self._idle


class StreamWatch:
    """Keep-alives for quiet streams, the upstream-silence timeout and the client write timeout,
    for all streams at once.

    One periodic sweep per process instead of a timer per stream: thousands of streams cost one
    cheap loop a tick, and writing text costs only a clock read. A transfer paused because its
    client does not read is silent through no fault of the upstream: its silence is not counted
    (the client's own stall is, by WRITE_TIMEOUT). Sinks that have written their last byte but
    whose client has not taken it yet stay watched (``draining``) until it has, or WRITE_TIMEOUT.
    """

    def __init__(self, keepalive_interval: float, idle_timeout: float, write_timeout: Optional[float] = None) -> None:
        self.keepalive_interval = keepalive_interval
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self._runs: set[ConversationRun] = set()
        self._draining: set[StreamSink] = set()
        self._tasks: set[asyncio.Future[Any]] = set()  # work that follows answers (hiding conversations)
        self._ended = 0         # answers ended since the last full garbage collection
        self._collected_at = time.monotonic()  # when the last one ran
        self._added = 0         # answers begun, ever (to tell an idle moment from a quiet one)
        self.metrics: Optional[Metrics] = None  # pgw.metrics.Metrics: told once per sweep, never per event
        # A quarter of the interval: a keep-alive is then at most 25% late, not a whole tick.
        tick = min(keepalive_interval / 4, 1.0) if keepalive_interval > 0 else 1.0
        if write_timeout:
            tick = min(tick, max(write_timeout / 4, 0.05))
        self._timer = PeriodicCallback(self._sweep, tick * 1000)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def add(self, run: ConversationRun) -> None:
        self._runs.add(run)
        self._added += 1

    def discard(self, run: ConversationRun) -> None:
        self._runs.discard(run)
        sink: Any = run.sink  # backlog() is a StreamSink's: sink.streaming says it is one
        if sink.streaming and not run.closed and sink.backlog():
            self._draining.add(sink)
        self._ended += 1
        if not self._runs and self._ended >= COLLECT_AFTER:
            self._ended = 0
            IOLoop.current().call_later(IDLE_GRACE, self._collect_if_idle, self._added)

    def _collect_if_idle(self, added: int) -> None:
        """No answer has started since the last one ended IDLE_GRACE ago: the process is idle.
        (An instant with no answer open is not: with the account pool, every account's answer
        can end in one loop turn while hundreds of requests wait for the next, and a full
        collection then held each of them up by 14 ms: bench Q1.)"""
        if self._runs or self._added != added:
            self._ended = COLLECT_AFTER  # busy again: collect at the next idle moment
            return
        self._collected_at = time.monotonic()
        _collect()

    def runs(self) -> list[ConversationRun]:
        """The conversations open now (a copy)."""
        return list(self._runs)

    def spawn(self, work: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run the coroutine function ``work(*args)`` in the background, watched by ``idle``."""
        task = asyncio.ensure_future(work(*args))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    def idle(self) -> bool:
        """No answer open, none still reaching its client, no follow-up work running."""
        self._draining = {sink for sink in self._draining if sink.backlog()}
        return not (self._runs or self._draining or self._tasks)

    def __len__(self) -> int:
        return len(self._runs)

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._collected_at >= FULL_COLLECT_EVERY:
            self._collected_at = now
            self._ended = 0
            _collect("busy for %g s" % FULL_COLLECT_EVERY)
        keepalive = self.keepalive_interval
        write_timeout = self.write_timeout
        sent = 0
        for run in list(self._runs):
            relay = run.relay
            if relay.closed:
                continue
            sink: Any = relay.sink  # last_write and disconnect() are a StreamSink's (streaming, stalled() say so)
            transfer = run.reading
            if transfer is not None and getattr(transfer, "paused", False):
                relay.last_upstream = now  # the silence is the client's, not the upstream's
                if write_timeout and sink.stalled(now, write_timeout):
                    self._disconnect(sink, write_timeout)
                continue
            if now - relay.last_upstream >= self.idle_timeout:
                if transfer is not None:
                    transfer.cancel("the upstream sent nothing for %g s" % self.idle_timeout)
                continue
            if write_timeout and sink.stalled(now, write_timeout):
                self._disconnect(sink, write_timeout)
                continue
            if keepalive and sink.streaming and relay.begun and now - sink.last_write >= keepalive:
                sink.keepalive()
                sent += 1
        if self.metrics is not None:
            self.metrics.swept(len(self._runs), sent)
        for sink in list(self._draining):
            if not sink.backlog():
                self._draining.discard(sink)
            elif write_timeout and sink.stalled(now, write_timeout):
                self._draining.discard(sink)
                self._disconnect(sink, write_timeout)

    @staticmethod
    def _disconnect(sink: StreamSink, timeout: float) -> None:
        log.warning("a client took nothing of its answer for %g s (WRITE_TIMEOUT): disconnected", timeout)
        sink.disconnect()


# The oldest generation is collected only here (server.tune_gc turns its automatic collection
# off): once the process is idle after COLLECT_AFTER answers (no answer open for IDLE_GRACE: a
# pause that holds up no open stream, none is open), and, while it stays busy, at least every
# FULL_COLLECT_EVERY seconds, for what cycles still form (a library's, a rare path's). Answers
# leave none of their own (tests/e2e/test_no_garbage.py); before they did, rounds of 300 streams
# grew RSS by 4 MB each until a full collection ran.
COLLECT_AFTER = 200
FULL_COLLECT_EVERY = 600.0
IDLE_GRACE = 1.0  # seconds without an answer open that make the process idle


def _collect(why: str = "idle") -> None:
    t0 = time.perf_counter()
    found = gc.collect()
    log.debug("%s: full garbage collection, %d objects freed in %.1f ms", why, found,
              (time.perf_counter() - t0) * 1000)


def renderer_for(settings: Settings, fetch_images: bool = False) -> Renderer:
    """A fresh renderer for one answer: for bots (BOT_MODE) or for web UIs. ``fetch_images``:
    fetch every image even where the text does not show it (the images endpoint)."""
    if settings.bot_mode:
        return BotRenderer(plugin_output=settings.bot_mode_enabled_plugin_output,
                           reference_output=settings.bot_mode_enabled_bing_reference_output,
                           markdown_image=settings.bot_mode_enabled_markdown_image_output,
                           plain_image_url=settings.bot_mode_enabled_plain_image_url_output,
                           reasoning_output=settings.bot_mode_enabled_reasoning_output,
                           fetch_images=fetch_images)
    return MarkdownRenderer(settings.reasoning_output, fetch_images=fetch_images)


class MediaDownloads:
    """The images and files one answer shows: fetched from the upstream with the answer's key,
    saved in the ``MediaStore`` and linked at ``public_base/images/<name>``.

    ``perform(action)`` is what ``Relay`` calls for a renderer's action; it returns the text to
    show. ``saved`` lists ``(action, public url, bytes)`` for every file fetched, ``failed`` the
    actions whose fetch failed (the images endpoint answers from these).
    """

    def __init__(self, upstream: UpstreamClient, media: MediaStore, key: str, public_base: str,
                 known: Optional[SavedFiles] = None) -> None:
        self.upstream = upstream
        self.media = media
        self.key = key
        self.public_base = public_base
        self.known = known       # SavedFiles of this process: one upstream file is saved once
        # set by ConversationRun: sandbox files and sediment:// need the conversation id
        self.conversion: Optional[Conversion] = None
        self.saved: list[tuple[Action, str, bytes]] = []
        self.failed: list[Action] = []
        self._fetched: dict[tuple[Any, ...], Saved] = {}  # upstream file -> (saved name, bytes): this answer

    @staticmethod
    def _what(action: Action) -> Optional[tuple[Any, ...]]:
        """Which upstream file an action fetches (None: not one this knows)."""
        if type(action) is FetchImage:
            return ("file", action.image.store, action.image.file_id)
        if type(action) is FetchSandboxFile:
            return ("sandbox", action.file.message_id, action.file.path)
        return None

    async def perform(self, action: Action) -> str:
        what = self._what(action)
        saved = self._fetched.get(what) if what is not None else None
        if saved is not None:  # the same upstream file shown again: fetched and saved once
            return action.render(self.public_url(saved[0]))
        saved = await self.fetch(action)
        if saved is not None and what is not None:
            self._fetched[what] = saved
        if saved is None:
            self.failed.append(action)
            return action.render(None)
        url = self.public_url(saved[0])
        self.saved.append((action, url, saved[1]))
        return action.render(url)

    def public_url(self, name: str) -> str:
        """Where clients fetch a saved file (see handlers/images.py)."""
        return "%s/images/%s" % (self.public_base, name)

    async def fetch(self, action: Action) -> Optional[Saved]:
        """Fetch an image or sandbox file the answer shows: ``(saved name, bytes)`` or None.

        Two steps, as the upstream wants: a backend-api call (with the key) answers a
        short-lived ``download_url``; a plain GET of it (no Authorization) gives the bytes.
        Failures (refused, unreachable, a malformed URL, a full disk) are logged; the answer
        then shows a short notice instead.
        """
        known = self.known
        ident = self._identity(action)
        if known is None or ident is None:
            return await self._fetch_logged(action)
        saved = await known.get(ident, self.media)
        if saved is not None:
            return saved
        return await known.fetch(ident, self._fetch_logged(action))

    async def _fetch_logged(self, action: Action) -> Optional[Saved]:
        try:
            return await self._fetch(action)
        except Exception:
            log.exception("fetching %r failed", action)
            return None

    def _identity(self, action: Action) -> Optional[tuple[Any, ...]]:
        """What names the upstream file an action fetches, for ``SavedFiles``: per key (a copy
        is only ever linked for the account that could fetch it)."""
        cid = self.conversion.conversation_id if self.conversion is not None else None
        if type(action) is FetchImage:
            image = action.image
            # a sediment:// id is only unique within its conversation
            return (self.key, image.store, cid if image.store == "sediment" else None, image.file_id)
        if type(action) is FetchSandboxFile and cid:
            return (self.key, "sandbox", cid, action.file.message_id, action.file.path)
        return None

    async def _fetch(self, action: Any) -> Optional[Saved]:  # an Action, told apart by type(action) below
        t = type(action)
        key = self.key
        cid = self.conversion.conversation_id if self.conversion is not None else None
        if t is FetchImage:
            what = action.image.file_id
            quoted = urllib.parse.quote(what, safe="")
            if action.image.store == "sediment":
                if not cid:
                    log.warning("image %s: no conversation id to fetch it with", what)
                    return None
                path = "conversation/%s/attachment/%s/download" % (urllib.parse.quote(cid, safe=""), quoted)
            else:
                path = "files/%s/download" % quoted
            url, reason = await self.upstream.download_url(key, path)
        elif t is FetchSandboxFile:
            what = action.file.path
            if not cid:
                log.warning("sandbox file %s: no conversation id to fetch it with", what)
                return None
            url, reason = await self.upstream.download_url(
                key, "conversation/%s/interpreter/download" % urllib.parse.quote(cid, safe=""),
                message_id=action.file.message_id, sandbox_path=what)
        else:
            log.warning("no handler for action %r", action)
            return None
        if url is None:
            log.warning("download of %s for key %s refused: %s", what, mask(key), reason)
            return None
        got = await self.upstream.fetch_url(url)
        data = bytes(got.body)
        if got.status != 200 or not data:
            log.warning("download of %s failed: %s%s", what,
                        got.failure if got.status == 599 and got.failure else "HTTP %s" % got.status,
                        " (larger than the download limit)" if got.too_big else "")
            return None
        name = self.media.save_image(data) if t is FetchImage else self.media.save_file(what, data)
        if name is None:
            log.warning("download of %s did not give an image (%d bytes)", what, len(data))
            return None
        return name, data


class SavedFiles:
    """The upstream files this process has saved: a picture shown again (a conversation polled
    after the stream showed it, a later answer about the same file) links the copy saved the
    first time instead of saving another. A fetch under way is shared by whoever asks meanwhile.
    Bounded (least recently used go first); a file the age sweep deleted is fetched again."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        # identity -> saved name, or Future while fetching
        self._entries: collections.OrderedDict[tuple[Any, ...], Union[str, Future[Optional[Saved]]]] = \
            collections.OrderedDict()

    async def get(self, ident: tuple[Any, ...], media: MediaStore) -> Optional[Saved]:
        """``(saved name, bytes)`` of a file saved before, or None."""
        entry = self._entries.get(ident)
        if entry is None:
            return None
        if isinstance(entry, Future):
            return await entry
        path = media.path(entry)
        if path is None:
            del self._entries[ident]
            return None
        self._entries.move_to_end(ident)
        with open(path, "rb") as f:
            return entry, f.read()

    async def fetch(self, ident: tuple[Any, ...], fetching: Awaitable[Optional[Saved]]) -> Optional[Saved]:
        """Await ``fetching`` (giving ``(name, bytes)`` or None) as the one fetch of ``ident``."""
        future: Future[Optional[Saved]] = Future()
        self._entries[ident] = future
        result = None
        try:
            result = await fetching
        finally:
            if result is None:
                self._entries.pop(ident, None)
            else:
                self._entries[ident] = result[0]
                while len(self._entries) > self.limit:
                    self._entries.popitem(last=False)
            future_set_result_unless_cancelled(future, result)
        return result


class _Waiting:
    """What the stream watch holds for a run while it polls the conversation instead of reading
    a transfer: ``cancel`` (the client left, or the upstream went silent) ends the wait at once."""

    def __init__(self) -> None:
        self.failure: Optional[str] = None
        self.cancelled = False
        self._wake: Future[None] = Future()

    def cancel(self, reason: str = "cancelled") -> None:
        if not self.cancelled:
            self.cancelled = True
            self.failure = reason
            future_set_result_unless_cancelled(self._wake, None)

    async def sleep(self, seconds: float) -> None:
        if not self.cancelled:
            await asyncio.wait([self._wake], timeout=seconds)


def no_answer_error(transfer: Transfer) -> ApiError:
    """The error for a conversation the upstream never answered: it could not be reached, or
    it took the request and then sent nothing (StreamWatch's silence limit) or hung up."""
    if transfer.cancelled:  # by StreamWatch: the upstream kept silent (the client leaving returns earlier)
        return ApiError(504, "%s after taking the request (UPSTREAM_IDLE_TIMEOUT)" % transfer.failure,
                        "upstream_error", "upstream_timeout")
    if transfer.connect_failed:
        return ApiError(502, "the upstream could not be reached: %s (check BASE_URL)" % transfer.failure,
                        "upstream_error", "upstream_unreachable")
    return ApiError(502, "the upstream did not answer: %s" % transfer.failure, "upstream_error", "upstream_no_answer")


class ConversationRun:
    """One upstream conversation, from the POST to the sink's last byte.

    ``run()`` starts the upstream transfer and waits until it accepts: a refusal raises the
    matching ``ApiError`` before anything was sent to the client. Then it starts the sink,
    relays the converted answer into it and finishes it (or fails it: an in-stream error, a cut
    connection, an empty answer). ``cancel`` (the client left) aborts the transfer at once;
    ``abort(error)`` (a limit exceeded, the gateway shutting down) aborts it and ends the answer
    with ``error``. Afterwards the conversation is hidden upstream when the settings say so.
    """

    def __init__(self, gateway: Gateway, key: str, payload: dict[str, Any], sink: Sink, downloads: MediaDownloads,
                 prompt_messages: PromptMessages, renderer: Optional[Renderer] = None) -> None:
        self.gateway = gateway
        self.key = key
        self.payload = payload
        self.sink = sink
        self.downloads = downloads
        self.prompt_messages = prompt_messages
        settings = gateway.settings
        echo_ids = [m["id"] for m in payload["messages"]]  # the upstream may echo them back
        self.conversion = Conversion(renderer or renderer_for(settings), settings.upstream_encoding, echo_ids,
                                     max_event_bytes=settings.max_upstream_event_bytes)
        downloads.conversion = self.conversion
        self.relay = Relay(self.conversion, sink, downloads.perform, self.abort)
        self.transfer: Any = None  # the conversation's POST (its status is the answer's upstream status)
        self.reading: Any = None   # what the answer is read from now: that Transfer, a resumed or
        #                            continued one, or _Waiting while the conversation is polled
        self.polls = 0            # GET conversation/{id} calls made while the answer finished elsewhere
        self._continued = True    # False once the upstream refused to continue a cut answer
        self.error: Optional[ApiError] = None  # why the answer was aborted (abort)
        # (status or None, body) when the upstream refused before any answer byte
        self.refused: Optional[tuple[Optional[int], bytes]] = None
        # Called once the upstream is done with the answer (its body ended, follow-ups done):
        # the account pool gives the account to the next request then (``AccountPool.free``).
        self.on_upstream_done: Optional[Callable[[], Optional[Awaitable[None]]]] = None

    @property
    def closed(self) -> bool:
        """The client went away."""
        return self.relay.closed

    def cancel(self, reason: str = "the client disconnected") -> None:
        relay = self.relay
        if not relay.closed:
            relay.closed = relay.halted = True
            if self.reading is not None:
                self.reading.cancel(reason)

    def abort(self, error: ApiError) -> None:
        """End the answer with ``error`` now: nothing more reaches the sink, the transfer is aborted."""
        if self.error is None and not self.relay.closed:
            self.error = error
            self.relay.halted = True
            if self.reading is not None:
                self.reading.cancel(error.message)

    async def run(self) -> None:
        gw = self.gateway
        relay, sink, key = self.relay, self.sink, self.key
        transfer = self.transfer = self.reading = gw.upstream.start_conversation(key, self.payload, relay.on_chunk)
        sink.attach(self)
        gw.watch.add(self)
        try:
            status = await transfer.accepted
            if status != 200 or not _is_event_stream(transfer.content_type):
                await self._refused(status, transfer)  # raises, unless the client has gone
                return
            # A stream's headers go with its first chunk, or after KEEPALIVE_INTERVAL of quiet
            # (StreamWatch): an answer that fails before it says anything (a usage cap, an empty
            # answer) still gets an honest HTTP status.
            relay.begin()
            await transfer.done
            if relay.closed:
                return
            error = self.error
            if error is None and transfer.failure is None:
                error = await self._follow()
                if relay.closed:
                    return
            if self.on_upstream_done is not None:
                # The request the account went to starts its upstream call before this answer is
                # finished, and so do those of every account freed meanwhile (the pool says
                # when: ``AccountPool.free``): each answer's finishing would otherwise run first
                # whenever it is ahead of them in the loop's queue (bench Q1's p99).
                handing = self.on_upstream_done()
                if handing is not None:
                    await handing
            if self.error is None:
                relay.finish_input()
                await relay.drained()
            if relay.closed:
                return
            transfer = self.reading  # the last body read (a resumed or continued turn, or the polls)
            error = self.error or error
            if error is None:
                reason, error = self.conversion.outcome(cut=transfer.failure is not None)
            if error is not None and error is not self.error and transfer.failure:
                error.message += " (%s)" % transfer.failure
            if error is not None:
                log.warning("answer for key %s failed: %s", mask(key), error.message)
                if sink.streaming and not sink.started:
                    raise error  # nothing was sent: the handler answers with the error's status
                sink.fail(error)
            else:
                sink.finish(reason, self.prompt_messages)  # type: ignore[arg-type]  # outcome(): no error, a reason
        finally:
            gw.watch.discard(self)
            for warning in self.conversion.warnings:  # each kind once per stream
                log.warning("upstream stream for key %s: %s", mask(key), warning)
            cid = self.conversion.conversation_id
            if cid and gw.settings.need_delete_conversation_after_response:
                gw.watch.spawn(gw.upstream.hide_conversation, key, cid)
            # The references back to this run go: the sink's and the relay's. What a request made
            # (handler, run, relay, sink, conversion, transfer: ~130 objects) is then freed the
            # moment the handler is, instead of as a garbage cycle the collector must find (a full
            # collection freeing 27,000 such objects held the loop for 31 ms: bench Q1's p99).
            sink.detach(self)
            relay.abort = None

    async def _refused(self, status: Optional[int], transfer: Transfer) -> None:
        """The upstream answered with something other than the answer's events: raise the
        matching ``ApiError`` (nothing was sent to the client yet). Returns only when the
        client has gone."""
        if status == 200:
            self.abort(ApiError(502, "the upstream answered HTTP 200 with %s instead of an event stream (a proxy "
                                     "or Cloudflare page in front of it?)" % transfer.content_type,
                                "upstream_error", "upstream_not_event_stream"))
            status = None
        await transfer.done
        if self.relay.closed:
            return
        if self.error is not None:
            raise self.error
        self.refused = (status, bytes(transfer.error_body))
        if status is None:
            raise no_answer_error(transfer)
        raise from_upstream(status, bytes(transfer.error_body), transfer.headers)

    # Following an answer past its SSE body: pictures drawn later, hand-offs, cut answers.

    # Conversations being polled in this process: one poller per conversation.
    _polled: set[str] = set()
    # Follow-ups of one answer at most (hand-offs, polls, continuations together): no endless chase.
    MAX_FOLLOWUPS = 32

    async def _follow(self) -> Optional[ApiError]:
        """After the SSE body ended: follow the answer where it goes on until nothing is left
        to wait for. Returns an ``ApiError`` that ends the answer, or None (then the
        conversion's outcome decides). Everything new goes through the same ``Conversion``."""
        settings = self.gateway.settings
        answer = self.conversion._answer
        handled_images: set[str] = set()
        continues = 0
        for _ in range(self.MAX_FOLLOWUPS):
            await self.relay.drained()
            if self.relay.closed or answer.upstream_error or self.reading.failure is not None or not answer.complete:
                return None  # nothing to follow: the client left, or this body already failed the answer
            if answer.handoff_to is not None:
                error = await self._follow_handoff(answer)
            elif set(answer.image_tasks) - handled_images:
                pending = set(answer.image_tasks) - handled_images
                handled_images |= pending
                error = await self._poll(lambda messages, ids=pending: followup.images_ready(messages, ids),  # type: ignore[misc]
                                         settings.image_wait_timeout, ApiError(
                                             504, "no picture after waiting %g s (IMAGE_WAIT_TIMEOUT) for the "
                                             "upstream to finish drawing it" % settings.image_wait_timeout,
                                             "upstream_error", "image_timeout"))
            elif (answer.finish_reason == "length" and self._continued and continues < settings.auto_continue
                  and answer.last_prose_id):
                continues += 1
                error = await self._continue(answer)
            else:
                return None
            if error is not None:
                return error
        log.warning("answer for key %s: stopped following after %d follow-ups", mask(self.key), self.MAX_FOLLOWUPS)
        return None

    def _read(self, transfer: Union[Transfer, _Waiting]) -> None:
        """Read ``transfer`` (a new upstream body of this answer) instead of the last one (the
        stream watch, flow control and ``abort`` act on what is read now)."""
        self.reading = transfer

    async def _follow_handoff(self, answer: Answer) -> Optional[ApiError]:
        """``stream_handoff``: stream the rest from ``f/conversation/resume``; if that is
        refused or unreachable, poll the conversation until its last answer has finished."""
        cid = self.conversion.conversation_id
        token = answer.resume_conversation_token
        settings = self.gateway.settings
        if not cid:
            return ApiError(502, "the upstream handed the answer off without naming the conversation",
                            "upstream_error", "upstream_handoff")
        self.relay.follow()  # a new body of the same answer (this also clears the hand-off)
        limit = settings.handoff_wait_timeout
        deadline = time.monotonic() + limit
        if token:
            transfer = self.gateway.upstream.resume_conversation(self.key, token, cid, self.relay.on_chunk)
            self._read(transfer)
            # the whole hand-off, resumed stream included, is bounded (silence alone is UPSTREAM_IDLE_TIMEOUT)
            timer = IOLoop.current().call_later(
                limit, transfer.cancel, "the handed-off answer took longer than %g s (HANDOFF_WAIT_TIMEOUT)" % limit)
            try:
                status = await transfer.accepted
                await transfer.done
            finally:
                IOLoop.current().remove_timeout(timer)
            if status == 200 or transfer.cancelled:
                return None
            if self.relay.closed:
                return None
            why = ("unreachable: %s" % transfer.failure if status is None
                   else "refused: HTTP %s %s" % (status, bytes(transfer.error_body[:200]).decode("utf-8", "replace")))
            log.info("resuming conversation %s for key %s %s; polling it instead", cid, mask(self.key), why)
        error = await self._poll(followup.turn_ready, max(deadline - time.monotonic(), 0), ApiError(
            504, "the answer was handed off (stream_handoff) and had not finished after %g s (HANDOFF_WAIT_TIMEOUT)"
            % limit, "upstream_error", "handoff_timeout"))
        if error is None and not self.relay.closed and self.reading.failure is None:
            answer.done()  # the polled turn has ended: that is this answer's completion
        return error

    async def _continue(self, answer: Answer) -> Optional[ApiError]:  # a follow-up step: never an error
        """``finish_details: max_tokens``: post ``"action": "continue"`` after the cut message
        and stream the rest into the same answer. A refused continuation leaves the answer as it
        was: cut, finishing with ``length``."""
        cid = self.conversion.conversation_id
        parent = answer.last_prose_id
        if not cid:
            return None
        body = followup.continue_payload(self.payload, cid, parent)  # type: ignore[arg-type]  # _follow checked it
        self.relay.follow(reopen=parent)
        answer.finish_reason = None  # the continuation says how the answer ends now
        previous = self.reading
        transfer = self.gateway.upstream.start_conversation(self.key, body, self.relay.on_chunk)
        self._read(transfer)
        status = await transfer.accepted
        await transfer.done
        if status != 200 and not self.relay.closed:
            log.warning("continuing the cut answer in %s for key %s failed: %s", cid, mask(self.key),
                        transfer.failure or "HTTP %s" % status)
            self.reading = previous  # nothing of it was read: the answer stays as it was, cut
            answer.done()
            answer.finish_reason = "length"
            self._continued = False
        return None

    async def _poll(self, ready: Callable[[list[Message]], Optional[list[Message]]], timeout: float,
                    timeout_error: ApiError) -> Optional[ApiError]:
        """Poll ``GET conversation/{id}`` every IMAGE_POLL_INTERVAL until ``ready(messages of its
        current branch)`` gives the messages to pass on, then read them into the answer. The
        stream stays registered with the watch (keep-alives flow); the client leaving ends the
        wait at once; ``timeout`` seconds without ``ready`` is ``timeout_error``."""
        gw = self.gateway
        cid = self.conversion.conversation_id
        if not cid:
            return ApiError(502, "the answer goes on elsewhere, but the upstream named no conversation to follow",
                            "upstream_error", "upstream_incomplete")
        if cid in ConversationRun._polled:
            return ApiError(409, "conversation %s is already being followed" % cid, "upstream_error", "already_polled")
        ConversationRun._polled.add(cid)
        waiting = _Waiting()
        self._read(waiting)
        interval = gw.settings.image_poll_interval
        request_timeout = min(gw.settings.upstream_idle_timeout, 30)
        deadline = time.monotonic() + timeout
        try:
            while True:
                await waiting.sleep(min(interval, max(deadline - time.monotonic(), 0)))
                if waiting.cancelled or self.relay.closed:
                    return None
                self.polls += 1
                status, doc, raw = await gw.upstream.get_conversation(self.key, cid, request_timeout)
                if waiting.cancelled or self.relay.closed:
                    return None
                self.relay.last_upstream = time.monotonic()  # the upstream answers: not silent
                if status == 200:
                    messages = ready(followup.path(doc))
                    if messages is not None:
                        for message in messages:
                            self.relay.follow(message)
                        return None
                elif status != 599 and status < 500 and status != 429:
                    # The answer has begun: a refused poll is the upstream failing it, not a bad request.
                    error = from_upstream(status, raw)
                    return ApiError(502, "following the answer in conversation %s failed: %s" % (cid, error.message),
                                    "upstream_error", "upstream_poll_failed")
                else:
                    log.info("polling conversation %s for key %s: HTTP %s", cid, mask(self.key), status)
                if time.monotonic() >= deadline:
                    return timeout_error
        finally:
            ConversationRun._polled.discard(cid)


def _is_event_stream(content_type: Optional[str]) -> bool:
    """Whether an answer's Content-Type can be the conversation's events (none at all is taken
    on trust; a page of HTML or an image is not)."""
    return not content_type or not content_type.startswith(("text/html", "image/", "application/xhtml"))
