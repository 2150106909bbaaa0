"""PROCESS_WORKERS > 1: stopping the gateway stops its workers too.

Tornado's fork_processes leaves forked workers running when the parent is stopped with a plain
kill (SIGTERM); they would keep the port open and answer with the old settings."""

import os
import time


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_end_when_the_gateway_process_is_stopped(gateway_factory):
    gw = gateway_factory(PROCESS_WORKERS=2)
    deadline = time.monotonic() + 10
    workers = _children(gw.proc.pid)
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        workers = _children(gw.proc.pid)
    assert len(workers) == 2

    gw.proc.terminate()
    gw.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)
