"""Throughput and memory of DIM's training step against lightly's SimCLR and MoCo.

``dim-ssl bench`` (docs/design.md, "Performance protocol") times full training steps (forward,
backward, optimizer step) of every method in one process, on the same timm backbone, batch
and input size, after warm-up, alternating the methods over several rounds and reporting
medians. Augmentation and data loading are left out for every method (batches are random
tensors made once), and so is the baselines' online linear classifier: what is timed is the
method itself. DIM needs one view per image, SimCLR and MoCo two.

Cases (``CASES``), each a registered method of :mod:`eval.methods` with its arguments:

- ``backbone``: the floor for a one-view method: backbone forward on one view, a trivial loss
  (mean of the pooled features), backward, optimizer step.
- ``dim_l_jsd_dot``, ``dim_l_infonce_dot``: DIM(L) (alpha=0, beta=1, gamma=0.1), encode-and-dot
  critic, all in-batch negatives; ``dim_l_jsd_concat``: concat-and-convolve with shuffled
  negatives; ``dim_all_terms``: alpha=0.5, beta=1, gamma=0.1 (global, local and prior terms).
  All with ``dim_ssl.TimmEncoder`` and ``dim_ssl.DIMHead`` at their defaults.
- ``simclr``: two views, lightly's ``SimCLRProjectionHead`` and ``NTXentLoss``.
- ``moco``: lightly's MoCo example: query on one view, key on the other through a momentum
  encoder, ``MoCoProjectionHead``, ``NTXentLoss`` with a 4096-key memory bank.
- ``moco_symmetric``: the same, both views as query and key (lightly's CIFAR-10 benchmark,
  the default of ``eval.methods.MoCo``).
- ``byol`` (not in the default list): lightly's BYOL parts, momentum target, no negatives.

Every case is built exactly as ``dim-ssl pretrain`` builds the method and timed on its
``training_loss``; every one trains with the same optimizer (SGD, momentum 0.9, or Adam with
``--optimizer adam``) over the parameters its loss trains.

Peak memory is measured per method on one extra, untimed step after the timing, with the
previous step's gradients freed before it (what is counted is activations, gradients and
workspaces; not weights, optimizer state or the batch):

- on CUDA, ``torch.cuda.max_memory_allocated`` during the step minus the memory allocated
  before it;
- on CPU, the peak of live tensor bytes during the step, above the level before it, from the
  allocation events of ``torch.profiler`` (``profile_memory=True``): the CPU counterpart of
  ``max_memory_allocated``; and, as a cross-check (unless ``--no-rss``), the peak resident set
  size of a fresh process running the method: ``VmHWM`` during a step after warm-up minus
  ``VmRSS`` before it, with glibc told to return freed memory (``MALLOC_MMAP_THRESHOLD_=65536``).
  RSS counts only the pages a step touches, so it can be lower than the tensor peak.

``memory_sweep`` (``--sweep-memory``) measures the DIM head alone (local InfoNCE, dot critic,
all negatives) as N * M^2 grows: peak tensor memory and time of forward and backward with
all scores at once, with ``max_scores_in_memory`` (chunked scoring) and with
``num_locations`` (location sampling).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

import dim_ssl
from eval.experiments.memory import reset_peak_rss, rss_mb
from eval.methods import get_method
from eval.methods.encoders import build_encoder

FLOOR = "backbone"
SIMCLR = "simclr"


@dataclass(frozen=True)
class BenchCase:
    """One timed configuration: a registered method (``eval.methods``) with its arguments."""

    description: str
    method: str | None  # None: the backbone floor
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def views(self) -> int:
        return 1 if self.method is None else get_method(self.method).num_views


def _dim(description: str, **head: Any) -> BenchCase:
    return BenchCase(description, "dim", {"head": head})


CASES: dict[str, BenchCase] = {
    FLOOR: BenchCase("backbone only, one view, trivial loss on pooled features (floor)", None),
    "dim_l_jsd_dot": _dim("DIM(L) JSD, dot critic, all negatives", estimator="jsd"),
    "dim_l_infonce_dot": _dim("DIM(L) InfoNCE, dot critic, all (N-1)M^2 negatives", estimator="infonce"),
    "dim_l_jsd_concat": _dim(
        "DIM(L) JSD, concat critic, shuffled negatives", estimator="jsd", critic="concat", negatives="shuffle"
    ),
    "dim_all_terms": _dim("DIM JSD dot, alpha=0.5 beta=1 gamma=0.1", estimator="jsd", alpha=0.5),
    # Not in the default list: the narrower critic the performance notes discuss.
    "dim_l_jsd_dot_w128": _dim(
        "DIM(L) JSD dot, critic hidden=embed=128", estimator="jsd", hidden_dim=128, embed_dim=128
    ),
    SIMCLR: BenchCase("lightly SimCLR: 2 views, SimCLRProjectionHead + NTXentLoss", "simclr"),
    "moco": BenchCase(
        "lightly MoCo: 2 views, momentum encoder + MoCoProjectionHead + 4096-key bank", "moco", {"symmetric": False}
    ),
    "moco_symmetric": BenchCase("lightly MoCo, symmetric loss (both views query and key)", "moco"),
    "byol": BenchCase("lightly BYOL: 2 views, momentum target + projection and prediction heads", "byol"),
    "mvdim": BenchCase(
        "multi-view DIM: 2 views, InfoNCE dot critic, each map against the other summary",
        "mvdim",
        {"head": {"estimator": "infonce"}},
    ),
    "mvdim_l2l": BenchCase(
        "multi-view DIM + local-to-local term (weight 1), InfoNCE dot critic",
        "mvdim",
        {"head": {"estimator": "infonce"}, "local_to_local": 1.0},
    ),
    "mvdim_two_scales": BenchCase(
        "multi-view DIM + a second local scale (the next stage), InfoNCE dot critic",
        "mvdim",
        {"head": {"estimator": "infonce"}, "second_stage": -1},
    ),
    "simclr_dim": BenchCase(
        "SimCLR + DIM's local term (InfoNCE dot critic), lam = 1", "simclr+dim", {"head": {"estimator": "infonce"}}
    ),
    "moco_dim": BenchCase(
        "MoCo (symmetric) + DIM's local term (InfoNCE dot critic), lam = 1",
        "moco+dim",
        {"head": {"estimator": "infonce"}},
    ),
}
DEFAULT_CASES = (
    FLOOR,
    "dim_l_jsd_dot",
    "dim_l_infonce_dot",
    "dim_l_jsd_concat",
    "dim_all_terms",
    SIMCLR,
    "moco",
    "moco_symmetric",
)


@dataclass
class BenchConfig:
    """What ``run_bench`` measures; the command line's options one to one."""

    backbone: str = "resnet18"  # a timm model, or "paper" (the DIM paper's 32x32 encoder)
    small_input: bool = False  # timm ResNets: the small-image stem
    batch_size: int = 256
    image_size: int = 32
    channels: int = 3
    device: str = "cpu"
    rounds: int = 5
    steps: int = 3
    warmup: int = 2
    threads: int | None = None
    optimizer: str = "sgd"
    methods: tuple[str, ...] = DEFAULT_CASES
    memory: bool = True
    rss: bool = True
    seed: int = 0
    global_dim: int = 64

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in CASES]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; expected some of {', '.join(CASES)}")
        for name in ("batch_size", "image_size", "channels", "rounds", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: DIM and the contrastive losses need in-batch negatives")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0; got {self.warmup}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {self.optimizer!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but torch sees no CUDA device")


# --------------------------------------------------------------------------------------------
# The methods: a module, the parameters its loss trains, and its loss on a list of views


@dataclass
class Trainee:
    module: nn.Module
    parameters: list[nn.Parameter]
    loss: Callable[[Sequence[Tensor]], Tensor]
    source: str


def build_case(name: str, config: BenchConfig) -> Trainee:
    """The model of one case on a fresh ``TimmEncoder`` (seeded, so every case starts alike).

    Methods come from the registry, exactly as ``dim-ssl pretrain`` builds them; what is timed
    is their ``training_loss`` (the online classifier and logging are left out).
    """
    torch.manual_seed(config.seed)
    section = {
        "name": config.backbone,
        "global_dim": config.global_dim,
        "hidden_dim": 1024,
        "feature_stage": None,
        "small_input": config.small_input,
        "kwargs": {},
    }
    encoder = build_encoder(section, config.channels, config.image_size)
    case = CASES[name]
    if case.method is None:
        summary = set(encoder.summary_parameters())
        return Trainee(
            encoder,
            [p for p in encoder.parameters() if p not in summary],
            lambda views: encoder.pool(views[0]).mean(),
            "backbone (pooled features)",
        )
    method = get_method(case.method)
    module = method(
        encoder,
        num_classes=10,
        image_shape=(config.channels, config.image_size, config.image_size),
        batch_size=config.batch_size,
        **case.arguments,
    )
    online = set(module.online_classifier.parameters())
    parameters = [p for p in module.parameters() if p.requires_grad and p not in online]
    return Trainee(
        module, parameters, lambda views: module.training_loss(views).loss, f"eval.methods.{method.__name__}"
    )


def _optimizer(parameters: list[nn.Parameter], config: BenchConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=1e-4)
    return torch.optim.SGD(parameters, lr=1e-3, momentum=0.9)


def _batch(views: int, config: BenchConfig, device: torch.device) -> list[Tensor]:
    generator = torch.Generator().manual_seed(config.seed + 1)
    shape = (config.batch_size, config.channels, config.image_size, config.image_size)
    return [torch.randn(shape, generator=generator).to(device) for _ in range(views)]


class Runner:
    """One method ready to step: model on the device, optimizer, its batch of views."""

    def __init__(self, name: str, config: BenchConfig, device: torch.device) -> None:
        self.name = name
        self.trainee = build_case(name, config)
        self.trainee.module.to(device).train()
        self.optimizer = _optimizer(self.trainee.parameters, config)
        self.views = _batch(CASES[name].views, config, device)
        self.device = device

    def clear_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> float:
        self.clear_gradients()
        loss = self.trainee.loss(self.views)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def timed(self, steps: int) -> tuple[float, float]:
        """Wall-clock and process CPU seconds for ``steps`` training steps."""
        _sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        return time.perf_counter() - start, time.process_time() - cpu_start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# Memory measurements


@contextlib.contextmanager
def _quiet_stderr():
    """Silences the profiler backend's start/stop lines, which it prints from C++ to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_tensor_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak live tensor memory while ``fn()`` runs, in bytes above the level when it starts.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the running sum of the allocation and
    free events that ``torch.profiler`` records with ``profile_memory=True``, at its maximum
    (None if this torch's profiler does not expose them). The profiler does not see frees of
    memory allocated before it started, so free what ``fn`` would free (old gradients)
    before calling this.
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    try:  # a private enum of torch's profiler: absent in some versions
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:  # pragma: no cover - older or newer torch
        return None
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    if not events:
        return None
    running = peak = 0
    for _, size in sorted(events):
        running += size
        peak = max(peak, running)
    return int(peak)


def rss_probe(name: str, config: BenchConfig) -> dict[str, Any]:
    """In this (fresh) process: build one method, warm up, then the peak RSS increase of one step."""
    if config.threads:
        torch.set_num_threads(config.threads)
    runner = Runner(name, config, torch.device("cpu"))
    for _ in range(max(1, config.warmup)):
        runner.step()
    runner.clear_gradients()
    if not reset_peak_rss():  # VmHWM := the current RSS
        raise OSError("cannot reset the peak RSS (/proc/self/clear_refs)")
    before = rss_mb("VmRSS")
    runner.step()
    peak = rss_mb("VmHWM")
    if before is None or peak is None:
        raise OSError("VmRSS / VmHWM are not in /proc/self/status")
    return {"method": name, "rss_before_mib": before, "rss_peak_increase_mib": peak - before}


def _rss_in_fresh_process(name: str, config: BenchConfig) -> float | None:
    if not (sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    payload = json.dumps({**asdict(config), "methods": list(config.methods)})
    result = subprocess.run(
        [sys.executable, "-m", "eval.experiments.bench", "--rss-probe", name, payload],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(Path(__file__).resolve().parents[2]),  # the repository root
    )
    if result.returncode != 0:
        warnings.warn(f"RSS probe of {name} failed: {result.stderr.strip()[-500:]}", stacklevel=2)
        return None
    return float(json.loads(result.stdout.strip().splitlines()[-1])["rss_peak_increase_mib"])


# --------------------------------------------------------------------------------------------
# The bench


@dataclass
class MethodResult:
    method: str
    description: str
    views: int
    source: str
    images_per_s: float
    step_ms: float
    images_per_s_rounds: list[float]
    cpu_images_per_s: float = float("nan")
    ratio_to_simclr: float | None = None
    ratio_to_floor: float | None = None
    ratio_to_simclr_of_medians: float | None = None
    ratio_to_floor_of_medians: float | None = None
    cpu_ratio_to_simclr: float | None = None
    cpu_ratio_to_floor: float | None = None
    peak_memory_mib: float | None = None
    memory_ratio_to_floor: float | None = None
    peak_rss_mib: float | None = None
    parameters: int = 0
    final_loss: float = float("nan")


@dataclass
class BenchResult:
    config: dict[str, Any]
    environment: dict[str, Any]
    methods: list[MethodResult]
    memory_measure: str
    sweep: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "environment": self.environment,
            "memory_measure": self.memory_measure,
            "methods": {m.method: asdict(m) for m in self.methods},
            "sweep": self.sweep,
        }


def environment(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
            cpu = f"{names[0]} x {len(names)}" if names else cpu
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "lightly": _version("lightly"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        env["load_average_start"] = list(os.getloadavg())
    return env


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except Exception:
        return None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_bench(config: BenchConfig, log: Callable[[str], None] = _log) -> BenchResult:
    """Times every method of ``config.methods`` (rounds x steps, alternating) and measures memory."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    env = environment(device)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # baselines log without a Trainer

    runners: dict[str, Runner] = {}
    for name in config.methods:
        log(f"[bench] building {name} and warming up ({config.warmup} steps)")
        runner = runners[name] = Runner(name, config, device)
        for _ in range(config.warmup):
            runner.step()

    images = config.steps * config.batch_size
    rates: dict[str, list[float]] = {name: [] for name in config.methods}
    cpu_rates: dict[str, list[float]] = {name: [] for name in config.methods}
    order = list(config.methods)
    for round_index in range(config.rounds):
        # Rotate the order every round, so no method always runs right after the same other one.
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            wall, cpu = runners[name].timed(config.steps)
            rates[name].append(images / wall)
            cpu_rates[name].append(images / max(cpu, 1e-9))
        done = ", ".join(f"{n} {rates[n][-1]:.0f}" for n in order)
        log(f"[bench] round {round_index + 1}/{config.rounds} images/s: {done}")

    results = []
    for name in config.methods:
        runner = runners[name]
        rate = statistics.median(rates[name])
        results.append(
            MethodResult(
                method=name,
                description=CASES[name].description,
                views=CASES[name].views,
                source=runner.trainee.source,
                images_per_s=rate,
                step_ms=1000 * config.batch_size / rate,
                images_per_s_rounds=rates[name],
                cpu_images_per_s=statistics.median(cpu_rates[name]),
                parameters=sum(p.numel() for p in runner.trainee.parameters),
            )
        )

    if config.memory:
        for result in results:
            log(f"[bench] peak memory of one step: {result.method}")
            # From the state between steps with the gradients freed, as the step's first act
            # frees them: what is measured is what the step needs beyond weights, optimizer
            # state and the batch (activations, gradients, workspaces).
            runners[result.method].clear_gradients()
            peak = peak_tensor_bytes(runners[result.method].step, device)
            result.peak_memory_mib = None if peak is None else peak / 2**20
            result.final_loss = runners[result.method].step()
    else:
        for result in results:
            result.final_loss = runners[result.method].step()
    runners.clear()
    if config.rss and device.type == "cpu":
        for result in results:
            log(f"[bench] peak RSS in a fresh process: {result.method}")
            result.peak_rss_mib = _rss_in_fresh_process(result.method, config)

    # Ratios are medians over rounds of the ratio within each round: methods that ran side by
    # side saw the same machine load, which the ratio of two medians does not guarantee.
    def paired(a: list[float], b: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(a, b))

    by_name = {r.method: r for r in results}
    for result in results:
        name = result.method
        for reference, attribute in ((SIMCLR, "simclr"), (FLOOR, "floor")):
            if reference in by_name:
                setattr(result, f"ratio_to_{attribute}", paired(rates[name], rates[reference]))
                setattr(result, f"cpu_ratio_to_{attribute}", paired(cpu_rates[name], cpu_rates[reference]))
                setattr(
                    result, f"ratio_to_{attribute}_of_medians", result.images_per_s / by_name[reference].images_per_s
                )
        if FLOOR in by_name:
            floor = by_name[FLOOR]
            if result.peak_memory_mib is not None and floor.peak_memory_mib:
                result.memory_ratio_to_floor = result.peak_memory_mib / floor.peak_memory_mib
    with contextlib.suppress(OSError):
        env["load_average_end"] = list(os.getloadavg())
    measure = (
        "torch.cuda.max_memory_allocated during one step (gradients freed before it) minus the memory "
        "allocated before it: activations, gradients and workspaces, not weights, optimizer state or batch"
        if device.type == "cuda"
        else "peak live tensor bytes during one step (gradients freed before it) above the level before it, "
        "from torch.profiler allocation events (profile_memory=True): activations, gradients and "
        "workspaces, not weights, optimizer state or batch"
    )
    if config.rss and device.type == "cpu":
        measure += (
            "; RSS: peak resident set of a fresh process during one step after warm-up, above its RSS "
            "before the step (VmHWM reset via /proc/self/clear_refs, MALLOC_MMAP_THRESHOLD_=65536)"
        )
    return BenchResult({**asdict(config), "methods": list(config.methods)}, env, results, measure)


# --------------------------------------------------------------------------------------------
# Memory sweep: the DIM head alone as N * M^2 grows


@dataclass
class SweepConfig:
    batch_size: int = 128
    channels: int = 64
    global_dim: int = 64
    map_sizes: tuple[int, ...] = (4, 8, 16, 32, 64, 89)
    estimator: str = "infonce"
    max_scores_in_memory: int = 2**22
    num_locations: int = 1024
    max_unchunked_gib: float = 6.0
    device: str = "cpu"
    seed: int = 0


def _unchunked_estimate_bytes(n: int, locations: int, head: dim_ssl.DIMHead) -> float:
    """Rough bytes of one unchunked step: about 3 copies of the scores, the critic's activations."""
    critic = head.local_critic
    hidden = critic.input_net.branch[0].out_channels
    width = hidden + head.local_channels
    rows = n * locations
    return 4.0 * (3 * rows * n + rows * (2 * hidden + 2 * width))


def _clear_gradients(head: nn.Module, *inputs: Tensor) -> None:
    for tensor in inputs:
        tensor.grad = None
    head.zero_grad(set_to_none=True)


def _local_term_step(head: dim_ssl.DIMHead, feature_map: Tensor, y: Tensor) -> float:
    out = head(feature_map, y)
    out.loss.backward()
    return float(out.local_mi)


def memory_sweep(config: SweepConfig, log: Callable[[str], None] = _log) -> list[dict[str, Any]]:
    """Peak tensor memory and time of the local term's forward + backward, per map size and mode.

    Modes: ``all`` (every score at once), ``chunked`` (``max_scores_in_memory``) and
    ``sampled`` (``num_locations`` random locations, every score at once). Unchunked runs
    whose rough estimate exceeds ``max_unchunked_gib`` are skipped (and say so).
    """
    device = torch.device(config.device)
    modes = {
        "all": {},
        "chunked": {"max_scores_in_memory": config.max_scores_in_memory},
        "sampled": {"num_locations": config.num_locations},
    }
    rows: list[dict[str, Any]] = []
    for size in config.map_sizes:
        locations = size * size
        for mode, extra in modes.items():
            if mode == "sampled" and locations <= config.num_locations:
                continue
            torch.manual_seed(config.seed)
            head = dim_ssl.DIMHead(
                config.channels, config.global_dim, estimator=config.estimator, prior=None, gamma=0.0, **extra
            ).to(device)
            n = config.batch_size
            row: dict[str, Any] = {
                "mode": mode,
                "batch": n,
                "map": size,
                "channels": config.channels,
                "N_M2": n * locations,
                "scores": n * n * min(locations, config.num_locations if mode == "sampled" else locations),
                "max_scores_in_memory": extra.get("max_scores_in_memory"),
                "num_locations": extra.get("num_locations"),
            }
            estimate = _unchunked_estimate_bytes(n, locations, head)
            if mode == "all" and estimate > config.max_unchunked_gib * 2**30:
                row.update(skipped=f"estimated {estimate / 2**30:.1f} GiB > {config.max_unchunked_gib} GiB")
                rows.append(row)
                log(f"[sweep] M={size} {mode}: skipped ({row['skipped']})")
                continue
            feature_map = torch.rand(n, config.channels, size, size, device=device, requires_grad=True)
            y = torch.randn(n, config.global_dim, device=device, requires_grad=True)

            clear = partial(_clear_gradients, head, feature_map, y)
            step = partial(_local_term_step, head, feature_map, y)

            _sync(device)
            start = time.perf_counter()
            value = step()
            _sync(device)
            row["seconds"] = time.perf_counter() - start
            # Gradients freed before, not during, the measured step: the profiler cannot credit
            # frees of memory allocated before it started.
            clear()
            peak = peak_tensor_bytes(step, device)
            row["peak_memory_mib"] = None if peak is None else peak / 2**20
            row["local_mi"] = value
            rows.append(row)
            log(
                f"[sweep] M={size} N*M^2={n * locations} {mode}: {row['seconds']:.2f} s, "
                f"{row['peak_memory_mib']:.0f} MiB"
            )
            del feature_map, y, head, clear, step
    return rows


# --------------------------------------------------------------------------------------------
# Output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(result: BenchResult) -> str:
    config = result.config
    header = (
        f"{config['backbone']} {config['image_size']}x{config['image_size']}x{config['channels']}, "
        f"batch {config['batch_size']}, {result.environment['device']}, "
        f"{result.environment['torch_threads']} threads, {config['rounds']} rounds x {config['steps']} steps "
        f"(median), optimizer {config['optimizer']}"
    )
    columns = [
        "method",
        "views",
        "images/s",
        "ms/step",
        "x SimCLR",
        "x floor",
        "CPU x SimCLR",
        "CPU x floor",
        "peak MiB",
        "mem x floor",
        "RSS MiB",
    ]
    lines = [
        [
            r.method,
            str(r.views),
            _fmt(r.images_per_s, ".1f"),
            _fmt(r.step_ms, ".0f"),
            _fmt(r.ratio_to_simclr, ".2f"),
            _fmt(r.ratio_to_floor, ".2f"),
            _fmt(r.cpu_ratio_to_simclr, ".2f"),
            _fmt(r.cpu_ratio_to_floor, ".2f"),
            _fmt(r.peak_memory_mib, ".0f"),
            _fmt(r.memory_ratio_to_floor, ".2f"),
            _fmt(r.peak_rss_mib, ".0f"),
        ]
        for r in result.methods
    ]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    rule = "  ".join("-" * w for w in widths)
    out = [
        header,
        rule,
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths))),
        rule,
    ]
    out += [
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))) for line in lines
    ]
    out += [
        rule,
        "x SimCLR, x floor: median over rounds of the images/s ratio within the round; CPU x: the same "
        "with images per process CPU-second (less sensitive to other load on the machine)",
        f"peak MiB: {result.memory_measure}",
    ]
    return "\n".join(out)


def format_markdown(result: BenchResult) -> str:
    lines = [
        "| method | views | images/s | ms/step | x SimCLR | x floor | CPU x SimCLR | CPU x floor | peak MiB "
        "| mem x floor | RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.methods:
        lines.append(
            f"| {r.method} | {r.views} | {_fmt(r.images_per_s, '.1f')} | {_fmt(r.step_ms, '.0f')} | "
            f"{_fmt(r.ratio_to_simclr, '.2f')} | {_fmt(r.ratio_to_floor, '.2f')} | "
            f"{_fmt(r.cpu_ratio_to_simclr, '.2f')} | {_fmt(r.cpu_ratio_to_floor, '.2f')} | "
            f"{_fmt(r.peak_memory_mib, '.0f')} | {_fmt(r.memory_ratio_to_floor, '.2f')} | "
            f"{_fmt(r.peak_rss_mib, '.0f')} |"
        )
    return "\n".join(lines)


def format_sweep(rows: list[dict[str, Any]]) -> str:
    chunk = next((row["max_scores_in_memory"] for row in rows if row.get("max_scores_in_memory")), None)
    sample = next((row["num_locations"] for row in rows if row.get("num_locations")), None)
    out = [
        "DIM head alone (local InfoNCE, dot critic, all (N-1)M^2 negatives, critic 512 wide, "
        f"{rows[0]['channels'] if rows else '?'} channels), forward + backward; peak = live tensor bytes",
        f"all: every score at once; chunked: max_scores_in_memory={chunk}; sampled: num_locations={sample}",
        f"{'mode':8} {'batch':>5} {'M':>4} {'N*M^2':>9} {'scores':>13} {'seconds':>8} {'peak MiB':>9}",
    ]
    for row in rows:
        tail = (
            f"{_fmt(row.get('seconds'), '.2f'):>8} {_fmt(row.get('peak_memory_mib'), '.0f'):>9}"
            if "skipped" not in row
            else f"  skipped: {row['skipped']}"
        )
        out.append(f"{row['mode']:8} {row['batch']:>5} {row['map']:>4} {row['N_M2']:>9} {row['scores']:>13,} {tail}")
    return "\n".join(out)


def write_outputs(result: BenchResult, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "bench.json", out_dir / "bench.csv", out_dir / "bench.md"]
    paths[0].write_text(json.dumps(result.to_json(), indent=2))
    with open(paths[1], "w", newline="") as handle:
        names = [k for k in asdict(result.methods[0]) if k != "images_per_s_rounds"] if result.methods else []
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for r in result.methods:
            writer.writerow(asdict(r))
    paths[2].write_text(format_markdown(result) + "\n")
    if result.sweep:
        sweep_path = out_dir / "memory_sweep.csv"
        keys = sorted(
            {k for row in result.sweep for k in row},
            key=lambda k: list(result.sweep[0]).index(k) if k in result.sweep[0] else 99,
        )
        with open(sweep_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(result.sweep)
        paths.append(sweep_path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.experiments.bench --rss-probe METHOD CONFIG_JSON``: the fresh-process RSS probe."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 3 and argv[0] == "--rss-probe":
        data = json.loads(argv[2])
        data["methods"] = tuple(data["methods"])
        config = BenchConfig(**data)
        warnings.filterwarnings("ignore")
        print(json.dumps(rss_probe(argv[1], replace(config, methods=(argv[1],)))))
        return 0
    print("use `dim-ssl bench` (this entry point only runs the RSS probe)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
