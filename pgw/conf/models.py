"""The model table: which names clients may ask for and what each means upstream.

The one source of truth for model names: ``/v1/models`` lists it, chat and images resolve
through it. The names and their facts are data (``pgw/conf/models.json``, or the file
MODELS_CONFIG names), so a new upstream model needs an edited file, not new code. On top of
the file: the ``*_NEW_NAME`` alias settings (the late-2023 models), ``MODEL_MAP`` (more names),
the GPTs of gpts.json and, with ``PASS_THROUGH_MODELS=true``, any other plausible name.
"""

import difflib
import json
import os
import re

from pgw.conf.settings import ALIAS_SETTINGS, SettingsError
from pgw.errors import ApiError

DEFAULT_MODELS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models.json")


class Route:
    """Where a model name goes upstream: a model slug and, for GPTs, a gizmo id; and what the
    model can do (draw images, take files, think before it answers)."""
    __slots__ = ("name", "slug", "gizmo_id", "display_name", "can_draw", "accepts_files", "thinking")

    def __init__(self, name, slug, gizmo_id=None, display_name=None, can_draw=False, accepts_files=False,
                 thinking=False):
        self.name = name
        self.slug = slug
        self.gizmo_id = gizmo_id
        self.display_name = display_name
        self.can_draw = can_draw
        self.accepts_files = accepts_files
        self.thinking = thinking


GIZMO_SLUG = "gpt-4-gizmo"
DIRECT_GIZMO_PREFIX = "gpt-4-gizmo-"
# What OpenAI clients send to /v1/images/generations (ChatGPT-Next-Web: dall-e-3). They mean
# "draw", so they stand for the first model that can, unless an alias takes the name.
OPENAI_IMAGE_MODELS = ("dall-e-2", "dall-e-3")
# A name PASS_THROUGH_MODELS may send upstream as it is: what slugs look like (gpt-5-2-thinking),
# nothing that could smuggle other text into the request.
PLAIN_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,79}\Z")
FACTS = {"slug": str, "draws": bool, "files": bool, "thinking": bool}


def slug_for(name):
    """The upstream slug of an OpenAI-style name: dots become dashes (``gpt-4.1`` -> ``gpt-4-1``)."""
    return name.replace(".", "-")


def _facts(path, where, spec):
    if not isinstance(spec, dict):
        raise SettingsError("MODELS_CONFIG %s: %s must be an object such as {\"draws\": true}, got %r"
                            % (path, where, spec))
    for field, value in spec.items():
        kind = FACTS.get(field)
        if kind is None:
            raise SettingsError("MODELS_CONFIG %s: %s has the unknown field %r (known: %s)"
                                % (path, where, field, ", ".join(FACTS)))
        if not isinstance(value, kind) or (kind is str and not PLAIN_NAME.match(value)):
            raise SettingsError("MODELS_CONFIG %s: %s.%s must be %s, got %r"
                                % (path, where, field, "a slug" if kind is str else "true or false", value))
    return spec


def read_models(path):
    """``(aliases, models)`` from a models file: ``{setting: facts}`` and ``{name: facts}``.
    Raises ``SettingsError`` with one line naming the file and the entry."""
    path = path or DEFAULT_MODELS_PATH
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SettingsError("MODELS_CONFIG %s does not exist" % path) from None
    except (OSError, ValueError) as e:
        raise SettingsError("MODELS_CONFIG %s is not valid JSON: %s" % (path, e)) from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise SettingsError('MODELS_CONFIG %s must hold {"models": {"name": {...facts}}}' % path)
    if "aliases" not in data and path != DEFAULT_MODELS_PATH:
        data["aliases"] = read_models(DEFAULT_MODELS_PATH)[0]  # a user file may list only models
    aliases = data.get("aliases")
    if not isinstance(aliases, dict) or set(aliases) - set(ALIAS_SETTINGS):
        raise SettingsError("MODELS_CONFIG %s: 'aliases' may only describe %s" % (path, ", ".join(ALIAS_SETTINGS)))
    for setting in ALIAS_SETTINGS:
        if not isinstance(aliases.get(setting), dict) or "slug" not in aliases[setting]:
            raise SettingsError('MODELS_CONFIG %s: aliases.%s needs {"slug": ...}' % (path, setting))
        _facts(path, "aliases." + setting, aliases[setting])
    models = {}
    for name, spec in data["models"].items():
        if not isinstance(name, str) or not PLAIN_NAME.match(name):
            raise SettingsError("MODELS_CONFIG %s: %r is not a plain model name" % (path, name))
        models[name] = _facts(path, "models[%r]" % name, spec)
    return aliases, models


def _route(name, facts, slug=None):
    return Route(name, slug or facts.get("slug") or slug_for(name), can_draw=facts.get("draws", False),
                 accepts_files=facts.get("files", False), thinking=facts.get("thinking", False))


# What a name the table does not know is taken to do (MODEL_MAP to an unknown slug,
# PASS_THROUGH_MODELS): today's models draw and take files; the upstream refuses if one cannot.
UNKNOWN_FACTS = {"draws": True, "files": True}


class ModelTable:
    def __init__(self, settings):
        aliases, models = read_models(settings.models_config)
        self._pass_through = settings.pass_through_models
        self._routes = {}
        by_slug = {}
        for setting in ALIAS_SETTINGS:
            by_slug.setdefault(aliases[setting]["slug"], aliases[setting])
            for name in getattr(settings, setting.lower()):
                self._routes[name] = _route(name, aliases[setting])
        for name, facts in models.items():
            route = _route(name, facts)
            by_slug.setdefault(route.slug, facts)
            self._routes.setdefault(name, route)
        # a dashed slug (gpt-4-1) reaches the entry whose slug it is, though only gpt-4.1 is listed
        self._slugs = {r.slug: r for r in reversed(list(self._routes.values())) if r.slug not in self._routes}
        for name, slug in settings.model_map.items():
            self._routes[name] = _route(name, by_slug.get(slug, UNKNOWN_FACTS), slug)

    def add_gpt(self, name, gizmo_id, display_name=None):
        if name in self._routes:
            raise SettingsError("GPT name %r in the GPTs config clashes with a model alias" % name)
        self._routes[name] = Route(name, GIZMO_SLUG, gizmo_id, display_name, can_draw=True, accepts_files=True)

    def resolve(self, name):
        """The ``Route`` for a model name, or None. ``gpt-4-gizmo-g-XXXX`` calls that GPT directly;
        with PASS_THROUGH_MODELS any other plain name goes upstream as its own slug."""
        route = self._routes.get(name) or self._slugs.get(name)
        if route is not None or not isinstance(name, str):
            return route
        if name.startswith(DIRECT_GIZMO_PREFIX + "g-"):
            return Route(name, GIZMO_SLUG, name[len(DIRECT_GIZMO_PREFIX):], can_draw=True, accepts_files=True)
        if self._pass_through and PLAIN_NAME.match(name):
            return _route(name, UNKNOWN_FACTS)
        return None

    def closest(self, name, n=3):
        """The known names most like ``name`` (difflib), best first: what a typo meant."""
        names = list(self._routes)
        close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
        # a name with a suffix the table lacks ("gpt-5-ultra") still points at its family
        return close or difflib.get_close_matches(name, names, n=n, cutoff=0.4)

    def not_found(self, name):
        """The 404 for a model name nothing answers to, naming the closest known names."""
        close = self.closest(name) if isinstance(name, str) else []
        hint = " Did you mean %s?" % " or ".join("`%s`" % c for c in close) if close else ""
        return ApiError(404, "The model `%s` does not exist here.%s GET /v1/models lists the models; MODEL_MAP or "
                             "PASS_THROUGH_MODELS=true reach others." % (name, hint),
                        "invalid_request_error", "model_not_found", "model")

    def require(self, name):
        """``resolve``, or the 404 that names the closest known names."""
        route = self.resolve(name)
        if route is None:
            raise self.not_found(name)
        return route

    def drawing_route(self, name):
        """The ``Route`` that draws for ``name`` at /v1/images/generations, or None."""
        if name in OPENAI_IMAGE_MODELS and name not in self._routes:
            return self._routes.get(self.first_drawing_model())
        return self.resolve(name)

    def first_drawing_model(self):
        for route in self._routes.values():
            if route.can_draw:
                return route.name
        return None

    def routes(self):
        return list(self._routes.values())
