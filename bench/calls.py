"""Python function calls per streamed event in the real server: cProfile of ``server.py`` over two
runs that differ only in the events per stream (start-up and set-up cancel out).

    .venv/bin/python -m bench.calls

The count moves by about 10% between runs (how many events share a loop turn varies).
"""

import asyncio
import os
import pstats
import signal
import sys
import tempfile

from bench import load, procs
from devkit.procs import ChildProcess

N, E = 100, 20


def run(events, out):
    with procs.Upstream(events, 4, 200, "legacy") as up:
        env = dict(os.environ, BASE_URL=up.url, PORT="0", HOST="127.0.0.1",
                   NEED_DELETE_CONVERSATION_AFTER_RESPONSE="false")
        p = ChildProcess([sys.executable, "-m", "cProfile", "-o", out, "server.py"], env=env,
                         pattern=r"listening on (http://[\d.:]+)", timeout=30)
        asyncio.run(load.run(p.match.group(1), N, ramp=0.2, timeout=60))
        p.proc.send_signal(signal.SIGINT)
        p.proc.wait(20)
        p.stop()
    st = pstats.Stats(out)
    return st.total_calls, sum(v[0] for k, v in st.stats.items() if not k[0].startswith("~"))


def main():
    out = os.path.join(tempfile.mkdtemp(prefix="bench-calls-"), "server.prof")
    a, b = run(E, out), run(2 * E, out)
    print("calls per streamed event: all %.1f, Python functions %.1f" % ((b[0] - a[0]) / (N * E),
                                                                       (b[1] - a[1]) / (N * E)))


if __name__ == "__main__":
    sys.exit(main())
