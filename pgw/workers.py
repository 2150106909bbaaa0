"""Processes: the supervisor of forked workers (PROCESS_WORKERS > 1) and the graceful stop.

The one place that knows how the gateway's processes start, die and stop.

``supervise`` replaces ``tornado.process.fork_processes``, which restarts a dead worker at once
and exits the whole service after 100 restarts: a bot backend that runs for weeks could be
ended by a rare crash repeated over months, and a worker crashing at start-up was restarted in
a tight loop. Here a worker that dies is restarted after a delay that doubles while it keeps
dying young (``BACKOFF_FIRST`` up to ``BACKOFF_MAX``) and starts over once a worker has lived
``STABLE`` seconds; nothing is counted for ever. Each death is logged with its exit status or
signal. SIGTERM or SIGINT to the parent is passed on to every worker, and the parent waits for
them (killing what is still there ``SHUTDOWN_GRACE`` + ``KILL_AFTER`` seconds later); SIGHUP is
passed on too (each worker reloads its account pool).

``stop_on_signals`` (in each worker, or the lone process) makes SIGTERM/SIGINT a graceful stop:
stop accepting, let open answers finish for up to SHUTDOWN_GRACE seconds, end the rest with an
error event and ``[DONE]`` (their conversations hidden as usual), let what was written reach
the clients, then stop the loop: the process exits 0.
"""

import asyncio
import ctypes
import logging
import os
import random
import signal
import sys
import time

from tornado.ioloop import IOLoop

from pgw.errors import ApiError

log = logging.getLogger("gateway")

BACKOFF_FIRST = 0.5   # seconds before restarting a worker that died young
BACKOFF_MAX = 30.0    # the longest wait between restarts of one worker
STABLE = 30.0         # a worker that lived this long died of something new: restart it soon again
KILL_AFTER = 10.0     # seconds past SHUTDOWN_GRACE before workers that are still there are killed
SETTLE = 5.0          # seconds to let the last bytes of ended answers reach their clients

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid):
    """In a forked worker: end when the parent process ends (Linux; elsewhere a no-op).

    A worker left running without its supervisor would keep the port open and answer with the
    old settings (a parent killed with SIGKILL cannot pass anything on)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent was gone before prctl took effect
        sys.exit(0)


def describe(status):
    """Why a process ended, from its ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "signal %d" % number
        return "was killed by %s%s" % (name, " (core dumped)" if os.WCOREDUMP(status) else "")
    if os.WIFEXITED(status):
        return "exited with status %d" % os.WEXITSTATUS(status)
    return "ended (status %d)" % status


class Backoff:
    """When to restart one worker slot: BACKOFF_FIRST after a death, doubling while it dies young."""

    def __init__(self, first=BACKOFF_FIRST, most=BACKOFF_MAX, stable=STABLE):
        self.first, self.most, self.stable = first, most, stable
        self.delay = 0.0

    def next_delay(self, lived):
        if lived >= self.stable:
            self.delay = 0.0
        self.delay = min(self.most, self.delay * 2 if self.delay else self.first)
        return self.delay


def supervise(workers, sockets, grace):
    """Fork ``workers`` processes and keep them running.

    Returns the worker's number (0..workers-1) in each worker; in the parent it returns None
    once the service has been stopped (SIGTERM/SIGINT) and every worker has ended.
    """
    return Supervisor(workers, sockets, grace).run()


class Supervisor:
    """The parent process with PROCESS_WORKERS > 1 (see ``supervise``)."""

    def __init__(self, workers, sockets, grace):
        self.workers = workers
        self.sockets = sockets
        self.grace = grace
        self.parent = os.getpid()
        self.children = {}        # pid -> (slot, started)
        self.due = {}             # slot -> monotonic time to start it again
        self.backoff = [Backoff() for _ in range(workers)]
        self.stopping = None      # the signal that stops the service
        self.deadline = None      # when workers still there are killed

    def on_signal(self, signum, frame):
        # Only flags and system calls here: the loop logs (a handler may interrupt logging).
        if self.stopping is not None:
            return
        self.stopping = signum
        self.deadline = time.monotonic() + self.grace + KILL_AFTER
        for sock in self.sockets:  # the workers stop listening; nothing must queue on the parent's copy
            sock.close()
        for pid in self.children:
            _kill(pid, signal.SIGTERM)

    def on_hup(self, signum, frame):
        for pid in self.children:  # each worker reloads its own account pool (server.reload_on_sighup)
            _kill(pid, signal.SIGHUP)

    def start(self, slot):
        """Fork worker ``slot``: True in the new worker, False in the parent (also when the
        fork failed: the slot is then tried again after its back-off)."""
        try:
            pid = os.fork()
        except OSError as e:  # out of processes or memory: the service goes on with fewer workers
            delay = self.backoff[slot].next_delay(0.0)
            log.error("starting worker %d failed (%s); trying again in %.1f s", slot, e, delay)
            self.due[slot] = time.monotonic() + delay
            return False
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's own handler is in place
            random.seed()
            die_with_parent(self.parent)
            return True
        self.children[pid] = (slot, time.monotonic())
        return False

    def run(self):
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGHUP, self.on_hup)
        for slot in range(self.workers):
            if self.start(slot):
                return slot
        logged = False
        while self.children or (self.due and self.stopping is None):
            if self.stopping is None:
                slot = self.restart_due()
                if slot is not None:
                    return slot
            else:
                if not logged:
                    logged = True
                    log.info("%s: stopping %d workers (SHUTDOWN_GRACE %g s)", signal.Signals(self.stopping).name,
                             len(self.children), self.grace)
                self.kill_late()
            pid, status = _reap(blocking=not self.due and self.stopping is None)
            if pid is None:
                time.sleep(0.05)
            else:
                self.ended(pid, status)
        log.info("all workers stopped")
        return None

    def restart_due(self):
        """Start the workers whose back-off is over; the slot number in a new worker, else None."""
        now = time.monotonic()
        for slot, when in sorted(self.due.items()):
            if when <= now:
                del self.due[slot]
                log.info("starting worker %d again", slot)
                if self.start(slot):
                    return slot
        return None

    def kill_late(self):
        if self.deadline is not None and time.monotonic() > self.deadline:
            for pid in self.children:
                log.warning("worker pid %d did not stop within SHUTDOWN_GRACE + %g s: killed", pid, KILL_AFTER)
                _kill(pid, signal.SIGKILL)
            self.deadline = None

    def ended(self, pid, status):
        slot, started = self.children.pop(pid)
        if self.stopping is not None:
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                log.warning("worker %d (pid %d) %s while stopping", slot, pid, describe(status))
            return
        delay = self.backoff[slot].next_delay(time.monotonic() - started)
        log.error("worker %d (pid %d) %s; restarting it in %.1f s", slot, pid, describe(status), delay)
        self.due[slot] = time.monotonic() + delay


def _reap(blocking):
    """One ended child: ``(pid, status)``, or ``(None, None)`` when none has ended (yet)."""
    try:
        pid, status = os.waitpid(-1, 0 if blocking else os.WNOHANG)
    except ChildProcessError:
        return None, None
    return (pid, status) if pid else (None, None)


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


SHUTTING_DOWN = "the gateway is restarting or shutting down; send the request again"


def stop_on_signals(server, gateway):
    """Make SIGTERM and SIGINT stop this process gracefully (see the module docstring)."""
    loop = IOLoop.current()
    stopping = []

    def on_signal(signum):
        if not stopping:
            stopping.append(signum)
            loop.spawn_callback(graceful_stop, server, gateway, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.asyncio_loop.add_signal_handler(signum, on_signal, signum)


async def graceful_stop(server, gateway, signum):
    grace = gateway.settings.shutdown_grace
    watch = gateway.watch
    log.info("%s: no new connections; waiting up to %g s for %d open answers", signal.Signals(signum).name,
             grace, len(watch))
    gateway.stopping = True
    server.stop()
    deadline = time.monotonic() + grace
    while (len(watch) or gateway.waiting) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    left = watch.runs()
    if left:
        log.warning("ending %d answers still open after SHUTDOWN_GRACE (%g s)", len(left), grace)
        for run in left:
            run.abort(ApiError(503, SHUTTING_DOWN, "server_error", "shutting_down"))
    waiting = list(gateway.waiting)  # requests still preparing or queued for an account
    if waiting:
        log.warning("ending %d requests still waiting (files, the account queue) after SHUTDOWN_GRACE", len(waiting))
        for handler in waiting:
            handler.stop_waiting(ApiError(503, SHUTTING_DOWN, "server_error", "shutting_down"))
    deadline = time.monotonic() + SETTLE
    while not watch.idle() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(server.close_all_connections(), 1.0)
    except asyncio.TimeoutError:
        pass
    gateway.close()
    log.info("stopped")
    IOLoop.current().stop()
