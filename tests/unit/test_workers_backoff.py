"""Worker restarts (pgw/workers.py): the delay doubles while a worker keeps dying young, is
capped, starts over once a worker has lived a while, and never runs out: unlike
``fork_processes``, no number of deaths ends the service."""

import os
import signal

from pgw.workers import BACKOFF_FIRST, BACKOFF_MAX, STABLE, Backoff, describe


def test_delay_doubles_while_a_worker_dies_young_and_is_capped():
    b = Backoff()
    delays = [b.next_delay(0.1) for _ in range(12)]
    assert delays[:4] == [BACKOFF_FIRST, BACKOFF_FIRST * 2, BACKOFF_FIRST * 4, BACKOFF_FIRST * 8]
    assert max(delays) == BACKOFF_MAX and delays[-1] == BACKOFF_MAX


def test_a_thousand_deaths_still_get_restarts():
    b = Backoff()
    assert all(0 < b.next_delay(0.0) <= BACKOFF_MAX for _ in range(1000))


def test_a_worker_that_lived_long_is_restarted_soon_again():
    b = Backoff()
    for _ in range(10):
        b.next_delay(0.0)
    assert b.next_delay(STABLE + 1) == BACKOFF_FIRST


def test_a_death_is_described_by_its_signal_or_exit_status():
    killed = signal.SIGKILL  # waitpid statuses as the kernel encodes them
    assert describe(killed) == "was killed by SIGKILL"
    assert describe(3 << 8) == "exited with status 3"
    assert describe(signal.SIGSEGV | 0x80) == "was killed by SIGSEGV (core dumped)"
    assert os.WIFEXITED(0) and describe(0) == "exited with status 0"
