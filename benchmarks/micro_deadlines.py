"""Per-connection cost of the deadline timer on the real epoll reactor: make the
deadlines of 50 connections, run one reactor turn, cancel them (as a close does).

    python benchmarks/micro_deadlines.py [LABEL]
"""

import sys
import time

from twisted.internet import epollreactor

epollreactor.install()
from twisted.internet import reactor  # noqa: E402 - after the reactor is installed

from sockapp.server.lifecycle import ServerFactory  # noqa: E402 - it imports the reactor

factory = ServerFactory(reactor=reactor)


class P:
    def idleTimedOut(self):
        pass

    def frameTimedOut(self):
        pass


p = P()


def batch():
    ds = [factory.deadlines_for(p) for _ in range(50)]
    reactor.runUntilCurrent()
    for d in ds:
        d.cancel()
    reactor.runUntilCurrent()


N = 4000
best = 1e9
for _ in range(5):
    t = time.perf_counter()
    for _ in range(N):
        batch()
    best = min(best, (time.perf_counter() - t) / (N * 50))
label = sys.argv[1] if len(sys.argv) > 1 else "deadlines"
print(f"{label}: {best * 1e6:.2f} us per connection (deadlines made, one reactor turn, cancelled)")
