"""Files in a chat request -> uploaded upstream files -> ``multimodal_text`` upstream messages.

Order matters for honesty: every file is fetched and checked first, so a bad one (undecodable
base64, a non-image labelled image/png, too large, a refused URL) answers 400 with nothing sent
upstream; only then are the files uploaded, each distinct content once (by SHA-256), and the
messages built by the pure ``converters.files.multimodal_message``.
"""

import asyncio
import mimetypes

from pgw.converters.files import (GENERIC_TYPES, file_error, inspect_file, multimodal_message, name_from_url,
                                  parse_data_url)
from pgw.errors import bad_request
from pgw.urlguard import AddressPolicy, GuardedFetcher


class Attachments:
    """Files of chat requests. Per request: at most FILE_FETCH_CONCURRENCY fetches at once (on the
    upstream client's own file handles), MAX_FILE_BYTES_PER_REQUEST in all; the first failure
    cancels every other fetch of the request, as does the client leaving (the handler cancels
    ``messages``; ``CancellableCurlClient.fetch_any`` then aborts the curl transfers)."""

    def __init__(self, settings, upstream):
        self.upstream = upstream
        self.max_bytes = settings.file_max_bytes
        self.budget = settings.max_file_bytes_per_request
        self.concurrency = settings.file_fetch_concurrency
        self.fetcher = GuardedFetcher(upstream, AddressPolicy(settings.file_fetch_allow), settings.file_max_bytes,
                                      settings.file_fetch_connect_timeout, settings.file_fetch_timeout,
                                      settings.file_fetch_max_redirects)

    async def messages(self, key, request, route, new_id):
        """The request's messages for ``conversation_payload``: text pairs, and upstream message
        dicts for the messages that carry files."""
        if not request.files:
            return request.messages
        if not route.accepts_files:
            raise bad_request("the model %s cannot read images or files; use a model such as gpt-4-s, "
                              "gpt-4-mobile or a GPT for messages with image_url or file parts" % request.model,
                              "model", "model_cannot_take_files")
        refs = [ref for i in sorted(request.files) for ref in request.files[i]]
        by_url = {}
        for ref in refs:
            by_url.setdefault(ref.url, ref)  # each URL loaded once
        unique = list(by_url.values())
        loaded = await self._load_all(unique)
        info_of = {ref.url: info for ref, info in zip(unique, loaded, strict=False)}
        file_ids = {}
        for info in loaded:  # one at a time, in order: a failure names the file's step and stops there
            if info.sha256 not in file_ids:
                file_ids[info.sha256] = await self.upstream.upload_file(key, info)
        out = []
        for i, (role, text) in enumerate(request.messages):
            if i in request.files:
                files = [(file_ids[info_of[ref.url].sha256], info_of[ref.url]) for ref in request.files[i]]
                out.append(multimodal_message(new_id(), role, text, files))
            else:
                out.append((role, text))
        return out

    async def _load_all(self, refs):
        """Every file of ``refs`` loaded, in order; on the first failure the others are cancelled."""
        slots = asyncio.Semaphore(self.concurrency)
        total = [0]

        async def one(ref):
            async with slots:
                info = await self._load(ref)
            total[0] += info.size
            if total[0] > self.budget:
                raise file_error(ref.where, "the files of this request are more than %d bytes together "
                                 "(MAX_FILE_BYTES_PER_REQUEST)" % self.budget, "files_too_large")
            return info

        tasks = [asyncio.ensure_future(one(ref)) for ref in refs]
        try:
            return await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # no-op for the finished; the rest stop fetching now
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _load(self, ref):
        """Bytes of one file, checked: a ``FileInfo``."""
        if ref.url[:5].lower() == "data:":
            claimed, data = parse_data_url(ref.url, ref.where)
            name = ref.name
        else:
            data, claimed = await self.fetcher.fetch(ref.url, ref.where)
            name = ref.name or name_from_url(ref.url)
        if len(data) > self.max_bytes:
            raise file_error(ref.where, "the file is %d bytes, more than the %d this gateway takes (FILE_MAX_BYTES)"
                             % (len(data), self.max_bytes), "file_too_large")
        if claimed.split(";")[0].strip().lower() in GENERIC_TYPES and name:
            claimed = mimetypes.guess_type(name)[0] or claimed
        return inspect_file(data, claimed, name, ref.where)
