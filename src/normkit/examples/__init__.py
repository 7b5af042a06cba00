"""One set of example models and data sets, shared by the lab, the benchmarks and
``normkit doctor`` (the core of normkit never imports them).

:mod:`normkit.examples.models` holds the models, :mod:`normkit.examples.data` the data sets
(scikit-learn's bundled ones, no downloads, and generated tasks).
"""

from normkit.examples import data, models

__all__ = ["data", "models"]
