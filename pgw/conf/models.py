"""The model table: which names clients may ask for and what each means upstream.

The one source of truth for model names: ``/v1/models`` lists it, chat and images resolve
through it. Built from the alias settings (and, when configured, the GPTs in gpts.json).
"""

from pgw.conf.settings import SettingsError


class Route:
    """Where a model name goes upstream: a model slug and, for GPTs, a gizmo id."""
    __slots__ = ("name", "slug", "gizmo_id", "display_name", "can_draw", "accepts_files")

    def __init__(self, name, slug, gizmo_id=None, display_name=None, can_draw=False, accepts_files=False):
        self.name = name
        self.slug = slug
        self.gizmo_id = gizmo_id
        self.display_name = display_name
        self.can_draw = can_draw
        self.accepts_files = accepts_files


# setting name -> (upstream slug, can draw with DALL·E, accepts files)
BUILTIN = (
    ("GPT_4_S_NEW_NAME", "gpt-4", True, True),
    ("GPT_4_MOBILE_NEW_NAME", "gpt-4-mobile", True, True),
    ("GPT_3_5_NEW_NAME", "text-davinci-002-render-sha", False, False),
)

GIZMO_SLUG = "gpt-4-gizmo"
DIRECT_GIZMO_PREFIX = "gpt-4-gizmo-"
# What OpenAI clients send to /v1/images/generations (ChatGPT-Next-Web: dall-e-3). They mean
# "draw", so they stand for the first model that can, unless an alias takes the name.
OPENAI_IMAGE_MODELS = ("dall-e-2", "dall-e-3")


class ModelTable:
    def __init__(self, settings):
        self._routes = {}
        for setting, slug, can_draw, files in BUILTIN:
            for name in getattr(settings, setting.lower()):
                self._routes[name] = Route(name, slug, can_draw=can_draw, accepts_files=files)

    def add_gpt(self, name, gizmo_id, display_name=None):
        if name in self._routes:
            raise SettingsError("GPT name %r in the GPTs config clashes with a model alias" % name)
        self._routes[name] = Route(name, GIZMO_SLUG, gizmo_id, display_name, can_draw=True, accepts_files=True)

    def resolve(self, name):
        """The ``Route`` for a model name, or None. ``gpt-4-gizmo-g-XXXX`` calls that GPT directly."""
        route = self._routes.get(name)
        if route is None and isinstance(name, str) and name.startswith(DIRECT_GIZMO_PREFIX + "g-"):
            gizmo_id = name[len(DIRECT_GIZMO_PREFIX):]
            route = Route(name, GIZMO_SLUG, gizmo_id, can_draw=True, accepts_files=True)
        return route

    def drawing_route(self, name):
        """The ``Route`` that draws for ``name`` at /v1/images/generations, or None."""
        route = self.resolve(name)
        if route is None and name in OPENAI_IMAGE_MODELS:
            route = self._routes.get(self.first_drawing_model())
        return route

    def first_drawing_model(self):
        for route in self._routes.values():
            if route.can_draw:
                return route.name
        return None

    def routes(self):
        return list(self._routes.values())
