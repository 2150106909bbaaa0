"""The bench runs (CI runs only its seconds-long smoke mode): every scenario completes and every
text it streamed came out exact. No timing is asserted: numbers belong in the bench's table."""

import subprocess
import sys

from tests.helpers import ROOT


def test_bench_smoke_runs_and_every_text_is_exact():
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exact: all texts exact" in done.stdout
    for scenario in ("S1 streams held", "S2 conversion in-process", "S2 conversion end to end",
                     "S3 memory", "S4 one process", "S4 two processes", "S6 slow readers",
                     "Q1 queue baseline (no pool, K chained clients)", "Q1 queue pool, one process",
                     "Q1 queue pool, Redis, 2 processes"):
        assert "| %s |" % scenario in done.stdout
    assert "failed 0" in done.stdout
