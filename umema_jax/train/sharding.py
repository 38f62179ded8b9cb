"""Device mesh and parameter placement.

One 2-D mesh with axes (`data`, `model`): the batch is split over both; the
frozen backbone may be FSDP-sharded over `model` by a table of
`(path regex, PartitionSpec)` rules — data, not code, like MaxText's logical
axis rules. Everything that is trained or carried (LoRA, head, UM, EMA, the
memory bank, optimizer state) is small and stays replicated.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"

# First matching rule wins. Entries name the mesh axis per array dimension;
# stacked layer params carry a leading layer axis (never sharded). A dimension
# that the `model` axis does not divide is left unsharded (see `spec_for`).
DEFAULT_FSDP_RULES: tuple[tuple[str, tuple], ...] = (
    (r"(^|/)(wte|wpe|embed_tokens)/embedding$", (MODEL, None)),
    (r"(^|/)lm_head/kernel$", (MODEL, None)),
    (r"(^|/)(h|layers)/.*/(kernel)$", (None, MODEL, None)),   # [L, in, out]: shard `in`
    (r".*", ()),                                              # norms, biases: replicated
)
FSDP_RULE_SETS = {"default": DEFAULT_FSDP_RULES, "none": ((r".*", ()),)}


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """(`data`, `model`) mesh over `devices` (default: all); `data=-1` takes what `model` leaves."""
    devices = list(devices if devices is not None else jax.devices())
    if model < 1 or len(devices) % model:
        raise ValueError(f"mesh.model={model} must divide the {len(devices)} devices")
    if data == -1:
        data = len(devices) // model
    if data * model != len(devices):
        raise ValueError(f"mesh {data}x{model} needs {data * model} devices, found {len(devices)}")
    # Auto axes: XLA's partitioner places intermediates (explicit-sharding mode would demand
    # out_sharding annotations inside the model, e.g. for the embedding gather).
    auto = (AxisType.Auto, AxisType.Auto)
    if devices == list(jax.devices()):
        return jax.make_mesh((data, model), (DATA, MODEL), axis_types=auto)
    return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL), axis_types=auto)


def spec_for(path: str, shape: tuple, rules, mesh: Mesh) -> P:
    """PartitionSpec for one array: first matching rule, dropping axes that do not divide."""
    for pattern, axes in rules:
        if re.search(pattern, path):
            break
    else:
        axes = ()
    if len(axes) != len(shape):
        axes = ()  # rule written for another rank (e.g. unstacked layers): replicate
    fitted = tuple(ax if ax is None or shape[i] % mesh.shape[ax] == 0 else None
                   for i, ax in enumerate(axes))
    return P(*fitted)


def tree_specs(tree: Any, rules, mesh: Mesh) -> Any:
    """PartitionSpecs for a nested dict of arrays (or ShapeDtypeStructs), by `/`-joined path."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    return traverse_util.unflatten_dict(
        {k: spec_for(k, tuple(v.shape), rules, mesh) for k, v in flat.items()}, sep="/")


def named(mesh: Mesh, specs: Any) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis over every device (`data` x `model`), other axes whole.

    The `model` axis is an FSDP axis (ZeRO-3 style): its devices hold different
    weight shards *and* different examples, gathering each layer's weights when
    needed, so adding FSDP devices also splits activation memory.
    """
    return NamedSharding(mesh, P((DATA, MODEL)))


def batch_divisor(mesh: Mesh) -> int:
    """Global batch sizes must be multiples of this (devices the batch is split over)."""
    return mesh.shape[DATA] * mesh.shape[MODEL]


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Host numpy batch -> global jax arrays split over `data`.

    Multi-host: every process holds the same global batch (deterministic data
    order from the seed) and contributes only its own rows.
    """
    sharding = batch_sharding(mesh)
    nproc, pid = jax.process_count(), jax.process_index()

    def put(x):
        x = np.asarray(x)
        if nproc > 1:
            rows = x.shape[0] // nproc
            local = x[pid * rows:(pid + 1) * rows]
            return jax.make_array_from_process_local_data(sharding, local, x.shape)
        return jax.device_put(x, sharding)
    return {k: put(v) for k, v in batch.items()}


def bytes_per_device(tree: Any, shardings: Any) -> int:
    """Bytes one device holds for `tree` placed with `shardings` (works on ShapeDtypeStructs)."""
    total = 0
    for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(
            shardings, is_leaf=lambda x: isinstance(x, NamedSharding))):
        shard_shape = sh.shard_shape(tuple(leaf.shape))
        total += int(np.prod(shard_shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total
