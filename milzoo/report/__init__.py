"""Pictures of runs: curves, representation maps, attention views and the HTML report.

- :func:`write_report` / :func:`build_report`: one self-contained HTML page
  for one or several run directories (``milzoo report``);
- :func:`run_embedding`: the representation map of a fold's model
  (``milzoo embed``);
- :func:`run_attention`: one bag's attention view (``milzoo attention``);
- :func:`run_predictions`: the validation-selected and last checkpoints' predictions files of a run, with
  their ROC curves and confusion matrices (the report's section of them).

All figures are drawn by matplotlib without pyplot (PNG by the Agg canvas, the ROC curves as SVG): no display,
no network.  The page is rendered from the Jinja2 templates in ``milzoo/report/templates/``.
"""

from milzoo.report.attention import run_attention
from milzoo.report.common import RunData, load_run
from milzoo.report.context import RunContext
from milzoo.report.curves import curve_figures
from milzoo.report.embedding import run_embedding
from milzoo.report.html import build_report, write_report
from milzoo.report.roc import run_predictions

__all__ = ["RunContext", "RunData", "build_report", "curve_figures", "load_run", "run_attention", "run_embedding",
           "run_predictions", "write_report"]
