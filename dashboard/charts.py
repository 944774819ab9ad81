"""Plotly figures for the pages, built from already-aggregated rows.

Each function takes the few rows a query returned (see dashboard.usage) and
returns the figure as a plain dict (`data`, `layout`); the page embeds it with
`json_script` and static/js/charts.js draws it with the local plotly.js.

The dicts are written by hand rather than through plotly.graph_objects:
its validating figure objects cost about 9 ms a figure, most of the
overview's time budget, for JSON that plotly.js reads as it is.
"""

from functools import cache

COLORS = {
    "checkpoint": "#3b6fd4",
    "blob": "#7b5cc4",
    "write": "#d9822b",
    "external": "#2f9e77",
    "bar": "#3b6fd4",
    "over": "#c2410c",
    "trend": "#6b7280",
    "quota": "#b42318",
}
# Serialized sizes are powers of 1000, as the limits are written: SI ticks.
BYTES_AXIS = {"tickformat": "~s", "ticksuffix": "B", "rangemode": "tozero", "gridcolor": "#e8ebf0"}


def _layout(**extra):
    layout = {
        "margin": {"l": 56, "r": 16, "t": 8, "b": 40},
        "height": 280,
        "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12, "color": "#1d2430"},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "legend": {"orientation": "h", "y": -0.18, "x": 0},
        "hovermode": "x unified",
        "xaxis": {"gridcolor": "#e8ebf0"},
        "yaxis": {"gridcolor": "#e8ebf0"},
    }
    layout.update(extra)
    return layout


@cache
def _template():
    """plotly's default template, as graph_objects would embed it (the look stays the same)."""
    import plotly.io

    return plotly.io.templates[plotly.io.templates.default].to_plotly_json()


def _figure(traces, layout):
    return {"data": traces, "layout": {"template": _template(), **layout}}


def _trace(kind, **attrs):
    return {"type": kind, **attrs}


def stored_over_time(rows):
    """Stacked areas: checkpoint rows, blob rows, writes and external objects per day."""
    days = [r["day"] for r in rows]
    series = [
        ("Checkpoint rows", "checkpoint_bytes", COLORS["checkpoint"]),
        ("Blob rows", "blob_bytes", COLORS["blob"]),
        ("Writes", "write_bytes", COLORS["write"]),
        ("External objects", "external_bytes", COLORS["external"]),
    ]
    traces = [
        _trace(
            "scatter", x=days, y=[r[key] or 0 for r in rows], name=name, stackgroup="bytes", mode="lines",
            line={"width": 1, "color": color}, hovertemplate="%{y:.3~s}B",
        )
        for name, key, color in series
    ]
    return _figure(traces, _layout(yaxis=BYTES_AXIS))


def checkpoints_per_day(rows):
    return _figure(
        [_trace("bar", x=[r["day"] for r in rows], y=[r["checkpoints_added"] or 0 for r in rows],
                name="Checkpoints added", marker={"color": COLORS["bar"]}, hovertemplate="%{y:,}")],
        _layout(yaxis={"rangemode": "tozero", "gridcolor": "#e8ebf0"}, showlegend=False),
    )


def size_distribution(bins, limit):
    """Bars per log size bin; bins at or above the size limit in warning colour.

    Empty bins at both ends are dropped so the bars fill the width.
    """
    nonzero = [i for i, (_, _, n) in enumerate(bins) if n]
    if nonzero:
        bins = bins[nonzero[0] : nonzero[-1] + 1]
    colors = [COLORS["over"] if low >= limit else COLORS["bar"] for _, low, _ in bins]
    return _figure(
        [_trace("bar", x=[label for label, _, _ in bins], y=[n for _, _, n in bins], marker={"color": colors},
                hovertemplate="%{x}: %{y:,} checkpoints<extra></extra>")],
        _layout(showlegend=False, hovermode="closest", xaxis={"type": "category", "tickangle": -30},
                yaxis={"rangemode": "tozero", "gridcolor": "#e8ebf0"}),
    )


def top_threads(threads):
    """Horizontal bars, biggest on top."""
    threads = list(reversed(threads))
    labels = [f"{t.source.name}/{_short(t.thread_id)}" for t in threads]
    return _figure(
        [_trace("bar", y=labels, x=[t.stored_bytes for t in threads], orientation="h",
                marker={"color": COLORS["blob"]}, hovertemplate="%{y}: %{x:.3~s}B<extra></extra>")],
        _layout(
            showlegend=False, hovermode="closest", height=max(200, 28 * len(threads) + 60),
            margin={"l": 200, "r": 16, "t": 8, "b": 40}, xaxis=BYTES_AXIS,
            yaxis={"automargin": True, "type": "category"},
        ),
    )


def growth_forecast(points, result):
    """Daily stored bytes, the trend line continued to the quota, and the quota."""
    traces = [
        _trace("scatter", x=[d for d, _ in points], y=[v for _, v in points], name="Stored bytes",
               mode="lines+markers", line={"color": COLORS["checkpoint"]}, hovertemplate="%{y:.3~s}B"),
    ]
    end = result["date"] if result and result["date"] else None
    if points and end and end > points[-1][0]:
        traces.append(
            _trace("scatter", x=[points[-1][0], end], y=[points[-1][1], result["quota"]], name="Trend", mode="lines",
                   line={"color": COLORS["trend"], "dash": "dash"}, hovertemplate="%{y:.3~s}B")
        )
    if points and result:
        x_end = end if end and end > points[-1][0] else points[-1][0]
        traces.append(
            _trace("scatter", x=[points[0][0], x_end], y=[result["quota"]] * 2, name="Quota", mode="lines",
                   line={"color": COLORS["quota"], "width": 1}, hovertemplate="%{y:.3~s}B")
        )
    return _figure(traces, _layout(yaxis=BYTES_AXIS))


def thread_sizes(points, spikes):
    """Logical and new bytes per step of a thread's root namespace.

    `points` are (step, checkpoint_id, logical_bytes, new_bytes) oldest first;
    `spikes` the checkpoint ids flagged as size spikes.
    """
    steps = [p[0] for p in points]
    return _figure(
        [
            _trace("scatter", x=steps, y=[p[2] for p in points], name="Logical bytes", mode="lines+markers",
                   line={"color": COLORS["checkpoint"]}, hovertemplate="step %{x}: %{y:.3~s}B"),
            _trace("bar", x=steps, y=[p[3] for p in points], name="New bytes", width=0.6,
                   marker={"color": [COLORS["over"] if p[1] in spikes else COLORS["write"] for p in points]},
                   opacity=0.75, hovertemplate="step %{x}: %{y:.3~s}B new"),
        ],
        _layout(yaxis=BYTES_AXIS, xaxis={"title": {"text": "step"}, "gridcolor": "#e8ebf0", "tickformat": "d"},
                hovermode="closest", barmode="overlay"),
    )


def _short(text, n=28):
    """A thread id cut for a chart label.

    >>> _short("abc"), _short("x" * 40, 10)
    ('abc', 'xxxxxxxxx…')
    """
    return text if len(text) <= n else text[: n - 1] + "…"
