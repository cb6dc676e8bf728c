"""The merged timeline as a PNG swimlane chart: one lane per node, time across.

In each lane: messages sent and received as short ticks coloured by message kind (sent above
the lane's middle line, received below), commits as small blue bars, checkpoints as grey
squares, view timers firing as orange crosses, a view change starting as a red line across
the lane (labelled with the view it goes to), a new view installed as a green diamond, faults
applied or cleared as purple triangles. Red shading across every lane marks the time from the
first view change to the last new view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from scripts.timeline.events import Event, wall_text

MESSAGE_COLORS: Final = {
    "pre-prepare": "tab:blue",
    "prepare": "tab:cyan",
    "commit": "tab:green",
    "checkpoint": "tab:gray",
    "view-change": "tab:red",
    "new-view": "darkgreen",
    "request": "tab:olive",
    "fetch": "tab:brown",
}
_MARKERS: Final = {
    "timer": ("x", "tab:orange", 60),
    "new_view": ("D", "green", 55),
    "checkpoint": ("s", "gray", 22),
    "fault": ("v", "purple", 70),
}
MAX_LABELS: Final = 24
"""View-change and fault labels drawn at most (the rest are still marked)."""


def plot_swimlanes(
    events: Sequence[Event],
    path: Path,
    *,
    nodes: Sequence[int],
    title: str,
    spans: Sequence[Mapping[str, Any]] = (),
    t0_ms: int | None = None,
) -> None:
    """Draw ``events`` (merged, by time) into ``path``. ``spans``: extra shaded intervals
    ``{"from_ms", "to_ms", "label"}`` (a scenario's faults)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = t0_ms if t0_ms is not None else (events[0].t_ms if events else 0)
    lane = {n: i for i, n in enumerate(sorted(nodes))}
    height = max(2.6, 0.9 * len(lane) + 1.6)
    fig, ax = plt.subplots(figsize=(12, height))
    try:
        _draw_spans(ax, spans, start)
        _draw_view_change_window(ax, events, start)
        _draw_messages(ax, events, lane, start)
        _draw_protocol(ax, events, lane, start)
        ax.set_yticks(range(len(lane)))
        ax.set_yticklabels([f"node {n}" for n in sorted(lane)])
        ax.set_ylim(len(lane) - 0.5, -0.5)
        if events:
            end = (events[-1].t_ms - start) / 1000
            ax.set_xlim(min(0.0, (events[0].t_ms - start) / 1000), max(end, 0.001) * 1.02)
        ax.set_xlabel(f"seconds since {wall_text(start)} (node clocks)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.25)
        _legend(ax)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _x(e: Event, start: int) -> float:
    return (e.t_ms - start) / 1000


def _draw_spans(ax: Any, spans: Sequence[Mapping[str, Any]], start: int) -> None:
    for span in spans:
        a = (span["from_ms"] - start) / 1000
        b = max((span["to_ms"] - start) / 1000, a + 0.05)
        ax.axvspan(a, b, color="purple", alpha=0.08)
        ax.text(a, -0.45, f" {span['label']}", fontsize=7, color="purple", va="top")


def _draw_view_change_window(ax: Any, events: Sequence[Event], start: int) -> None:
    changes = [e for e in events if e.kind == "view_change"]
    if not changes:
        return
    installed = [e for e in events if e.kind == "new_view" and e.t_ms >= changes[0].t_ms]
    end = installed[-1] if installed else events[-1]
    ax.axvspan(_x(changes[0], start), _x(end, start), color="red", alpha=0.07)


def _draw_messages(ax: Any, events: Sequence[Event], lane: Mapping[int, int], start: int) -> None:
    by_color: dict[tuple[str, bool], list[tuple[float, int]]] = {}
    for e in events:
        if e.kind not in ("msg_in", "msg_out") or e.node not in lane:
            continue
        color = MESSAGE_COLORS.get(e.detail, "black")
        by_color.setdefault((color, e.kind == "msg_out"), []).append((_x(e, start), lane[e.node]))
    for (color, sent), points in by_color.items():
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        lo, hi = (-0.32, -0.04) if sent else (0.04, 0.32)
        ax.vlines(xs, [y + lo for y in ys], [y + hi for y in ys], color=color, lw=0.6, alpha=0.7)


def _draw_protocol(ax: Any, events: Sequence[Event], lane: Mapping[int, int], start: int) -> None:
    labels = 0
    commits = [
        (_x(e, start), lane[e.node]) for e in events if e.kind == "commit" and e.node in lane
    ]
    if commits:
        ax.vlines(
            [c[0] for c in commits],
            [c[1] - 0.42 for c in commits],
            [c[1] + 0.42 for c in commits],
            color="navy",
            lw=1.4,
        )
    for e in events:
        if e.node not in lane:
            continue
        y = lane[e.node]
        if e.kind == "view_change":
            ax.vlines([_x(e, start)], [y - 0.45], [y + 0.45], color="red", lw=2.2)
            if labels < MAX_LABELS:
                ax.text(_x(e, start), y - 0.36, f" {e.detail or e.view}", fontsize=7, color="red")
                labels += 1
        elif e.kind in _MARKERS:
            marker, color, size = _MARKERS[e.kind]
            ax.scatter([_x(e, start)], [y], marker=marker, color=color, s=size, zorder=3)
            if e.kind == "fault" and labels < MAX_LABELS:
                ax.text(_x(e, start), y + 0.4, f" {e.detail}", fontsize=7, color="purple")
                labels += 1


def _legend(ax: Any) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([0], [0], color=c, lw=1.5, label=f"{k}") for k, c in MESSAGE_COLORS.items()
    ] + [
        Line2D([0], [0], color="navy", lw=2, label="block committed"),
        Line2D([0], [0], color="red", lw=2.5, label="view change started"),
        Line2D([0], [0], marker="D", color="green", lw=0, label="new view installed"),
        Line2D([0], [0], marker="x", color="tab:orange", lw=0, label="view timer fired"),
        Line2D([0], [0], marker="v", color="purple", lw=0, label="fault applied/cleared"),
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        title="messages: sent above, received below",
        title_fontsize=7,
    )
