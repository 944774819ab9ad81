"""Plotly figures for the pages, built from already-aggregated rows.

Each function takes the few rows a query returned (see dashboard.usage) and
returns the figure as a plain dict (`data`, `layout`); the page embeds it with
`json_script` and static/js/charts.js draws it with the local plotly.js.

The dicts are written by hand rather than through plotly.graph_objects:
its validating figure objects cost about 9 ms a figure, most of the
overview's time budget, for JSON that plotly.js reads as it is.
"""

from functools import cache

from checkpoints.units import byte_unit

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
GRID = "#e8ebf0"


def _scale(largest):
    """(axis, divisor, hover format) for byte values up to `largest`, in the unit the cards use.

    Sizes are powers of 1000 as the limits are written; the axis says "40 MB"
    where a card says "40.6 MB" (checkpoints.units picks the unit for both),
    never plotly's own "40MB" or "40M".

    >>> axis, divisor, hover = _scale(40_600_000)
    >>> axis["ticksuffix"], divisor, hover
    (' MB', 1000000, '%{y:,.1f} MB')
    >>> _scale(0)[0]["ticksuffix"], _scale(0)[2]
    (' B', '%{y:,} B')
    """
    unit, divisor = byte_unit(largest or 0)
    axis = {"ticksuffix": f" {unit}", "tickformat": ",~f", "rangemode": "tozero", "gridcolor": GRID, "exponentformat": "none"}
    hover = "%{y:,} B" if divisor == 1 else f"%{{y:,.1f}} {unit}"
    return axis, divisor, hover


def _scaled(values, divisor):
    return [v / divisor if divisor != 1 else v for v in values]


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
    largest = max((sum(r[key] or 0 for _, key, _ in series) for r in rows), default=0)
    axis, divisor, hover = _scale(largest)
    traces = [
        _trace(
            "scatter", x=days, y=_scaled([r[key] or 0 for r in rows], divisor), name=name, stackgroup="bytes",
            mode="lines", line={"width": 1, "color": color}, hovertemplate=hover,
        )
        for name, key, color in series
    ]
    return _figure(traces, _layout(yaxis=axis))


def checkpoints_per_day(rows):
    return _figure(
        [_trace("bar", x=[r["day"] for r in rows], y=[r["checkpoints_added"] or 0 for r in rows],
                name="Checkpoints added", marker={"color": COLORS["bar"]}, hovertemplate="%{y:,}")],
        _layout(yaxis={"rangemode": "tozero", "gridcolor": GRID, "tickformat": ",d"}, showlegend=False),
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
                yaxis={"rangemode": "tozero", "gridcolor": GRID, "tickformat": ",d"}),
    )


def top_threads(threads):
    """Horizontal bars, biggest on top."""
    threads = list(reversed(threads))
    labels = [f"{t.source.name}/{_short(t.thread_id)}" for t in threads]
    axis, divisor, hover = _scale(max((t.stored_bytes for t in threads), default=0))
    return _figure(
        [_trace("bar", y=labels, x=_scaled([t.stored_bytes for t in threads], divisor), orientation="h",
                marker={"color": COLORS["blob"]}, hovertemplate="%{y}: " + hover.replace("{y", "{x") + "<extra></extra>")],
        _layout(
            showlegend=False, hovermode="closest", height=max(200, 28 * len(threads) + 60),
            margin={"l": 200, "r": 16, "t": 8, "b": 40}, xaxis=axis,
            yaxis={"automargin": True, "type": "category"},
        ),
    )


def growth_forecast(points, result):
    """Daily stored bytes, the trend line continued to the quota, and the quota."""
    largest = max([v for _, v in points] + ([result["quota"]] if result else []), default=0)
    axis, divisor, hover = _scale(largest)
    traces = [
        _trace("scatter", x=[d for d, _ in points], y=_scaled([v for _, v in points], divisor), name="Stored bytes",
               mode="lines+markers", line={"color": COLORS["checkpoint"]}, hovertemplate=hover),
    ]
    end = result["date"] if result and result["date"] else None
    if points and end and end > points[-1][0]:
        traces.append(
            _trace("scatter", x=[points[-1][0], end], y=_scaled([points[-1][1], result["quota"]], divisor), name="Trend",
                   mode="lines", line={"color": COLORS["trend"], "dash": "dash"}, hovertemplate=hover)
        )
    if points and result:
        x_end = end if end and end > points[-1][0] else points[-1][0]
        traces.append(
            _trace("scatter", x=[points[0][0], x_end], y=_scaled([result["quota"]] * 2, divisor), name="Quota",
                   mode="lines", line={"color": COLORS["quota"], "width": 1}, hovertemplate=hover)
        )
    return _figure(traces, _layout(yaxis=axis))


def thread_sizes(points, spikes, new_bytes=True):
    """Logical and new bytes per step of a thread's root namespace.

    `points` are (step, checkpoint_id, logical_bytes, new_bytes) oldest first;
    `spikes` the checkpoint ids flagged as size spikes; `new_bytes` False
    leaves out the bars (where they equal the logical bytes, as on SQLite).
    The x axis has a tick per step on short threads: plotly's own ticks
    would read 0, 0.5, 1 and, rounded to integers, 0, 1, 1.
    """
    steps = [p[0] for p in points]
    axis, divisor, hover = _scale(max((p[2] for p in points), default=0))
    traces = [
        _trace("scatter", x=steps, y=_scaled([p[2] for p in points], divisor), name="Logical bytes",
               mode="lines+markers", line={"color": COLORS["checkpoint"]}, hovertemplate="step %{x}: " + hover),
    ]
    if new_bytes:
        traces.append(
            _trace("bar", x=steps, y=_scaled([p[3] for p in points], divisor), name="New bytes", width=0.6,
                   marker={"color": [COLORS["over"] if p[1] in spikes else COLORS["write"] for p in points]},
                   opacity=0.75, hovertemplate="step %{x}: " + hover + " new")
        )
    known = [s for s in steps if s is not None]
    xaxis = {"title": {"text": "step"}, "gridcolor": GRID, "tickformat": "d"}
    if known and max(known) - min(known) <= STEP_TICKS:
        xaxis.update(tickmode="linear", tick0=0, dtick=1)
    return _figure(traces, _layout(yaxis=axis, xaxis=xaxis,
                                   hovermode="closest", barmode="overlay", showlegend=new_bytes))


# Up to this many steps, one tick per step; beyond, plotly's (whole) ticks.
STEP_TICKS = 20


def _short(text, n=28):
    """A thread id cut for a chart label.

    >>> _short("abc"), _short("x" * 40, 10)
    ('abc', 'xxxxxxxxx…')
    """
    return text if len(text) <= n else text[: n - 1] + "…"
