"""The bench's progress display on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from scripts.bench.loadspec import LiveStats


class BenchUI:
    """Progress on stderr: a rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
            disable=not self.live,
        )
        self._signing: TaskID | None = None
        self._load: TaskID | None = None
        self._last: LiveStats | None = None
        self._last_printed = -1

    def __enter__(self) -> BenchUI:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        self.console.print(f"[dim]bench:[/] {text}")

    def signing(self, done: int, total: int) -> None:
        if self._signing is None:
            self._signing = self.progress.add_task("signing", total=total, info="")
            if not self.live:
                self.note(f"signing {total} transactions")
        self.progress.update(self._signing, completed=done, info=f"{done}/{total} txs")

    def load_started(self, total: float) -> None:
        """A new load bar (seconds, or transactions for --count); a sweep's old one goes."""
        for task in (self._signing, self._load):
            if task is not None:
                self.progress.remove_task(task)
        self._signing = None
        self._last = None
        self._load = self.progress.add_task("load", total=total, info="")

    def tick(self, live: LiveStats, count: int | None) -> None:
        prev = self._last
        self._last = live
        rate = 0.0
        if prev is not None and live.elapsed_s > prev.elapsed_s:
            rate = (live.committed_txs - prev.committed_txs) / (live.elapsed_s - prev.elapsed_s)
        info = (
            f"{live.phase:<7} {rate:7.0f} tx/s committed  height {live.height}  "
            f"view {live.view}  errors {live.errors}"
        )
        if self._load is not None:
            done = live.sent_txs if count is not None else live.elapsed_s
            self.progress.update(self._load, completed=done, info=info)
        second = int(live.elapsed_s)
        if not self.live and second // 5 != self._last_printed // 5:
            self._last_printed = second
            self.note(f"t={live.elapsed_s:5.1f}s {info}")
