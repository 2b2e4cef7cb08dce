"""Deep InfoMax (Hjelm et al., ICLR 2019) as a pretraining method of the harness.

One training step is the loop of ``dim_ssl.DIMHead``'s docstring: encode one view per image,
score the summary against the feature map, one loss (the prior adversary trains inside it).
The head's arguments are the ``method.head`` section of a run configuration, read from
``DIMHead``'s own signature, so a new head option is configurable without touching this file.

Why this LightningModule lives in the harness and not in ``dim_ssl``: the plugin stays plain
PyTorch + timm (as lightly keeps its losses and heads framework-free), so a plain loop or any
Lightning module can use ``DIMHead``; what a Lightning pretraining run adds (online monitors,
optimizer groups, logging, gathering) is shared by every method in
:class:`~eval.methods.base.MethodModule`.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

from torch import Tensor

from dim_ssl import DIMEncoder, DIMHead, DIMOutput
from eval.methods.base import MethodModule, StepOutput, by_position
from eval.methods.registry import register_method

__all__ = ["DIM", "HEAD_DEFAULTS", "LOCAL_HEAD_DEFAULTS", "build_head", "companion_head", "head_terms", "term_values"]


def _head_defaults() -> dict[str, Any]:
    """``DIMHead``'s keyword arguments and defaults, but negatives gathered across DDP ranks
    (a no-op on one process). DIM(L): alpha 0, beta 1, gamma 0.1 (the head's defaults)."""
    skip = {"self", "local_channels", "global_dim"}
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(DIMHead.__init__).parameters.items()
        if name not in skip and parameter.default is not inspect.Parameter.empty
    }
    defaults["gather_distributed"] = True
    return defaults


#: The ``method.head`` section: every ``DIMHead`` keyword argument with its default.
HEAD_DEFAULTS: dict[str, Any] = _head_defaults()


@register_method("dim")
class DIM(MethodModule):
    """Deep InfoMax (Hjelm et al., ICLR 2019): one view, local/global MI and a prior.

    Args:
        encoder: A :class:`dim_ssl.DIMEncoder`; all of it is trained (backbone and summary MLP).
        num_classes, image_shape, **common: See :class:`~eval.methods.base.MethodModule`.
        head: Keyword arguments of :class:`dim_ssl.DIMHead` (missing ones take
            :data:`HEAD_DEFAULTS`): estimator, critic, negatives, alpha, beta, gamma, prior, ...

    Attributes:
        head: The ``DIMHead``; one optimizer trains encoder, critics and prior adversary.

    Logged terms: ``train_local_mi``, ``train_global_mi`` and ``train_prior_loss`` for the
    terms the head computes (a term with weight 0 is not computed and not logged).

    Example::

        encoder = dim_ssl.TimmEncoder("resnet18", global_dim=64, in_chans=1)
        model = DIM(encoder, num_classes=10, image_shape=(1, 32, 32), head={"estimator": "infonce"})
        trainer = pl.Trainer(max_epochs=10, accelerator="auto", devices=2, strategy="ddp")
        trainer.fit(model, train_loader, val_loader)   # batches (images, labels), one view each
    """

    # The paper's code: Adam, lr 1e-4, betas (0.5, 0.999), no schedule.
    recipe = {"optimizer": {"name": "adam", "lr": 1.0e-4, "betas": [0.5, 0.999]}}

    def __init__(
        self,
        encoder: DIMEncoder,
        num_classes: int,
        image_shape: Sequence[int],
        *,
        head: Mapping[str, Any] = HEAD_DEFAULTS,
        **common: Any,
    ) -> None:
        super().__init__(encoder, num_classes, image_shape, **common)
        self.head = build_head(encoder, head)
        self.terms = head_terms(self.head)
        self.track_terms(*self.terms)

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        encoded = self.encoder.encode(views[0])
        out = self.head(encoded.feature_map, encoded.y)
        # Every position from the one training pass: the online classifier needs no second one
        # (and BatchNorm sees each batch once).
        return StepOutput(out.loss, features=by_position(encoded), terms=term_values(out, self.terms))


def build_head(encoder: DIMEncoder, head: Mapping[str, Any]) -> DIMHead:
    """A ``DIMHead`` for ``encoder`` from a ``method.head`` section (missing keys: :data:`HEAD_DEFAULTS`).

    Raises:
        ValueError: A key ``DIMHead`` does not take (named with the ones it takes), or a value
            it refuses.
    """
    unknown = sorted(set(head) - set(HEAD_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown head argument(s) {', '.join(unknown)}; DIMHead takes {', '.join(HEAD_DEFAULTS)}")
    return DIMHead(encoder.feature_channels, encoder.global_dim, **{**HEAD_DEFAULTS, **dict(head)})


#: DIM's head as another method's companion (SimCLR+DIM, MoCo+DIM): the local term alone
#: (alpha 0, beta 1, no prior).
LOCAL_HEAD_DEFAULTS: dict[str, Any] = {**HEAD_DEFAULTS, "alpha": 0.0, "beta": 1.0, "gamma": 0.0}


def companion_head(encoder: DIMEncoder, dim_weight: float, head: Mapping[str, Any]) -> tuple[float, DIMHead]:
    """DIM's term added to another objective: the checked weight lam and the head (missing keys:
    :data:`LOCAL_HEAD_DEFAULTS`).

    Raises:
        ValueError: A negative weight, or a head argument ``DIMHead`` refuses.
    """
    if not dim_weight >= 0:
        raise ValueError(f"dim_weight must be a weight >= 0; got {dim_weight}")
    return float(dim_weight), build_head(encoder, {**LOCAL_HEAD_DEFAULTS, **dict(head)})


def head_terms(head: DIMHead) -> tuple[str, ...]:
    """The terms ``head`` computes (a term with weight 0 is NaN by design and not logged)."""
    parts = {"local_mi": head.local_critic, "global_mi": head.global_critic, "prior_loss": head.prior_matching}
    return tuple(name for name, part in parts.items() if part is not None)


def term_values(out: DIMOutput, terms: Sequence[str]) -> dict[str, Tensor]:
    """The logged values of ``terms`` from a head's output."""
    values = {"local_mi": out.local_mi, "global_mi": out.global_mi, "prior_loss": out.prior_loss}
    return {name: values[name] for name in terms}
