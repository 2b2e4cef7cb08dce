"""gather_distributed=True: two gloo processes under DDP equal one process on the whole batch,
for every registered estimator (with AMDIM's score clip and penalty, and across two views as
the multi-view DIM scores them); and
dim_ssl.gather_with_grad gathers rows of unequal counts."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dim_ssl
from dim_ssl import DIMHead
from dim_ssl.estimators import ESTIMATORS

BATCH, CHANNELS, GLOBAL_DIM = 8, 5, 4
CONFIGS = {
    **{name: {"estimator": name} for name in ESTIMATORS},
    # Memory-bounded scoring: local blocks of one candidate image, global blocks of 6 and 2.
    **{f"{name}_chunked": {"estimator": name, "max_scores_in_memory": 24} for name in ESTIMATORS},
    # AMDIM's stabilisers, blockwise: a clip that bends the larger of these small scores (|s| up to
    # 0.2), and each rank's penalty a mean over its own summaries' scores of all ranks' inputs.
    "dv_stabilised_chunked": {"estimator": "dv", "max_scores_in_memory": 24, "score_clip": 0.05, "score_penalty": 1.0},
    # The multi-view DIM's objective (eval/methods/mvdim.py): each view's map against the other
    # view's summary, the positive being the same image across views.
    "infonce_cross_view": {"estimator": "infonce", "cross_view": True},
}


class TinyDIM(nn.Module):
    """Encoder (conv + pooled linear, no BatchNorm) and head in one module, as DDP wraps them."""

    def __init__(self, gather: bool, cross_view: bool = False, **head_kwargs) -> None:
        super().__init__()
        self.cross_view = cross_view
        self.conv = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.to_y = nn.Linear(CHANNELS, GLOBAL_DIM)
        self.head = DIMHead(
            CHANNELS,
            GLOBAL_DIM,
            alpha=0.5,
            beta=1.0,
            prior=None,
            gamma=0.0,
            gather_distributed=gather,
            hidden_dim=16,
            embed_dim=8,
            **head_kwargs,
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = torch.relu(self.conv(x))
        return feature_map, self.to_y(feature_map.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cross_view:
            return self.head(*self.encode(x)).loss
        (map_a, y_a), (map_b, y_b) = self.encode(x), self.encode(x.flip(-1))  # two views of each image
        return (self.head(map_a, y_b).loss + self.head(map_b, y_a).loss) / 2


def make_inputs() -> tuple[dict, torch.Tensor]:
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in TinyDIM(gather=False).state_dict().items()}
    return state, torch.randn(BATCH, 3, 4, 4)


def single_process(config: str) -> tuple[float, dict[str, torch.Tensor]]:
    state, x = make_inputs()
    model = TinyDIM(gather=False, **CONFIGS[config])
    model.load_state_dict(state)
    loss = model(x)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _worker(rank: int, world_size: int, port: int, config: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        state, x = make_inputs()
        model = TinyDIM(gather=True, **CONFIGS[config])
        model.load_state_dict(state)
        ddp = nn.parallel.DistributedDataParallel(model)
        shard = BATCH // world_size
        loss = ddp(x[rank * shard : (rank + 1) * shard])
        loss.backward()  # DDP averages gradients over ranks here
        losses = [torch.zeros(()) for _ in range(world_size)]
        dist.all_gather(losses, loss.detach())
        torch.save(
            {
                "mean_loss": torch.stack(losses).mean().item(),
                "grads": {name: p.grad.clone() for name, p in model.named_parameters()},
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_two_gloo_ranks_equal_one_process_on_the_whole_batch(config, tmp_path):
    expected_loss, expected_grads = single_process(config)
    mp.spawn(_worker, args=(2, free_port(), config, str(tmp_path)), nprocs=2, join=True)
    largest = 0.0
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["mean_loss"] == pytest.approx(expected_loss, abs=1e-5)
        for name, grad in expected_grads.items():
            largest = max(largest, (result["grads"][name] - grad).abs().max().item())
    print(f"{config}: largest gradient difference to one process {largest:.2e}")
    assert largest < 1e-5


def test_without_process_group_gather_is_the_identity():
    x = torch.randn(3, 2)
    gathered, offset = dim_ssl.gather_with_grad(x)
    assert gathered is x and offset == 0


def rows_of(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r's validation rows: 3 + r feature rows (unequal counts) and their integer labels."""
    count = 3 + rank
    features = torch.arange(count * 2, dtype=torch.float32).view(count, 2) + 100 * rank
    return features, torch.arange(count) + 10 * rank


def _gather_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        features, labels = rows_of(rank)
        with torch.no_grad():
            gathered, offset = dim_ssl.gather_with_grad(features)
        gathered_labels, label_offset = dim_ssl.gather_with_grad(labels)
        # With gradients: each rank's loss weighs every gathered row by its rank + 1.
        leaf = features.clone().requires_grad_(True)
        weighted, _ = dim_ssl.gather_with_grad(leaf)
        (weighted.sum() * (rank + 1)).backward()
        torch.save(
            {
                "features": gathered,
                "offset": offset,
                "labels": gathered_labels,
                "label_offset": label_offset,
                "grad": leaf.grad,
            },
            os.path.join(out_dir, f"gather{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_gathers_unequal_rows_with_and_without_gradients(tmp_path):
    mp.spawn(_gather_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    expected_features = torch.cat([rows_of(r)[0] for r in range(2)])
    expected_labels = torch.cat([rows_of(r)[1] for r in range(2)])
    for rank in range(2):
        result = torch.load(tmp_path / f"gather{rank}.pt", weights_only=True)
        assert torch.equal(result["features"], expected_features)  # 3 + 4 rows, no padding left
        assert torch.equal(result["labels"], expected_labels)
        assert result["offset"] == result["label_offset"] == 3 * rank
        # Every row enters both ranks' losses, with weights 1 and 2: its gradient is 1 + 2.
        assert torch.equal(result["grad"], torch.full_like(rows_of(rank)[0], 3.0))
