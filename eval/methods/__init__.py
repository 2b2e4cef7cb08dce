"""Pretraining methods: one base, one file per method, a registry by name.

- :mod:`eval.methods.base`: :class:`MethodModule`, the LightningModule every method extends;
- :mod:`eval.methods.two_view`: :class:`TwoViewMethod`, lightly's two-view transforms;
- one file per method: :mod:`~eval.methods.dim`, :mod:`~eval.methods.mvdim` (multi-view DIM),
  :mod:`~eval.methods.simclr`, :mod:`~eval.methods.simclr_dim` (SimCLR + DIM's local term),
  :mod:`~eval.methods.moco`, :mod:`~eval.methods.moco_dim` (MoCo + DIM's local term),
  :mod:`~eval.methods.byol`;
- :mod:`eval.methods.registry`: ``method.name`` -> class, and each method's configuration
  section read from its constructor; :mod:`eval.methods.encoders`: the encoder factory.

Importing this package registers every method below.
"""

from eval.methods.base import MethodModule, StepOutput
from eval.methods.byol import BYOL
from eval.methods.dim import DIM
from eval.methods.moco import MoCo
from eval.methods.moco_dim import MoCoDIM
from eval.methods.mvdim import MultiViewDIM
from eval.methods.registry import METHODS, build_method, get_method, method_schema, register_method
from eval.methods.simclr import SimCLR
from eval.methods.simclr_dim import SimCLRDIM
from eval.methods.two_view import TwoViewMethod

__all__ = [
    "BYOL",
    "DIM",
    "METHODS",
    "MethodModule",
    "MoCo",
    "MoCoDIM",
    "MultiViewDIM",
    "SimCLR",
    "SimCLRDIM",
    "StepOutput",
    "TwoViewMethod",
    "build_method",
    "get_method",
    "method_schema",
    "register_method",
]
