"""The conversation runtime: how one upstream answer reaches one client.

The one place that knows how an answer is relayed: ``Relay`` feeds upstream bytes to the
sans-IO ``Conversion`` and hands what comes out to a sink, in order, performing actions (an
image to fetch) in between without blocking other streams; ``StreamSink`` writes OpenAI chunks
as they come, ``CollectSink`` gathers them into one ``chat.completion`` (non-stream is the stream
collected); ``StreamWatch`` sends keep-alives and enforces upstream silence and client write
stalls for all streams with one timer. ``MediaDownloads`` fetches and saves what one answer
shows; ``ConversationRun`` is one upstream conversation from the POST to the sink's last byte.
Handlers (chat, images) build these; nothing here knows HTTP routes.

Flow control: a client that reads slower than the upstream sends pauses the upstream transfer
once more than STREAM_BUFFER_BYTES wait unsent for it, and resumes it when they have gone out;
so a stream holds a bounded amount whatever its client does. A client that takes nothing for
WRITE_TIMEOUT seconds is disconnected (and its transfer aborted).
"""

import asyncio
import codecs
import collections
import gc
import logging
import time
from typing import Optional
import urllib.parse
import uuid

from tornado.concurrent import Future, future_set_result_unless_cancelled
from tornado.ioloop import IOLoop, PeriodicCallback

from pgw.converters import openai_format
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, FetchImage, FetchSandboxFile, MarkdownRenderer, Reasoning
from pgw.converters.sse import EventTooLarge
from pgw.errors import ApiError, from_upstream
from pgw.logs import mask

log = logging.getLogger("gateway.runtime")


def new_id():
    return str(uuid.uuid4())


class StreamSink:
    """Writes the answer as ``chat.completion.chunk`` events, pausing the upstream while its
    client does not keep up (see the module docstring)."""

    streaming = True
    paused = False

    def __init__(self, handler, encoder, include_usage, tokens):
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
        self._flush_due = False
        self._loop = IOLoop.current()  # looked up once: text() runs for every chunk
        self._run: Optional[ConversationRun] = None
        self._stream = getattr(handler.request.connection, "stream", None)  # HTTP/1: Tornado's IOStream
        self._progress = (0, 0.0)     # (bytes the client had taken, when that was last seen to grow)

    def attach(self, run):
        """The conversation this sink writes: its transfer is paused and resumed from here."""
        self._run = run

    def start(self):
        if self.started:
            return  # started early: a request that waited in the account queue got its headers then
        self.started = True
        h = self.handler
        h.set_header("Content-Type", "text/event-stream; charset=utf-8")
        h.set_header("Cache-Control", "no-cache")
        h.set_header("X-Accel-Buffering", "no")  # tell nginx in front of us not to buffer
        self._send(self.encoder.role())

    def text(self, text):
        """Write a content chunk; the socket write happens once per loop turn, so text that
        arrives in a burst (an upstream at full speed) leaves in one send, not one per chunk."""
        if self.texts is not None:
            self.texts.append(text)
        self.last_write = time.monotonic()
        self.handler.write(self.encoder.content(text))
        if not self._flush_due:
            self._flush_due = True
            self._loop.add_callback(self._flush)

    def reasoning(self, text, inline=False):
        """Reasoning text: a ``reasoning_content`` chunk, or (``inline``) content that counts as
        reasoning. Either way the stream is not quiet, so keep-alives wait."""
        if self.reasonings is not None:
            self.reasonings.append(text)
            self.reasoning_inline = inline
        if inline:
            self.text(text)
            return
        self.last_write = time.monotonic()
        self.handler.write(self.encoder.reasoning(text))
        if not self._flush_due:
            self._flush_due = True
            self._loop.add_callback(self._flush)

    def _flush(self):
        self._flush_due = False
        if not self.ended:
            self.handler.flush()
            self._check_backlog()

    def keepalive(self):
        if not self.paused:  # a client that is not reading needs no sign of life
            self._send(openai_format.KEEPALIVE)

    def finish(self, reason, prompt_messages):
        self.ended = True
        tail = self.encoder.finish(reason)
        if self.include_usage:
            tail += self.encoder.usage(self.tokens.usage(prompt_messages, "".join(self.texts or ()),
                                                         "".join(self.reasonings or ()), self.reasoning_inline))
        self.handler.finish(tail + openai_format.DONE)

    def fail(self, error):
        self.ended = True
        self.handler.finish(openai_format.error_event(error) + openai_format.DONE)

    def _send(self, data):
        self.last_write = time.monotonic()
        self.handler.write(data)
        self.handler.flush()
        self._check_backlog()

    def backlog(self):
        """Bytes written for this client that its socket has not taken yet."""
        stream = self._stream
        if stream is None or stream.closed():
            return 0
        return stream._total_write_index - stream._total_write_done_index  # Tornado 6.6 IOStream

    def _check_backlog(self):
        """Above the high-water mark, pause the upstream until what is written has gone out.

        The wait is the IOStream's own (a write of nothing resolves once everything before it
        is sent): the futures ``handler.flush()`` returns are not all resolved when several
        flushes overlap (Tornado 6.6's HTTP1Connection keeps only the latest)."""
        run = self._run
        if self.paused or run is None or run.transfer is None:
            return
        transfer = run.transfer
        if self.backlog() <= run.gateway.settings.stream_buffer_bytes:
            return
        self.paused = True
        transfer.pause()
        self._stream.write(b"").add_done_callback(self._drained)  # type: ignore[union-attr]

    def _drained(self, flushed):
        if not flushed.cancelled():
            flushed.exception()  # a closed connection: the handler cancels the run
        self.paused = False
        transfer = self._run.transfer if self._run is not None else None
        if not self.ended and transfer is not None:
            transfer.resume()

    def stalled(self, now, timeout):
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

    def disconnect(self):
        if self._stream is not None:
            self._stream.close()


class GatherSink:
    """Gathers the answer's text for one response at the end (``finish`` is the subclass's),
    at most MAX_ANSWER_BYTES of it: a longer answer is aborted with a 502 naming the setting."""

    streaming = False
    started = False
    paused = False

    def __init__(self, handler):
        self.handler = handler
        self.texts = []
        self.reasonings = []          # the reasoning text (also in ``texts`` when inline)
        self.reasoning_inline = False
        self._run: Optional[ConversationRun] = None
        self._room: Optional[int] = None   # bytes the answer may still take

    def attach(self, run):
        self._run = run
        self._room = run.gateway.settings.max_answer_bytes

    def start(self):
        pass

    def text(self, text):
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

    def stalled(self, now, timeout):
        return False

    def reasoning(self, text, inline=False):
        self.reasonings.append(text)
        self.reasoning_inline = inline
        if inline:
            self.texts.append(text)

    def keepalive(self):
        pass  # a status line sent early could not honestly report a later failure

    def fail(self, error):
        self.handler.send_error_json(error)


class CollectSink(GatherSink):
    """Gathers the answer and writes one ``chat.completion`` at the end."""

    def __init__(self, handler, encoder, tokens):
        super().__init__(handler)
        self.encoder = encoder
        self.tokens = tokens

    def finish(self, reason, prompt_messages):
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

    def __init__(self, conversion, sink, perform, abort=None):
        self.conversion = conversion
        self.sink = sink
        self.perform = perform          # async function: action -> text
        self.abort = abort
        self.closed = False             # the client went away
        self.halted = False             # the client went away, or the answer was aborted
        self.last_upstream = time.monotonic()
        self._queue: collections.deque = collections.deque()
        self._busy = True               # hold everything until begin(): the sink is not ready
        self._idle = None
        # None once bad bytes were noted
        self._utf8: Optional[codecs.IncrementalDecoder] = codecs.getincrementaldecoder("utf-8")()

    def on_chunk(self, data):
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

    def _check_utf8(self, data):
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

    def finish_input(self):
        items = self.conversion.close()
        if items:
            self._emit(items)

    def begin(self):
        """The sink has started: pass on what arrived before, then everything as it comes."""
        items = list(self._queue)
        self._queue.clear()
        self._busy = False
        self._emit(items)

    def _emit(self, items):
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

    async def _drain(self):
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

    async def drained(self):
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

    def __init__(self, keepalive_interval, idle_timeout, write_timeout=None):
        self.keepalive_interval = keepalive_interval
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self._runs = set()
        self._draining = set()
        self._tasks = set()     # work that follows answers (hiding conversations)
        self._ended = 0         # answers ended since the last full garbage collection
        self.metrics = None  # pgw.metrics.Metrics: told once per sweep, never per event
        # A quarter of the interval: a keep-alive is then at most 25% late, not a whole tick.
        tick = min(keepalive_interval / 4, 1.0) if keepalive_interval > 0 else 1.0
        if write_timeout:
            tick = min(tick, max(write_timeout / 4, 0.05))
        self._timer = PeriodicCallback(self._sweep, tick * 1000)

    def start(self):
        self._timer.start()

    def stop(self):
        self._timer.stop()

    def add(self, run):
        self._runs.add(run)

    def discard(self, run):
        self._runs.discard(run)
        sink = run.sink
        if sink.streaming and not run.closed and sink.backlog():
            self._draining.add(sink)
        self._ended += 1
        if not self._runs and self._ended >= COLLECT_AFTER:
            self._ended = 0
            IOLoop.current().add_callback(_collect)

    def runs(self):
        """The conversations open now (a copy)."""
        return list(self._runs)

    def spawn(self, work, *args):
        """Run the coroutine function ``work(*args)`` in the background, watched by ``idle``."""
        task = asyncio.ensure_future(work(*args))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task):
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    def idle(self):
        """No answer open, none still reaching its client, no follow-up work running."""
        self._draining = {sink for sink in self._draining if sink.backlog()}
        return not (self._runs or self._draining or self._tasks)

    def __len__(self):
        return len(self._runs)

    def _sweep(self):
        now = time.monotonic()
        keepalive = self.keepalive_interval
        write_timeout = self.write_timeout
        sent = 0
        for run in list(self._runs):
            relay = run.relay
            if relay.closed:
                continue
            sink = relay.sink
            transfer = run.transfer
            if transfer is not None and transfer.paused:
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
            if keepalive and sink.started and now - sink.last_write >= keepalive:
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
    def _disconnect(sink, timeout):
        log.warning("a client took nothing of its answer for %g s (WRITE_TIMEOUT): disconnected", timeout)
        sink.disconnect()


# Every answer leaves reference cycles (Tornado's handler and connection among them), and with the
# thresholds server.tune_gc sets the oldest generation is collected only every few thousand
# answers: rounds of 300 streams grew RSS by 4 MB each, 14 rounds in a row (+47 MB), before any
# full collection ran; with this, RSS stays within 5 MB of the first round's. So once the
# process is idle after COLLECT_AFTER answers it collects in full: ~30,000 objects freed in
# 50-180 ms (2 loaded cores), a pause that holds up no open stream (none is open).
COLLECT_AFTER = 200


def _collect():
    t0 = time.perf_counter()
    found = gc.collect()
    log.debug("idle: full garbage collection, %d objects freed in %.1f ms", found, (time.perf_counter() - t0) * 1000)


def renderer_for(settings, fetch_images=False):
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

    def __init__(self, upstream, media, key, public_base):
        self.upstream = upstream
        self.media = media
        self.key = key
        self.public_base = public_base
        self.conversion = None   # set by ConversationRun: sandbox files need the conversation id
        self.saved = []
        self.failed = []
        self._fetched = {}       # upstream file -> (saved name, bytes), for this answer

    @staticmethod
    def _what(action):
        """Which upstream file an action fetches (None: not one this knows)."""
        if type(action) is FetchImage:
            return ("file", action.image.file_id)
        if type(action) is FetchSandboxFile:
            return ("sandbox", action.file.message_id, action.file.path)
        return None

    async def perform(self, action):
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

    def public_url(self, name):
        """Where clients fetch a saved file (see handlers/images.py)."""
        return "%s/images/%s" % (self.public_base, name)

    async def fetch(self, action):
        """Fetch an image or sandbox file the answer shows: ``(saved name, bytes)`` or None.

        Two steps, as the upstream wants: a backend-api call (with the key) answers a
        short-lived ``download_url``; a plain GET of it (no Authorization) gives the bytes.
        Failures (refused, unreachable, a malformed URL, a full disk) are logged; the answer
        then shows a short notice instead.
        """
        try:
            return await self._fetch(action)
        except Exception:
            log.exception("fetching %r failed", action)
            return None

    async def _fetch(self, action):
        t = type(action)
        key = self.key
        if t is FetchImage:
            what = action.image.file_id
            url, reason = await self.upstream.download_url(key, "files/%s/download" % urllib.parse.quote(what, safe=""))
        elif t is FetchSandboxFile:
            what = action.file.path
            cid = self.conversion.conversation_id if self.conversion is not None else None
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


def no_answer_error(transfer) -> ApiError:
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

    def __init__(self, gateway, key, payload, sink, downloads, prompt_messages, renderer=None):
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
        self.transfer = None
        self.error = None   # why the answer was aborted (abort)
        self.refused = None   # (status or None, body) when the upstream refused before any answer byte

    @property
    def closed(self):
        """The client went away."""
        return self.relay.closed

    def cancel(self, reason="the client disconnected"):
        relay = self.relay
        if not relay.closed:
            relay.closed = relay.halted = True
            if self.transfer is not None:
                self.transfer.cancel(reason)

    def abort(self, error):
        """End the answer with ``error`` now: nothing more reaches the sink, the transfer is aborted."""
        if self.error is None and not self.relay.closed:
            self.error = error
            self.relay.halted = True
            if self.transfer is not None:
                self.transfer.cancel(error.message)

    async def run(self):
        gw = self.gateway
        relay, sink, key = self.relay, self.sink, self.key
        transfer = self.transfer = gw.upstream.start_conversation(key, self.payload, relay.on_chunk)
        sink.attach(self)
        gw.watch.add(self)
        try:
            status = await transfer.accepted
            if status == 200 and not _is_event_stream(transfer.content_type):
                self.abort(ApiError(502, "the upstream answered HTTP 200 with %s instead of an event stream (a proxy "
                                         "or Cloudflare page in front of it?)" % transfer.content_type,
                                    "upstream_error", "upstream_not_event_stream"))
                status = None
            if status != 200:
                await transfer.done
                if relay.closed:
                    return
                if self.error is not None:
                    raise self.error
                self.refused = (status, bytes(transfer.error_body))
                if status is None:
                    raise no_answer_error(transfer)
                raise from_upstream(status, bytes(transfer.error_body), transfer.headers)
            sink.start()
            relay.begin()
            await transfer.done
            if self.error is None and not relay.closed:
                relay.finish_input()
                await relay.drained()
            if relay.closed:
                return
            error = self.error
            if error is None:
                reason, error = self.conversion.outcome(cut=transfer.failure is not None)
                if error is not None and transfer.failure:
                    error.message += " (%s)" % transfer.failure
            if error is not None:
                log.warning("answer for key %s failed: %s", mask(key), error.message)
                sink.fail(error)
            else:
                sink.finish(reason, self.prompt_messages)
        finally:
            gw.watch.discard(self)
            for warning in self.conversion.warnings:  # each kind once per stream
                log.warning("upstream stream for key %s: %s", mask(key), warning)
            cid = self.conversion.conversation_id
            if cid and gw.settings.need_delete_conversation_after_response:
                gw.watch.spawn(gw.upstream.hide_conversation, key, cid)


def _is_event_stream(content_type):
    """Whether an answer's Content-Type can be the conversation's events (none at all is taken
    on trust; a page of HTML or an image is not)."""
    return not content_type or not content_type.startswith(("text/html", "image/", "application/xhtml"))
