"""Static low-rank baselines that share RankDyna's budget accounting and compact output format.

- :mod:`.svd`: truncated SVD of every target matrix at one uniform rank that meets the budget.
- :mod:`.fwsvd`: Fisher-weighted SVD (Hsu et al., ICLR 2022): rows weighted by the accumulated
  squared gradients of the task loss before the SVD, un-weighted after.
- :mod:`.activations`: ASVD-style input scaling and SVD-LLM-style whitening from the inputs the
  matrices see on calibration data; the SVD is taken of W·S and S undone after.
"""

from .activations import input_statistics, input_transforms
from .fwsvd import fisher_row_importance
from .svd import factor_model, uniform_rank

__all__ = ["factor_model", "fisher_row_importance", "input_statistics", "input_transforms", "uniform_rank"]
