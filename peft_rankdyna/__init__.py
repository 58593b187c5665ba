"""peft-rankdyna: RankDyna (Hua et al., Findings of EMNLP 2023) as a PEFT method.

Importing this package registers RankDyna with PEFT, so ``peft.get_peft_model(model,
RankDynaConfig(...))`` and ``PeftModel.from_pretrained`` work like for any built-in method; it also
teaches transformers' Auto classes the compact model (``import rankdyna_exporters`` teaches Optimum's
ONNX exporter). The jobs the ``rankdyna`` CLI runs live in :mod:`peft_rankdyna.jobs`.
"""

from .allocator import Allocation, allocate
from .callback import RankDynaCallback
from .compact import AutoCompactModel
from .config import RankDynaConfig
from .layer import RankDynaLayer
from .model import RankDynaModel
from .registry import RANKDYNA_PEFT_TYPE, register_compact_model, register_rankdyna
from .trainer import RankDynaTrainer

register_rankdyna(RankDynaConfig, RankDynaModel)
register_compact_model()

__version__ = "0.1.0"

__all__ = [
    "RANKDYNA_PEFT_TYPE",
    "Allocation",
    "AutoCompactModel",
    "RankDynaCallback",
    "RankDynaConfig",
    "RankDynaLayer",
    "RankDynaModel",
    "RankDynaTrainer",
    "allocate",
]
