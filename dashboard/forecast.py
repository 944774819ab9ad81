"""Growth trend and the days left until a storage quota.

Pure arithmetic on (day, bytes) points: a least-squares line through the last
30 days of totals. No line (flat or shrinking) means no date.
"""

import math
from datetime import date, timedelta  # noqa: F401 (date: used by the doctests)


def trend(points):
    """Slope (bytes per day) and intercept of the least-squares line, or None.

    >>> trend([(date(2026, 1, 1), 100), (date(2026, 1, 2), 300), (date(2026, 1, 3), 500)])
    (200.0, 100.0)
    >>> trend([(date(2026, 1, 1), 100)]) is None
    True
    """
    if len(points) < 2:
        return None
    first = points[0][0]
    xs = [(d - first).days for d, _ in points]
    ys = [float(v) for _, v in points]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var
    return slope, mean_y - slope * mean_x


def forecast(points, quota, today=None):
    """When the totals reach `quota` at the current trend.

    Returns a dict: `slope` (bytes per day), `current`, `days_left` (None when
    the trend is flat or falling; 0 when already over) and `date`.

    >>> pts = [(date(2026, 1, d), 1000 * d) for d in range(1, 31)]
    >>> f = forecast(pts, 40_000, today=date(2026, 1, 30))
    >>> f["slope"], f["days_left"], f["date"]
    (1000.0, 10, datetime.date(2026, 2, 9))
    >>> forecast([(date(2026, 1, 1), 5), (date(2026, 1, 2), 5)], 100)["days_left"] is None
    True
    >>> forecast(pts, 20_000, today=date(2026, 1, 30))["days_left"]
    0
    >>> forecast([], 10) is None
    True
    """
    if not points or quota is None:
        return None
    today = today or points[-1][0]
    current = points[-1][1]
    line = trend(points)
    slope = line[0] if line else 0.0
    result = {"slope": slope, "current": current, "quota": quota, "days_left": None, "date": None}
    if current >= quota:
        result["days_left"] = 0
        result["date"] = today
    elif slope > 0:
        days = math.ceil((quota - current) / slope)
        result["days_left"] = days
        result["date"] = today + timedelta(days=days)
    return result
