"""Fetching URLs that clients put in messages, without letting them reach internal services.

A client can name any URL as an "image"; the gateway fetching it is a classic server-side
request forgery hole (cloud metadata at 169.254.169.254, admin pages on 127.0.0.1, the
PandoraNext box itself). So: only http/https; the host is resolved first and EVERY address
must be public (``is_global``) unless FILE_FETCH_ALLOW lists the host or a network holding the
address; the connection is then pinned to the checked address (no second DNS lookup that could
answer differently); redirects are followed here, one hop at a time, each hop checked again;
size and time are bounded.
"""

import asyncio
import ipaddress
import logging
import socket
import urllib.parse

from pgw.converters.files import file_error
from pgw.errors import ApiError

log = logging.getLogger("gateway.files")

REDIRECTS = (301, 302, 303, 307, 308)


class AddressPolicy:
    """Which hosts and addresses client URLs may reach. ``allow``: host names and IP networks."""

    def __init__(self, allow=()):
        self.hosts = set()
        self.networks = []
        for item in allow:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.hosts.add(item.lower().rstrip("."))

    def allows_host(self, host):
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address):
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.networks):
            return True
        # is_global is False for loopback, private, link-local, shared, reserved and unspecified ranges.
        return ip.is_global and not ip.is_multicast


def to_uri(url):
    """A URL as curl can take it: users paste ``http://例子.cn/图片.png``; the host becomes
    punycode and the rest is percent-encoded (characters already escaped are kept)."""
    if url.isascii():
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        host = urllib.parse.quote(host, safe="")
    netloc = host if ":" not in host else "[%s]" % host
    if parts.port:
        netloc += ":%d" % parts.port
    if parts.username is not None:
        netloc = urllib.parse.quote(parts.username, safe="") + (
            ":" + urllib.parse.quote(parts.password, safe="") if parts.password is not None else "") + "@" + netloc
    keep = "/%:@!$&'()*+,;=?~-._"
    return urllib.parse.urlunsplit((parts.scheme, netloc, urllib.parse.quote(parts.path, safe=keep),
                                    urllib.parse.quote(parts.query, safe=keep), ""))


async def resolve(host, port, timeout):
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    return list(dict.fromkeys(info[4][0] for info in infos))


class GuardedFetcher:
    """GET client URLs through the upstream client's curl handles, within the policy and limits."""

    def __init__(self, upstream, policy, max_bytes, connect_timeout, timeout, max_redirects):
        self.upstream = upstream
        self.policy = policy
        self.max_bytes = max_bytes
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_redirects = max_redirects

    async def fetch(self, url, where):
        """``(bytes, Content-Type)`` of a 200 answer; any problem is a 400 naming the URL."""
        got, url = await self._follow(url, where, self.max_bytes, self.timeout)
        if got.too_big:
            raise file_error(where, "%s is larger than the %d bytes this gateway takes (FILE_MAX_BYTES)"
                             % (url, self.max_bytes), "file_too_large")
        if got.status == 599:
            raise file_error(where, "fetching %s failed: %s" % (url, got.failure), "file_fetch_failed")
        if got.status in REDIRECTS:
            raise file_error(where, "%s redirects more than %d times" % (url, self.max_redirects),
                             "file_fetch_failed")
        if got.status != 200:
            raise file_error(where, "fetching %s failed: HTTP %d" % (url, got.status), "file_fetch_failed")
        return bytes(got.body), got.headers.get("Content-Type", "")

    async def get(self, url, max_bytes, timeout):
        """GET ``url`` (a download URL the upstream gave) under the same policy: a ``Fetched``
        whatever happens; a refused or unresolvable address is a status 599 with the reason."""
        try:
            got, _url = await self._follow(url, "download_url", max_bytes, timeout)
        except ApiError as e:
            log.warning("download URL refused: %s", e.message)
            got = self.upstream.failed_fetch(e.message)
        return got

    async def _follow(self, url, where, max_bytes, timeout):
        """GET ``url``, checking every redirect hop: ``(Fetched, the last URL)``."""
        for _hop in range(self.max_redirects + 1):
            url = to_uri(url)
            host, port = self._split(url, where)
            for address in await self._checked_addresses(host, port, url, where):
                got = await self.upstream.fetch_guarded(url, host, port, address, max_bytes,
                                                        self.connect_timeout, timeout)
                if not got.connect_failed:
                    break  # else try the host's next address, as browsers do on dual-stack hosts
            if got.status in REDIRECTS and got.headers.get("Location") and not got.too_big:
                url = urllib.parse.urljoin(url, got.headers["Location"])
                continue
            return got, url
        return got, url

    @staticmethod
    def _split(url, where):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise file_error(where, "only http:// and https:// URLs can be fetched, got %r" % url[:200],
                             "unsupported_url")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise file_error(where, "%r has a bad port" % url[:200], "unsupported_url") from None
        return parts.hostname, port

    async def _checked_addresses(self, host, port, url, where):
        try:
            addresses = await resolve(host, port, self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise file_error(where, "cannot resolve the host of %s: %s" % (url, e), "file_fetch_failed") from None
        if not addresses:
            raise file_error(where, "the host of %s has no address" % url, "file_fetch_failed")
        if not self.policy.allows_host(host):
            refused = [a for a in addresses if not self.policy.allows_address(a)]
            if refused:
                raise file_error(where, "%s points to %s, a loopback, private or link-local address this gateway "
                                 "does not fetch from (FILE_FETCH_ALLOW can allow it)" % (url, refused[0]),
                                 "url_not_allowed")
        return addresses


def download_guard(settings, upstream):
    """The guard for the upstream's ``download_url``s: the policy of client URLs (FILE_FETCH_ALLOW),
    plus the hosts of BASE_URL and UPLOAD_HOST_OVERRIDE.

    The upstream is trusted as far as the operator pointed the gateway at it: a PandoraNext box
    on a LAN (or the demo and test upstream on 127.0.0.1) hands out download URLs on its own
    host, and those must work. Any other host must resolve to public addresses, as a client's
    URL must: an upstream that is compromised, or a proxy that passes on a hostile answer, cannot
    make the gateway fetch from 169.254.169.254 or a LAN admin page."""
    trusted = [urllib.parse.urlsplit(url).hostname for url in (settings.base_url, settings.upload_host_override)
               if url]
    policy = AddressPolicy(list(settings.file_fetch_allow) + [h for h in trusted if h])
    return GuardedFetcher(upstream, policy, settings.file_max_bytes, settings.upstream_connect_timeout,
                          60, max(3, settings.file_fetch_max_redirects))
