"""GPTs in the model table: the names in gpts.json (GPTS_CONFIG).

``gpts.json`` maps a model name of the user's choice to a GPT id (``{"name": {"id": "g-..."}}``).
The names join the model table before the server starts, so a clash with an alias stops
start-up with one line. The GPTs' details are fetched later by ``pgw.gizmos.GizmoStore``.
"""

import json
import logging
import re

from pgw.conf.models import ModelTable
from pgw.conf.settings import SettingsError

log = logging.getLogger("gateway.gpts")

GIZMO_ID = re.compile(r"^g-[A-Za-z0-9_-]+$")


def read_config(path):
    """``{model name: gizmo id}`` from the GPTs file; a missing file means no GPTs."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        log.info("no GPTs file at %s: no GPTs configured", path)
        return {}
    except OSError as e:
        raise SettingsError("GPTS_CONFIG %s cannot be read: %s" % (path, e.strerror or e)) from None
    except ValueError as e:
        raise SettingsError("GPTS_CONFIG %s is not valid JSON: %s" % (path, e)) from None
    if not isinstance(data, dict):
        raise SettingsError('GPTS_CONFIG %s must hold an object like {"my-gpt": {"id": "g-XXXX"}}' % path)
    gpts = {}
    for name, spec in data.items():
        gizmo_id = spec.get("id") if isinstance(spec, dict) else None
        if not isinstance(gizmo_id, str) or not GIZMO_ID.match(gizmo_id.strip()):
            raise SettingsError('GPTS_CONFIG %s: %r needs {"id": "g-..."} (the end of the GPT\'s link), got %r'
                                % (path, name, spec))
        if not name.strip():
            raise SettingsError("GPTS_CONFIG %s has an empty model name" % path)
        gpts[name.strip()] = gizmo_id.strip()
    return gpts


def build_models(settings):
    """The model table with the configured GPTs; raises ``SettingsError`` on a bad file or a clash."""
    models = ModelTable(settings)
    path = settings.gpts_config
    for name, gizmo_id in read_config(path).items():
        try:
            models.add_gpt(name, gizmo_id)
        except SettingsError:
            raise SettingsError("GPTS_CONFIG %s: the GPT name %r is already a model alias; rename it in the file "
                                "or change the GPT_*_NEW_NAME settings" % (path, name)) from None
    return models
