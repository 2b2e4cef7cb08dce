"""dim-ssl: Deep InfoMax (Hjelm et al., ICLR 2019) as a plugin for PyTorch self-supervised learning.

Public API (see docs/design.md):
    mi_lower_bound(scores, estimator)   JSD / InfoNCE / DV lower bounds on MI, in nats
    TimmEncoder(name, global_dim, ...)  any timm backbone as a DIM encoder (feature map, y)
    PaperEncoder(global_dim, ...)       the paper's 32x32 encoder, with the same interface
    DIMEncoder, EncoderOutput           that interface (a Protocol) and the result of encode(x)
    FEATURE_POSITIONS                   "conv", "fc", "y", "pool": where features(x, p) reads
    DIMHead(local_channels, global_dim, ...)  the DIM objective for any training loop
    gather_with_grad(tensor)            every data-parallel rank's rows, with gradients
"""

from dim_ssl.distributed import gather_with_grad
from dim_ssl.encoder import TimmEncoder
from dim_ssl.encoder_protocol import FEATURE_POSITIONS, DIMEncoder, EncoderOutput
from dim_ssl.estimators import mi_lower_bound
from dim_ssl.head import PRESETS, DIMHead, DIMOutput
from dim_ssl.paper_encoder import PaperEncoder
from dim_ssl.prior import PriorDiscriminator, PriorMatching

__all__ = [
    "DIMEncoder",
    "DIMHead",
    "DIMOutput",
    "EncoderOutput",
    "FEATURE_POSITIONS",
    "PRESETS",
    "PriorDiscriminator",
    "PriorMatching",
    "PaperEncoder",
    "TimmEncoder",
    "gather_with_grad",
    "mi_lower_bound",
]

__version__ = "0.1.0"
