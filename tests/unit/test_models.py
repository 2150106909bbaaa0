"""The model table: today's names from models.json beside the seed's aliases, MODEL_MAP,
PASS_THROUGH_MODELS, and a 404 that names what the client probably meant."""

import json

import pytest

from pgw.conf import settings as conf
from pgw.conf.models import DEFAULT_MODELS_PATH, ModelTable
from pgw.errors import ApiError


def table(env=None):
    return ModelTable(conf.load(None, environ=env or {}))


# (name a client sends, slug the upstream gets): §5.7's slugs, OpenAI's dotted spellings
TODAY = [
    ("auto", "auto"), ("gpt-4o", "gpt-4o"), ("gpt-4o-mini", "gpt-4o-mini"), ("gpt-4.1", "gpt-4-1"),
    ("gpt-4.1-mini", "gpt-4-1-mini"), ("gpt-4.5", "gpt-4-5"), ("o1", "o1"), ("o1-mini", "o1-mini"), ("o3", "o3"),
    ("o3-mini", "o3-mini"), ("o3-mini-high", "o3-mini-high"), ("o4-mini", "o4-mini"),
    ("o4-mini-high", "o4-mini-high"), ("gpt-5", "gpt-5"), ("gpt-5-instant", "gpt-5-instant"),
    ("gpt-5-thinking", "gpt-5-thinking"), ("gpt-5.1", "gpt-5-1"), ("gpt-5.1-instant", "gpt-5-1-instant"),
    ("gpt-5.1-thinking", "gpt-5-1-thinking"), ("gpt-5.2", "gpt-5-2"), ("gpt-5.2-thinking", "gpt-5-2-thinking"),
]


@pytest.mark.parametrize("name, slug", TODAY)
def test_todays_names_reach_their_slugs_and_are_listed(name, slug):
    models = table()
    assert models.resolve(name).slug == slug
    assert name in [r.name for r in models.routes()]


def test_the_seeds_names_keep_their_late_2023_slugs():
    models = table()
    assert models.resolve("gpt-4-s").slug == "gpt-4"
    assert models.resolve("gpt-4").slug == "gpt-4"  # what RefreshToV1Api's own examples send
    assert models.resolve("gpt-4-mobile").slug == "gpt-4-mobile"
    assert models.resolve("gpt-3.5-turbo").slug == "text-davinci-002-render-sha"
    # the seed's names come first, as before: the default drawing model is unchanged
    assert [r.name for r in models.routes()][:3] == ["gpt-4-s", "gpt-4-mobile", "gpt-3.5-turbo"]
    assert models.first_drawing_model() == "gpt-4-s"


def test_a_dashed_slug_reaches_the_dotted_entry():
    assert table().resolve("gpt-5-2-thinking").name == "gpt-5.2-thinking"
    assert "gpt-5-2-thinking" not in [r.name for r in table().routes()]


def test_facts_come_from_the_file():
    models = table()
    assert models.resolve("gpt-5.2-thinking").thinking and models.resolve("o3-mini").thinking
    assert not models.resolve("gpt-4o").thinking
    assert models.resolve("gpt-4o").can_draw and not models.resolve("gpt-4o-mini").can_draw
    assert models.resolve("gpt-4o").accepts_files and not models.resolve("gpt-3.5-turbo").accepts_files


def test_new_name_aliases_still_rename_and_win_over_the_file():
    models = table({"GPT_4_S_NEW_NAME": "gpt-4-s,gpt-4", "GPT_3_5_NEW_NAME": "gpt-4o-mini"})
    assert models.resolve("gpt-4o-mini").slug == "text-davinci-002-render-sha"
    assert models.resolve("gpt-3.5-turbo") is None
    names = [r.name for r in models.routes()]
    assert names.count("gpt-4") == 1 and names.count("gpt-4o-mini") == 1


def test_model_map_adds_names_with_the_facts_of_their_slug():
    models = table({"MODEL_MAP": "gpt-4-turbo=gpt-4o, 思考=gpt-5-2-thinking,new-thing=gpt-7-preview"})
    assert models.resolve("gpt-4-turbo").slug == "gpt-4o" and models.resolve("gpt-4-turbo").can_draw
    assert models.resolve("思考").slug == "gpt-5-2-thinking" and models.resolve("思考").thinking
    assert models.resolve("new-thing").slug == "gpt-7-preview"
    assert {"gpt-4-turbo", "思考", "new-thing"} <= {r.name for r in models.routes()}


def test_model_map_may_repoint_a_name_of_the_file():
    assert table({"MODEL_MAP": "gpt-4o=gpt-5-2"}).resolve("gpt-4o").slug == "gpt-5-2"


@pytest.mark.parametrize("raw, words", [
    ("gpt-4o", "name=upstream slug"),
    ("a=", "name=upstream slug"),
    ("=gpt-4o", "name=upstream slug"),
    ("a b=gpt-4o", "name=upstream slug"),
    ("a=gpt-4o,a=gpt-5", "twice"),
    ("gpt-4-s=gpt-4o", "GPT_4_S_NEW_NAME and MODEL_MAP"),
])
def test_bad_model_maps_stop_start_up_with_one_line(raw, words):
    with pytest.raises(conf.SettingsError) as e:
        table({"MODEL_MAP": raw})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unknown_names_are_refused_unless_passed_through():
    assert table().resolve("gpt-7.5-pro") is None
    models = table({"PASS_THROUGH_MODELS": "true"})
    route = models.resolve("gpt-7.5-pro")
    assert route.slug == "gpt-7-5-pro" and route.accepts_files
    # nothing but what a slug looks like goes upstream as one
    assert models.resolve("gpt 5\n") is None and models.resolve("x" * 200) is None


def test_pass_through_does_not_take_the_openai_image_names():
    models = table({"PASS_THROUGH_MODELS": "true"})
    assert models.drawing_route("dall-e-3").name == "gpt-4-s"


def test_unknown_models_404_names_the_closest():
    models = table()
    with pytest.raises(ApiError) as e:
        models.require("gpt-5.2-thinkng")
    assert e.value.status == 404 and e.value.code == "model_not_found" and e.value.param == "model"
    assert "`gpt-5.2-thinking`" in e.value.message and "/v1/models" in e.value.message
    with pytest.raises(ApiError) as e:
        models.require("gpt-4o-minii")
    assert "Did you mean `gpt-4o-mini`" in e.value.message
    with pytest.raises(ApiError) as e:
        models.require("完全不同的东西")
    assert "Did you mean" not in e.value.message


def test_a_users_file_may_list_only_models(tmp_path):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": {"gpt-9": {}}}))
    models = table({"MODELS_CONFIG": str(path)})
    assert models.resolve("gpt-9").slug == "gpt-9" and models.resolve("gpt-3.5-turbo").slug == "text-davinci-002-render-sha"


def test_the_table_is_data_a_user_can_edit(tmp_path):
    with open(DEFAULT_MODELS_PATH, encoding="utf-8") as f:
        data = json.load(f)
    data["models"] = {"gpt-9": {"slug": "gpt-9-preview", "thinking": True}}
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    models = table({"MODELS_CONFIG": str(path)})
    assert models.resolve("gpt-9").slug == "gpt-9-preview" and models.resolve("gpt-9").thinking
    assert models.resolve("gpt-4o") is None
    assert models.resolve("gpt-4-s").slug == "gpt-4"


@pytest.mark.parametrize("content, words", [
    ("{", "not valid JSON"),
    ('{"models": []}', '{"models"'),
    ('{"aliases": {}, "models": {}}', "aliases.GPT_4_S_NEW_NAME"),
    ('{"models": {"a b": {}}}', "plain model name"),
    ('{"models": {"x": {"draw": true}}}', "unknown field 'draw'"),
    ('{"models": {"x": {"files": "yes"}}}', "true or false"),
])
def test_a_bad_models_file_stops_start_up_with_one_line(tmp_path, content, words):
    path = tmp_path / "models.json"
    path.write_text(content)
    with pytest.raises(conf.SettingsError) as e:
        table({"MODELS_CONFIG": str(path)})
    assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(conf.SettingsError, match="does not exist"):
        table({"MODELS_CONFIG": str(tmp_path / "missing.json")})
