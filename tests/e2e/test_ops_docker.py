"""The Docker files, checked without a Docker engine (none on these machines): every setting
in docker-compose.yml is a real one, the volumes are where the gateway writes, the health checks
ask real endpoints, the image runs as a non-root user with run.sh's install steps, and the
image's start command and health check work when run here."""

import json
import os
import re
import subprocess

import pytest
import yaml

from pgw.conf import settings as conf_settings
from tests.helpers import ROOT, ChildProcess



def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


DEFAULTS = json.loads(read(os.path.join("pgw", "conf", "config.json")))


def dockerfile():
    """Instructions as (KEYWORD, argument text), continuation lines joined."""
    text = re.sub(r"\\\n", " ", read("Dockerfile"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def instruction(keyword):
    return [rest for k, rest in dockerfile() if k == keyword]


@pytest.fixture(scope="module")
def service():
    compose = yaml.safe_load(read("docker-compose.yml"))
    (svc,) = compose["services"].values()
    return svc


def test_every_compose_setting_is_a_real_setting(service):
    known = set(conf_settings.SPEC) | {a for _p, aliases in conf_settings.SPEC.values() for a in aliases}
    env = service["environment"]
    assert env and not sorted(set(env) - known)
    assert "BASE_URL" in env and "UPLOAD_BASE_URL" in env
    values = dict(DEFAULTS)
    values.update(env)  # and every value is one the gateway accepts
    for name, (parse, _aliases) in conf_settings.SPEC.items():
        parse(name, values[name])


def test_compose_volumes_are_where_the_gateway_writes(service):
    targets = {v.split(":")[1] for v in service["volumes"]}
    images = os.path.normpath(os.path.join("/app", DEFAULTS["IMAGES_DIR"]))
    assert {images, "/app/log", "/app/conf"} <= targets
    assert service["environment"]["GPTS_CONFIG"].startswith("./conf/")
    assert service["ports"] == ["%d:%d" % (DEFAULTS["PORT"], DEFAULTS["PORT"])]
    assert service["restart"] == "unless-stopped" and service["build"] == "."


def test_the_image_runs_run_shs_install_as_a_non_root_user():
    run_sh = read("run.sh")
    need = re.search(r"^NEED=(\d+)\.(\d+)", run_sh, re.M).groups()
    (base,) = instruction("FROM")
    assert tuple(map(int, re.match(r"python:(\d+)\.(\d+)", base).groups())) >= tuple(map(int, need))
    runs = " ".join(instruction("RUN"))
    assert "python -m venv .venv" in runs and "-m pip install" in runs and "-r requirements.txt" in runs
    assert "pip install" in run_sh and '-r "$1"' in run_sh  # the same requirements file, the same way
    (user,) = instruction("USER")
    assert user not in ("root", "0") and ("useradd" in runs and user in runs)
    assert instruction("EXPOSE") == [str(DEFAULTS["PORT"])]
    ignored = read(".dockerignore").split()
    assert ".venv" in ignored and ".git" in ignored and "pgw" not in ignored and "fakeupstream" not in ignored


def _exec_form(text):
    return json.loads(text)


def test_the_health_checks_ask_real_endpoints(service):
    (health,) = instruction("HEALTHCHECK")
    dockerfile_cmd = _exec_form(health[health.index("CMD") + 3:].strip())
    compose_cmd = service["healthcheck"]["test"]
    from pgw.server import routes
    paths = {pattern for pattern, _handler in routes(conf_settings.load(environ={}))}
    for cmd in (dockerfile_cmd, compose_cmd):
        path = re.search(r"/(healthz|readyz)\b", " ".join(cmd)).group(0)
        assert path in paths


def _project_copy(tmp_path, config=None):
    """A directory like /app: the project's files linked in, conf/ with an optional config.json."""
    for name in ("server.py", "pgw", "fakeupstream", ".venv", "gpts.json"):
        os.symlink(os.path.join(ROOT, name), str(tmp_path / name))
    (tmp_path / "conf").mkdir()
    if config is not None:
        (tmp_path / "conf" / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize("with_config", [False, True])
def test_the_image_command_starts_the_gateway_and_its_health_check_passes(upstream, tmp_path, with_config):
    (cmd,) = instruction("CMD")
    env = dict(os.environ, BASE_URL=upstream.url, HOST="127.0.0.1", IMAGES_DIR=str(tmp_path / "images"))
    env["PORT"] = "0"
    config = {"PORT": 0, "LOG_LEVEL": "DEBUG"} if with_config else None
    if with_config:
        del env["PORT"]  # the file's PORT then applies (the environment would win over it)
    cwd = _project_copy(tmp_path, config)
    gw = ChildProcess(_exec_form(cmd), env=env, cwd=cwd, prefix="docker-cmd-")
    try:
        port = gw.match.group(1).rsplit(":", 1)[1]
        assert ("DEBUG" in gw.log_text()) is with_config
        (health,) = instruction("HEALTHCHECK")
        check = _exec_form(health[health.index("CMD") + 3:].strip())
        check[0] = os.path.join(ROOT, ".venv", "bin", "python")
        done = subprocess.run(check, env=dict(env, PORT=port), capture_output=True, timeout=15)
        assert done.returncode == 0, done.stderr
    finally:
        gw.stop()
