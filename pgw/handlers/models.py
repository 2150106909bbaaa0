"""``GET /v1/models``: every name the model table answers to, in OpenAI's list shape."""

from pgw.handlers.base import ApiHandler

CREATED = 1700000000  # a fixed date: these models do not change between requests


def _model(route):
    item = {"id": route.name, "object": "model", "created": CREATED,
            "owned_by": "gpts" if route.gizmo_id else "openai"}
    if route.gizmo_id:
        item["gizmo_id"] = route.gizmo_id
        item["display_name"] = route.display_name or route.name
    return item


class ModelsHandler(ApiHandler):
    def get(self):
        data = [_model(r) for r in self.gateway.models.routes()]
        self.write_json({"object": "list", "data": data})


class ModelHandler(ApiHandler):
    def get(self, name):
        self.write_json(_model(self.gateway.models.require(name)))
