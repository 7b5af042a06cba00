"""``normkit.lab``: re-measure the claims about normalization on real data.

Each claim is an :class:`Experiment` (``normkit lab list``); :func:`run_lab` runs the selected
ones over several seeds (cached, resumable, in parallel), :func:`write_report` writes
``results.json``, a CSV and a PNG per experiment and a self-contained ``index.html``. Verdicts come
from the rule in :mod:`normkit.lab.verdict`.

>>> from normkit.lab import LabConfig, run_lab, write_report
>>> cfg = LabConfig(quick=True, only=("init",))
>>> index = write_report(run_lab(cfg), cfg)      # doctest: +SKIP
"""

from normkit.lab.config import LabConfig
from normkit.lab.experiment import Analysis, Experiment, experiment_ids, get_experiment, register
from normkit.lab.report import summary_markdown, write_report
from normkit.lab.runner import ExperimentResult, run_lab
from normkit.lab.verdict import RULE_TEXT, Check, CheckResult, decide, evaluate

__all__ = [
    "RULE_TEXT",
    "Analysis",
    "Check",
    "CheckResult",
    "Experiment",
    "ExperimentResult",
    "LabConfig",
    "decide",
    "evaluate",
    "experiment_ids",
    "get_experiment",
    "register",
    "run_lab",
    "summary_markdown",
    "write_report",
]
