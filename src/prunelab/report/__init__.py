"""Reports of a sweep: the metric registry (metrics.py), Pareto frontier and budget selection (pareto.py), plots
(plots.py, matplotlib: optional extra `report`), the HTML page and the terminal summary (html.py, summary.py).

Functions here take plain point records; reading the store is the caller's job (`prunelab.api.report_job`).
"""

from prunelab.report.metrics import METRICS, Metric, metric

__all__ = ["METRICS", "Metric", "metric"]
