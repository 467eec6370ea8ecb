"""Where FAISS runs: ``--device cpu`` (the default) or ``cuda`` (faiss-gpu, where installed).

On ``cuda`` the k-means training (the stages' clusters and the IVF lists), the assignment of
rows to centroids and lists, and the flat nearest-neighbour searches run on GPU 0, and
near_dedup's search within its IVF lists runs as matrix products on the GPU (faiss-gpu has
no range search). When the installed faiss has no GPU support (the ``faiss-cpu`` wheel) or
sees no GPU, :func:`faiss_gpu` says so once, on the ``curate`` logger, and the work runs on
the CPU: the results are the CPU path's.
"""

from __future__ import annotations

import logging
from functools import cache, lru_cache
from typing import Any

from curate.core.errors import UserInputError

LOG = logging.getLogger("curate.dedup")
FAISS_GPU_HINT = "pip install faiss-gpu-cu12 (in place of faiss-cpu)"


def check_device(device: str) -> str:
    if device != "cpu" and not device.startswith("cuda"):
        raise UserInputError(f"unknown device {device!r} (--device): use cpu or cuda")
    return device


def faiss_gpus(faiss: Any) -> int:
    """GPUs this faiss build can use: 0 for a CPU-only build (no ``StandardGpuResources``)."""
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return 0
    return int(faiss.get_num_gpus())


def faiss_gpu(device: str) -> bool:
    """Whether FAISS work for ``device`` runs on a GPU; ``cuda`` without one falls back to
    the CPU with a message (once per process)."""
    if check_device(device) == "cpu":
        return False
    import faiss

    if faiss_gpus(faiss) > 0:
        return True
    _warn_cpu_fallback(device)
    return False


@cache
def _warn_cpu_fallback(device: str) -> None:
    import faiss

    reason = (
        "this faiss build has no GPU support"
        if not hasattr(faiss, "StandardGpuResources")
        else "faiss sees no GPU"
    )
    LOG.warning(
        "--device %s: %s, so k-means and the nearest-neighbour searches run on the CPU "
        "(%s for the GPU path)",
        device,
        reason,
        FAISS_GPU_HINT,
    )


@lru_cache(maxsize=1)
def gpu_resources() -> Any:
    """One ``StandardGpuResources`` per process (its scratch memory is reused)."""
    import faiss

    return faiss.StandardGpuResources()


def to_gpu(index: Any) -> Any:
    """A GPU copy of a CPU flat index (GPU 0)."""
    import faiss

    return faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
