"""dim-ssl: Deep InfoMax (Hjelm et al., ICLR 2019) as a plugin for PyTorch self-supervised learning.

Public API (see DESIGN.md):
    mi_lower_bound(scores, estimator)   JSD / InfoNCE / DV lower bounds on MI, in nats
    TimmEncoder(name, global_dim, ...)  any timm backbone as a DIM encoder (feature map, y)
    DIMHead(local_channels, global_dim, ...)  the DIM objective for any training loop
"""

from dim_ssl.encoder import TimmEncoder
from dim_ssl.paper_encoder import PaperEncoder
from dim_ssl.estimators import mi_lower_bound
from dim_ssl.head import PRESETS, DIMHead, DIMOutput
from dim_ssl.prior import PriorDiscriminator, PriorMatching

__all__ = [
    "DIMHead",
    "DIMOutput",
    "PRESETS",
    "PriorDiscriminator",
    "PriorMatching",
    "PaperEncoder",
    "TimmEncoder",
    "mi_lower_bound",
]

__version__ = "0.1.0"
