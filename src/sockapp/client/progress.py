"""A live progress line for ``sockapp bench`` on a terminal, drawn by rich; silent otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from twisted.internet.task import LoopingCall

from sockapp.client.bench import Bench

REFRESH_SECONDS = 0.25


@contextmanager
def live_progress(reactor: Any, bench: Bench, console: Console | None = None) -> Iterator[None]:
    """Show requests done, rate and errors on stderr while the block runs, if stderr is a terminal."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    config = bench.config
    by_time = config.duration is not None
    progress = Progress(
        TextColumn("[bold]bench"),
        BarColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        auto_refresh=False,
        transient=True,
    )
    task = progress.add_task("bench", total=config.duration if by_time else config.requests, stats="connecting")

    def update() -> None:
        elapsed = bench.elapsed()
        rate = bench.completed / elapsed if elapsed else 0.0
        progress.update(
            task,
            completed=min(elapsed, config.duration) if config.duration is not None else bench.completed,
            stats=f"{bench.completed:,} done  {rate:,.0f}/s  {sum(bench.errors.values()):,} errors",
        )
        progress.refresh()

    loop = LoopingCall(update)
    loop.clock = reactor
    progress.start()
    loop.start(REFRESH_SECONDS)
    try:
        yield
    finally:
        loop.stop()
        progress.stop()
