"""Self-contained HTML reports of stored runs (``wattspan report RUN... -o F.html``).

Plots are drawn by plotly.js, embedded in the page, so the file opens offline and can be
mailed or archived as one artefact. See :mod:`wattspan.analysis.report.html`.
"""

from wattspan.analysis.report.html import Figure, build_figures, render_report, write_report

__all__ = ["Figure", "build_figures", "render_report", "write_report"]
