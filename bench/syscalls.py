"""System calls per streamed event, gateway vs nginx: ``strace -c`` of the proxy during paced streams.

    .venv/bin/python -m bench.syscalls gateway|nginx [STREAMS=200] [EVENTS=30] [DIALECT=legacy]

Prints strace's table for the run (connection set-up included: one stream's share is the
accept, connect, socket and close rows). nginx reads and writes once per event (recvfrom, writev);
anything more in the gateway's table is its own.
"""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time

from bench import load, procs


def main(argv):
    which = argv[0]
    n, events = (int(argv[1]) if len(argv) > 1 else 200), (int(argv[2]) if len(argv) > 2 else 30)
    dialect = argv[3] if len(argv) > 3 else "legacy"
    out = os.path.join(tempfile.mkdtemp(prefix="bench-strace-"), "strace.txt")
    with procs.Upstream(events, 4, 200, dialect) as up:
        proxy = procs.Server(up.url) if which == "gateway" else procs.Nginx(procs.nginx_binary(), up.url)
        with proxy:
            pid = proxy.pids()[-1] if which == "nginx" else proxy.pid
            st = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", out])
            time.sleep(1)
            asyncio.run(load.run(proxy.url, n, ramp=0.5, timeout=events * 0.2 + 30))
            st.send_signal(signal.SIGINT)
            st.wait()
    print("%s, %d streams x %d events (%s):" % (which, n, events, dialect))
    with open(out) as f:
        print(f.read())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
