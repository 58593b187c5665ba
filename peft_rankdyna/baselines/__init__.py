"""Static low-rank baselines that share RankDyna's budget accounting and compact output format.

- :mod:`.svd`: truncated SVD of every target matrix at one uniform rank that meets the budget.
- :mod:`.fwsvd`: Fisher-weighted SVD (Hsu et al., ICLR 2022): rows weighted by the accumulated
  squared gradients of the task loss before the SVD, un-weighted after.
"""

from .fwsvd import fisher_row_importance
from .svd import factor_model, uniform_rank

__all__ = ["factor_model", "fisher_row_importance", "uniform_rank"]
