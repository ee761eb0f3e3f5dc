"""Data-parallel training the way SageMaker provides it: hosts from SM_HOSTS, GPUs per host from
SM_NUM_GPUS, one process per device.

The toolkit starts ``train.py`` once per host. When the job spans more than one device, that
process becomes a launcher: it runs ``torch.distributed.run`` (torchrun) with one worker per
GPU (one per host on CPU), the first host as the rendezvous. Workers see RANK / WORLD_SIZE /
LOCAL_RANK and join a process group: NCCL on GPUs, gloo on CPUs. Only rank 0 writes outputs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
DEFAULT_PORT = "29500"


@dataclass(frozen=True)
class Topology:
    hosts: list[str]
    current_host: str
    gpus_per_host: int

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def procs_per_host(self) -> int:
        return max(self.gpus_per_host, 1)

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.procs_per_host


def topology_from_env(environ: dict[str, str] | None = None) -> Topology:
    env = os.environ if environ is None else environ
    hosts = json.loads(env.get("SM_HOSTS", "[]")) or ["localhost"]
    current = env.get("SM_CURRENT_HOST", hosts[0])
    gpus = int(env.get("SM_NUM_GPUS", torch.cuda.device_count()))
    return Topology(sorted(hosts), current, gpus)


def launcher_argv(topology: Topology, script_args: list[str],
                  environ: dict[str, str] | None = None) -> list[str]:
    """torchrun arguments that start this host's workers (static rendezvous on hosts[0])."""
    env = os.environ if environ is None else environ
    master = env.get("MASTER_ADDR", topology.hosts[0])  # tests point it at 127.0.0.1
    return [
        f"--nnodes={len(topology.hosts)}",
        f"--node_rank={topology.node_rank}",
        f"--nproc_per_node={topology.procs_per_host}",
        f"--master_addr={master}",
        f"--master_port={env.get('MASTER_PORT', DEFAULT_PORT)}",
        "-m", "container_train", *script_args,
    ]


def needs_launcher() -> bool:
    """True in the process the toolkit started when the job has several devices."""
    return "LOCAL_RANK" not in os.environ and topology_from_env().world_size > 1


def launch(script_args: list[str]) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    topology = topology_from_env()
    argv = launcher_argv(topology, script_args)
    log.info("launching %d worker(s) on %s (node %d of %d): torchrun %s",
             topology.procs_per_host, topology.current_host, topology.node_rank,
             len(topology.hosts), " ".join(argv[:5]))
    try:
        torchrun.main(argv)
    except SystemExit as exc:  # torchrun exits through sys.exit on worker failure
        return int(exc.code or 0)
    except SignalException as exc:  # SIGTERM: the workers got it too and saved a checkpoint
        log.warning("stopped by %s: the workers were asked to stop", exc.sigval.name)
        return 128 + int(exc.sigval)
    except Exception as exc:  # ChildFailedError: the worker already reported its reason
        log.error("distributed workers failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return 1
    return 0


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def training_device(local_rank: int | None = None) -> torch.device:
    """The device a training process computes on: a GPU when there is one (``cuda:<local
    rank>`` for a torchrun worker, ``cuda`` for a single process), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")


def init() -> Context:
    """Join the process group when started by torchrun; a single process otherwise."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Context(device=training_device())
    local_rank = int(os.environ["LOCAL_RANK"])
    device = training_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    ctx = Context(dist.get_rank(), dist.get_world_size(), local_rank, device)
    for handler in logging.getLogger().handlers:  # every host logs; lines say whose they are
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s [rank {ctx.rank}/{ctx.world_size}] %(message)s"))
    log.info("joined the process group on %s (%s)", ctx.device, dist.get_backend())
    return ctx


def all_reduce_sums(ctx: Context, *values: float) -> list[float]:
    """Sum per-rank totals (loss sums, correct counts, image counts) across ranks."""
    if not ctx.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(ctx: Context, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on one (all ranks call it at the same step)."""
    if not ctx.distributed:
        return flag
    return all_reduce_sums(ctx, float(flag))[0] > 0


def gather_lists(ctx: Context, items: list[Any]) -> list[Any]:
    if not ctx.distributed:
        return items
    gathered: list[list[Any]] = [[] for _ in range(ctx.world_size)]
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def shutdown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
