"""run.sh's Python check and venv rebuild, run in a temporary copy with a fake Python.

The fake (a shell script) answers the three ways run.sh calls Python: ``-c`` (its version),
``-m venv DIR`` (a venv whose python is a fake of the same version), ``-m pip install`` (logged;
fails when FAKE_PIP_FAIL names a file that exists) and ``server.py`` (logged). Nothing is
installed, nothing reaches the network.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

FAKE = r"""#!/bin/sh
# fake python __VERSION__
case "$1" in
  -c) echo "__VERSION__" ;;
  -m)
    case "$2" in
      venv)
        mkdir -p "$3/bin"
        cp "$0" "$3/bin/python"  # the venv's python: the same fake
        echo "venv __VERSION__ $3" >> "$FAKE_LOG" ;;
      pip)
        echo "pip __VERSION__ $*" >> "$FAKE_LOG"
        if [ -n "$FAKE_PIP_FAIL" ] && [ -e "$FAKE_PIP_FAIL" ]; then rm -f "$FAKE_PIP_FAIL"; exit 1; fi ;;
    esac ;;
  *) echo "ran __VERSION__ $*" >> "$FAKE_LOG" ;;
esac
"""


def fake_python(directory, version):
    path = os.path.join(str(directory), "python-" + version)
    with open(path, "w") as f:
        f.write(FAKE.replace("__VERSION__", version))
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def project(tmp_path):
    """A copy of run.sh and the requirements files, and a way to run it with a chosen Python."""
    work = tmp_path / "project"
    work.mkdir()
    for name in ("run.sh", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(os.path.join(ROOT, name), str(work / name))
    log = tmp_path / "calls.log"

    def run(python, *args, pip_fail=None):
        env = {"PATH": "/usr/bin:/bin", "PYTHON": python, "FAKE_LOG": str(log), "FAKE_PIP_FAIL": pip_fail or ""}
        done = subprocess.run(["bash", str(work / "run.sh"), *args], env=env, capture_output=True, text=True,
                              timeout=30)
        calls = log.read_text().splitlines() if log.exists() else []
        log.write_text("")
        return done, calls

    run.dir = work
    run.tmp = tmp_path
    return run


def test_an_old_python_is_refused_with_one_line_saying_which_is_needed(project):
    done, calls = project(fake_python(project.tmp, "3.9.18"))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Python 3.11 or newer is needed" in lines[0] and "3.9.18" in lines[0]
    assert calls == [] and not (project.dir / ".venv").exists()


def test_a_python_that_does_not_run_is_one_line_too(project):
    done, _ = project(str(project.tmp / "no-such-python"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "3.11 or newer" in lines[0]


def test_first_run_creates_installs_and_starts_then_the_second_only_starts(project):
    py = fake_python(project.tmp, "3.11.7")
    done, calls = project(py)
    assert done.returncode == 0, done.stderr
    assert [c.split()[0] for c in calls] == ["venv", "pip", "ran"] and calls[-1].endswith("server.py")
    done, calls = project(py)
    assert done.returncode == 0 and [c.split()[0] for c in calls] == ["ran"]


def test_a_venv_made_by_another_python_is_rebuilt(project):
    done, _ = project(fake_python(project.tmp, "3.11.7"))
    assert done.returncode == 0
    done, calls = project(fake_python(project.tmp, "3.12.1"))
    assert done.returncode == 0, done.stderr
    assert "rebuilding .venv" in done.stderr
    assert calls[0].startswith("venv 3.12.1") and calls[1].startswith("pip 3.12.1") and calls[2].startswith("ran 3.12.1")


@pytest.mark.parametrize("breakage", ["missing", "not runnable"])
def test_a_broken_venv_is_rebuilt(project, breakage):
    py = fake_python(project.tmp, "3.11.7")
    assert project(py)[0].returncode == 0
    venv_python = project.dir / ".venv" / "bin" / "python"
    if breakage == "missing":
        venv_python.unlink()
    else:
        venv_python.write_text("#!/bin/sh\nexit 1\n")
    done, calls = project(py)
    assert done.returncode == 0, done.stderr
    assert "rebuilding .venv" in done.stderr and [c.split()[0] for c in calls] == ["venv", "pip", "ran"]


def test_a_failed_install_is_not_stamped_and_the_venv_is_rebuilt_once(project):
    py = fake_python(project.tmp, "3.11.7")
    flag = project.tmp / "fail-once"
    flag.write_text("")
    done, calls = project(py, pip_fail=str(flag))
    # the first install fails: a fresh venv and one more try, which works
    assert done.returncode == 0, done.stderr
    assert "trying once more" in done.stderr
    assert [c.split()[0] for c in calls] == ["venv", "pip", "venv", "pip", "ran"]


def test_an_install_that_keeps_failing_stops_and_is_retried_next_time(project):
    py = fake_python(project.tmp, "3.11.7")
    fail = project.tmp / "fail"
    script = project.tmp / "python-always-fails-pip"
    script.write_text(Path(py).read_text().replace('rm -f "$FAKE_PIP_FAIL"; exit 1', "exit 1"))
    os.chmod(str(script), 0o755)
    fail.write_text("")
    done, calls = project(str(script), pip_fail=str(fail))
    assert done.returncode != 0 and "installing requirements.txt failed" in done.stderr
    assert "ran" not in [c.split()[0] for c in calls]
    assert not list((project.dir / ".venv").glob(".installed-*"))
    done, calls = project(py)  # the cause fixed: the next run installs again
    assert done.returncode == 0 and "pip" in [c.split()[0] for c in calls]
