"""The jobs ``rankdyna`` runs around the library: data, objectives, one runner, reports and plots.

Nothing in :mod:`peft_rankdyna` (the tuner and the compact model a PEFT user imports) imports this
package; it imports the library. ``compress(CompressSettings(...))`` is the one runner: an
:mod:`~peft_rankdyna.jobs.objectives` entry says what is trained for and how it is scored.
"""

from .runner import compress
from .settings import CompressSettings

__all__ = ["CompressSettings", "compress"]
