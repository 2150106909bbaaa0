"""``python -m tests.gcprobe``: ``server.py`` with a probe for garbage cycles, for tests only (``tests/e2e/test_no_garbage.py``).

On SIGUSR1 the server runs a full collection that keeps what it finds (``gc.DEBUG_SAVEALL``) and
writes ``{type name: count}`` of it as JSON to ``$GC_PROBE_OUT`` (then to ``$GC_PROBE_OUT.done``,
renamed, so a reader never sees half a file). Everything else is the real server.
"""

import collections
import gc
import json
import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe(signum, frame):
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    found = collections.Counter("%s.%s" % (type(o).__module__, type(o).__qualname__) for o in gc.garbage)
    gc.garbage.clear()
    gc.collect()  # now without keeping: what was found is freed, and not found again next time
    out = os.environ["GC_PROBE_OUT"]
    with open(out + ".tmp", "w") as f:
        json.dump(found, f)
    os.replace(out + ".tmp", out + ".done")


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _probe)
    sys.argv = [os.path.join(ROOT, "server.py")]
    runpy.run_path(sys.argv[0], run_name="__main__")
