"""Settings: the shipped defaults file, then an optional user file, then the environment.

The names are the ones RefreshToV1Api users already have in their docker-compose files, so a
deployment can switch gateways without renaming anything. ``conf/config.json`` holds every
setting with its default; the table below only says how to read and check each one, so a
default lives in exactly one place. A bad value stops start-up with one line naming the setting.
"""

import ipaddress
import json
import os
import urllib.parse

from pgw.logs import mask

DEFAULTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")


class SettingsError(Exception):
    """A setting has a value the gateway cannot run with. The message names the setting."""


def _text(name, raw):
    if not isinstance(raw, str):
        raise SettingsError("%s must be a string, got %r" % (name, raw))
    return raw.strip()


def _required_text(name, raw):
    value = _text(name, raw)
    if not value:
        raise SettingsError("%s must not be empty" % name)
    return value


def _prefix_text(name, raw):
    """Text put before something else: kept as written (a trailing space matters)."""
    if not isinstance(raw, str):
        raise SettingsError("%s must be a string, got %r" % (name, raw))
    return raw


def _directory(name, raw):
    """A directory path; relative paths are below the project directory (where server.py is)."""
    value = _text(name, raw)
    if not value:
        raise SettingsError("%s must name a directory" % name)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.normpath(os.path.join(root, value))


def _file(name, raw):
    """A file path; relative paths are below the project directory (where server.py is)."""
    value = _text(name, raw)
    if not value:
        return ""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.normpath(os.path.join(root, value))


def _redis_url(name, raw):
    value = _text(name, raw)
    if value and urllib.parse.urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError("%s must be a redis:// URL such as redis://127.0.0.1:6379/0, got %s" % (name, mask(value)))
    return value


def _url(name, raw):
    value = _text(name, raw).rstrip("/")
    if not value.isascii():
        raise SettingsError("%s must be written in ASCII (percent-encode or punycode the rest), got %r" % (name, raw))
    if value:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError("%s must be an http(s) URL such as http://127.0.0.1:8181, got %r" % (name, raw))
    return value


def _path_prefix(name, raw):
    """A URL path segment such as ``my-prefix``; stored without slashes."""
    value = _text(name, raw).strip("/")
    if any(c in value for c in "?#% ") or not value.isascii():
        raise SettingsError("%s must be a plain path prefix, got %r" % (name, raw))
    return value


def _ranged(convert, noun, low, high):
    """A parser for numbers (``convert`` is int or float) between ``low`` and ``high``."""
    def parse(name, raw):
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = convert(str(raw).strip())
        except ValueError:
            raise SettingsError("%s must be %s, got %r" % (name, noun, raw)) from None
        if not low <= value <= high:
            raise SettingsError("%s must be between %g and %g, got %g" % (name, low, high, value))
        return value
    return parse


def _integer(low, high):
    return _ranged(int, "a whole number", low, high)


def _number(low, high):
    return _ranged(float, "a number", low, high)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _boolean(name, raw):
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise SettingsError("%s must be true or false, got %r" % (name, raw))


def _names(name, raw):
    """Comma-separated model aliases, e.g. ``gpt-4-s,gpt-4``."""
    if isinstance(raw, list):
        raw = ",".join(str(x) for x in raw)
    names = [n.strip() for n in _text(name, raw).split(",") if n.strip()]
    if not names:
        raise SettingsError("%s needs at least one model name" % name)
    if len(set(names)) != len(names):
        raise SettingsError("%s lists a model name twice: %r" % (name, raw))
    return names


def _model_map(name, raw):
    """``name=slug,name2=slug2``: more model names and the upstream slug each is sent as."""
    if isinstance(raw, dict):
        raw = ",".join("%s=%s" % item for item in raw.items())
    mapping = {}
    for item in _text(name, raw).split(","):
        if not item.strip():
            continue
        model, eq, slug = (x.strip() for x in item.partition("="))
        if not eq or not model or not slug or any(c.isspace() for c in model + slug):
            raise SettingsError("%s must look like my-name=gpt-4o,other=gpt-5-2 (name=upstream slug), got %r"
                                % (name, item.strip()))
        if model in mapping:
            raise SettingsError("%s names %r twice" % (name, model))
        mapping[model] = slug
    return mapping


def _hosts_and_networks(name, raw):
    """Comma-separated host names, addresses and IP networks, e.g. ``files.lan,10.0.0.0/8``."""
    if isinstance(raw, list):
        raw = ",".join(str(x) for x in raw)
    items = [x.strip() for x in _text(name, raw).split(",") if x.strip()]
    for item in items:
        if "/" in item:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise SettingsError("%s: %r is not an IP network such as 10.0.0.0/8" % (name, item)) from None
        elif not all(c.isalnum() or c in ".-:_" for c in item):
            raise SettingsError("%s: %r is not a host name, address or network" % (name, item))
    return items


def _networks(name, raw):
    """Comma-separated IP addresses and networks, e.g. ``127.0.0.1,10.0.0.0/8`` (no host names:
    a peer is known by its address)."""
    if isinstance(raw, list):
        raw = ",".join(str(x) for x in raw)
    items = [x.strip() for x in _text(name, raw).split(",") if x.strip()]
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError("%s: %r is not an IP address or network such as 10.0.0.0/8" % (name, item)) from None
    return items


def _log_level(name, raw):
    value = _text(name, raw).upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError("%s must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got %r" % (name, raw))
    return value


def _choice(*choices):
    def parse(name, raw):
        value = _text(name, raw).lower()
        if value not in choices:
            raise SettingsError("%s must be one of %s, got %r" % (name, ", ".join(choices), raw))
        return value
    return parse


# name -> (parser, other environment spellings accepted for it)
SPEC = {
    "BASE_URL": (_url, ()),
    "PROXY_API_PREFIX": (_path_prefix, ()),
    "HOST": (_text, ()),
    "PORT": (_integer(0, 65535), ()),
    "UPLOAD_BASE_URL": (_url, ()),
    "IMAGES_DIR": (_directory, ()),
    "IMAGES_MAX_AGE_HOURS": (_number(0, 876000), ()),
    "KEY_FOR_GPTS_INFO": (_text, ()),
    "GPTS_CONFIG": (_text, ()),
    "API_PREFIX": (_path_prefix, ()),
    "LOG_LEVEL": (_log_level, ()),
    "NEED_LOG_TO_FILE": (_boolean, ()),
    "METRICS_ENABLED": (_boolean, ()),
    "METRICS_KEY": (_text, ()),
    "GPT_4_S_NEW_NAME": (_names, ("GPT_4_S_New_Name",)),
    "GPT_4_MOBILE_NEW_NAME": (_names, ("GPT_4_MOBILE_New_Name",)),
    "GPT_3_5_NEW_NAME": (_names, ("GPT_3_5_New_Name",)),
    "MODELS_CONFIG": (_text, ()),
    "MODEL_MAP": (_model_map, ()),
    "PASS_THROUGH_MODELS": (_boolean, ()),
    "BOT_MODE": (_boolean, ("BOT_MODE_ENABLED",)),
    "BOT_MODE_ENABLED_PLUGIN_OUTPUT": (_boolean, ()),
    "BOT_MODE_ENABLED_BING_REFERENCE_OUTPUT": (_boolean, ()),
    "BOT_MODE_ENABLED_MARKDOWN_IMAGE_OUTPUT": (_boolean, ()),
    "BOT_MODE_ENABLED_PLAIN_IMAGE_URL_OUTPUT": (_boolean, ()),
    "BOT_MODE_ENABLED_REASONING_OUTPUT": (_boolean, ()),
    "REASONING_OUTPUT": (_choice("reasoning_content", "think", "hidden"), ()),
    "DALLE_PROMPT_PREFIX": (_prefix_text, ()),
    "IMAGE_MODEL": (_required_text, ()),
    "IMAGE_POLL_INTERVAL": (_number(0.01, 600), ()),
    "IMAGE_WAIT_TIMEOUT": (_number(0.1, 86400), ()),
    "HANDOFF_WAIT_TIMEOUT": (_number(0.1, 86400), ()),
    "AUTO_CONTINUE": (_integer(0, 20), ()),
    "NEED_DELETE_CONVERSATION_AFTER_RESPONSE": (_boolean, ()),
    "PROCESS_WORKERS": (_integer(1, 64), ()),
    "EVENT_LOOP": (_choice("asyncio", "uvloop"), ()),
    "KEEPALIVE_INTERVAL": (_number(0, 3600), ()),
    "UPSTREAM_CONNECT_TIMEOUT": (_number(0.1, 600), ()),
    "UPSTREAM_IDLE_TIMEOUT": (_number(1, 86400), ()),
    "WRITE_TIMEOUT": (_number(0.1, 86400), ()),
    "STREAM_BUFFER_BYTES": (_integer(4096, 1 << 30), ()),
    "MAX_UPSTREAM_EVENT_BYTES": (_integer(1024, 1 << 31), ()),
    "MAX_ANSWER_BYTES": (_integer(1024, 1 << 31), ()),
    "SHUTDOWN_GRACE": (_number(0, 3600), ()),
    "UPSTREAM_MAX_TRANSFERS": (_integer(1, 100000), ()),
    "ACCOUNTS_FILE": (_file, ()),
    "UPSTREAM_KEYS": (_text, ()),
    "ACCESS_KEYS": (_text, ()),
    "ACCESS_KEYS_REQUIRED": (_boolean, ()),
    "MAX_CONCURRENT_PER_ACCOUNT": (_integer(1, 1000), ()),
    "QUEUE_TIMEOUT": (_number(0.01, 86400), ()),
    "QUEUE_MAX": (_integer(1, 1000000), ()),
    "RETRY_ATTEMPTS": (_integer(1, 20), ()),
    "BUSY_BENCH": (_number(0, 3600), ()),
    "FORBIDDEN_BENCH": (_number(0, 86400), ()),
    "UNHEALTHY_RECHECK": (_number(0.01, 86400), ()),
    "REFRESH_URL": (_url, ()),
    "REFRESH_CLIENT_ID": (_text, ()),
    "REFRESH_REDIRECT_URI": (_text, ()),
    "REFRESH_AHEAD": (_number(0, 30 * 86400), ()),
    "CLIENT_REFRESH_TOKENS": (_boolean, ()),
    "DATA_DIR": (_directory, ()),
    "REDIS_URL": (_redis_url, ()),
    "REDIS_PREFIX": (_path_prefix, ()),
    "LEASE_TTL": (_number(1, 3600), ()),
    "ADMIN_KEY": (_text, ()),
    "MAX_REQUEST_BODY": (_integer(1024, 1 << 30), ()),
    "MAX_CONNECTIONS": (_integer(0, 1 << 20), ()),
    "HEADER_TIMEOUT": (_number(0.1, 3600), ()),
    "BODY_TIMEOUT": (_number(0.1, 86400), ()),
    "IDLE_CONNECTION_TIMEOUT": (_number(0.1, 86400), ()),
    "MAX_HEADER_BYTES": (_integer(1024, 1 << 24), ()),
    "TRUSTED_PROXIES": (_networks, ()),
    "MAX_JSON_DEPTH": (_integer(2, 1000), ()),
    "MAX_JSON_CONTAINERS": (_integer(16, 1 << 30), ()),
    "MAX_MESSAGES": (_integer(1, 1 << 24), ()),
    "MAX_CONTENT_PARTS": (_integer(1, 1 << 24), ()),
    "MAX_PROMPT_CHARS": (_integer(1, 1 << 31), ()),
    "MAX_FILES_PER_REQUEST": (_integer(0, 10000), ()),
    "MAX_FILE_BYTES_PER_REQUEST": (_integer(1, 1 << 34), ()),
    "FILE_FETCH_CONCURRENCY": (_integer(1, 1000), ()),
    "FILE_FETCH_MAX_TRANSFERS": (_integer(1, 100000), ()),
    "IMAGES_MAX_TOTAL_MB": (_number(0, 1 << 30), ()),
    "UPSTREAM_ENCODING": (_choice("auto", "legacy", "v1"), ()),
    "FILE_MAX_BYTES": (_integer(1, 1 << 30), ()),
    "FILE_FETCH_CONNECT_TIMEOUT": (_number(0.1, 600), ()),
    "FILE_FETCH_TIMEOUT": (_number(1, 3600), ()),
    "FILE_FETCH_MAX_REDIRECTS": (_integer(0, 20), ()),
    "FILE_FETCH_ALLOW": (_hosts_and_networks, ()),
    "UPLOAD_HOST_OVERRIDE": (_url, ()),
    "GPTS_FETCH_TIMEOUT": (_number(0.1, 600), ()),
}

# The settings that name the late-2023 models (their slugs and facts are in models.json)
ALIAS_SETTINGS = ("GPT_4_S_NEW_NAME", "GPT_4_MOBILE_NEW_NAME", "GPT_3_5_NEW_NAME")

_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "REDIS_URL")  # a Redis URL may hold a password


class Settings:
    """The effective settings, read-only, as attributes named like the settings in lower case."""

    def __init__(self, values):
        object.__setattr__(self, "_values", dict(values))
        # Each value is also a plain instance attribute: a read is then a dict lookup in C, not
        # a call of __getattr__ (six or more reads per request; 1-2 µs each on a slow machine).
        self.__dict__.update((name.lower(), value) for name, value in values.items())

    def __getattr__(self, attr):  # (only for names that are not settings)
        try:
            return self._values[attr.upper()]
        except KeyError:
            raise AttributeError(attr) from None

    def __setattr__(self, attr, value):
        raise AttributeError("settings are read-only")

    def replace(self, **changes):
        """A copy with some values changed (used by --demo and by tests)."""
        values = dict(self._values)
        values.update({k.upper(): v for k, v in changes.items()})
        return Settings(values)

    def summary(self):
        """One line per setting for the start-up log, secrets masked."""
        lines = []
        for name in SPEC:
            value = self._values[name]
            if isinstance(value, str) and any(word in name for word in _SECRET_WORDS):
                value = mask(value)
            lines.append("%s=%s" % (name, value))
        return lines


def _read_json_object(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SettingsError("%s %s does not exist" % (what, path)) from None
    except OSError as e:
        raise SettingsError("%s %s cannot be read: %s" % (what, path, e.strerror or e)) from None
    except ValueError as e:
        raise SettingsError("%s %s is not valid JSON: %s" % (what, path, e)) from None
    if not isinstance(data, dict):
        raise SettingsError("%s %s must hold a JSON object" % (what, path))
    return data


def load(config_path=None, environ=None):
    """Read defaults, the optional user file and the environment; return checked ``Settings``.

    Raises ``SettingsError`` with one line naming the bad setting.
    """
    environ = os.environ if environ is None else environ
    raw = _read_json_object(DEFAULTS_PATH, "defaults file")
    if config_path:
        user = _read_json_object(config_path, "config file")
        canonical = {alias: name for name, (_parse, aliases) in SPEC.items() for alias in aliases}
        user = {canonical.get(k, k): v for k, v in user.items()}
        unknown = sorted(set(user) - set(SPEC))
        if unknown:
            raise SettingsError("config file %s has unknown settings: %s" % (config_path, ", ".join(unknown)))
        raw.update(user)
    for name, (_parse, aliases) in SPEC.items():
        for env_name in (name,) + aliases:
            if env_name in environ:
                raw[name] = environ[env_name]
                break
    values = {}
    for name, (parse, _aliases) in SPEC.items():
        if name not in raw:
            raise SettingsError("%s has no default in %s" % (name, DEFAULTS_PATH))
        values[name] = parse(name, raw[name])
    _check_model_names(values)
    return Settings(values)


def _check_model_names(values):
    seen = {}
    for name in ALIAS_SETTINGS + ("MODEL_MAP",):
        for model in values[name]:
            if model in seen:
                raise SettingsError("model name %r is used by both %s and %s" % (model, seen[model], name))
            seen[model] = name
