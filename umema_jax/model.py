"""UmemaModel: frozen backbone + LoRA + UM + EMA + task head (docs/CONTRACTS.md, docs/METHOD.md).

The model takes its components explicitly and knows no training method: `lora_cfg`
(None = no adapter), `uncertainty` (an uncertainty head, `umema_jax.uncertainty.heads`: the paper's
UM branch is `UMConfig`; None = none) and `ema_cfg` (None = no memory).
A training method (umema_jax/methods) decides which it builds. The paper's variants:
  LoRA        lora_cfg                       pooled summary, head
  +UM         lora_cfg, uncertainty          confidence-weighted summary, calibration temperature T
  +EMA        lora_cfg, ema_cfg              memory bank (ū = 0, M_U left out of the query), T = 1
  LoRA+UM+EMA all three                      the paper's method

Variables: `params` {backbone, head, um, ema}, `lora` {backbone: <init_lora tree>},
`memory` {keys [J,d], values [J,d], pointer [], filled []} (EMA variants only).

Step 0: W_r = 0, γ = 0, w_u = w_λ = 0 (so q ≡ 1/2 and λ is uniform), hence the
summary fed to the head and the *raw* logits of every variant equal the plain
LoRA model's at initialisation (exactly for last-token pooling and NER, up to
float rounding for mean pooling). The UM temperature starts at
T = 1 + softplus(-4)(1 + ū) ≈ 1.02–1.04, so calibrated logits = raw / T differ
by that factor; tests/test_model.py checks both statements.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from umema_jax.backbones import BackboneConfig, build_backbone, get_backbone_config
from umema_jax.memory.bank import confidence_weighted_moments, write_moments
from umema_jax.memory.fusion import EMAConfig, MemoryFusion
from umema_jax.uncertainty.heads import get_head
from umema_jax.uncertainty.um import UMConfig, last_valid_token, masked_mean

TASK_TYPES = ("cls", "ner")
POOLINGS = ("last", "mean")


@struct.dataclass
class ModelOutput:
    """logits = raw_logits / temperature ([B,C] cls, [B,n,C] ner); temperature [B] or [B,n]
    (ones without UM). aux: per-example (cls) or per-token (ner) arrays:
    `u_ale`, `u_epi`, `u_bar`, `temperature` with UM; `memory_top_indices`,
    `memory_top_weights` ([..., 3]) with EMA."""
    logits: jax.Array
    raw_logits: jax.Array
    temperature: jax.Array
    aux: dict
    # Training-only internals ({} unless train=True): the head's input `features`,
    # `memory_embedding` M_U, and with EMA the bank-write sums
    # `memory_entry_numer` [d] / `memory_entry_denom` [] (train/step.py adds them
    # over micro-batches and writes once) and `memory_update_ratio`; with routed
    # LoRA (MiLoRA) `router_gates/probs/selected` [L,B,M]. Used for telemetry
    # (train/telemetry.py) and methods' aux losses, never exported with predictions.
    internals: dict = struct.field(default_factory=dict)
    # The task head's input (logits = head(features) / temperature): what post-hoc calibrators fit on.
    features: Any = None


class UmemaModel(nn.Module):
    """Call: `model.apply(variables, batch, train=False, rngs={'dropout': k}, mutable=['memory'])`.

    batch: `input_ids [B,n]`, `attention_mask [B,n]` (1 = real token), `hidden_in [B,n,d]` (only with a
    `span`: the activations at the cut, from which the server part starts), optional
    `example_mask [B]` (0 = padding row; default ones), `task_id [B]` (default 0);
    other keys (labels, ...) are ignored. The bank is written once per call
    when `train=True`, `write_memory=True` and `memory` is mutable; otherwise it
    is only read (the train step passes `write_memory=False` and writes the
    summed `internals` once per mini-batch, also under gradient accumulation).
    """
    backbone_cfg: BackboneConfig
    lora_cfg: Any = None                 # adapters.lora.LoraConfig | None (no adapter)
    task_type: str = "cls"
    num_labels: int = 2
    pooling: str = "last"
    uncertainty: Any = None              # an uncertainty head's settings (UMConfig: the UM branch; None: none)
    ema_cfg: EMAConfig | None = None     # the memory bank and its fusion (None: none)
    dtype: Any = jnp.float32
    remat: bool = False                  # rematerialise backbone layers in the backward pass
    cpu_matmul: str = "xla"              # backbone Dense products: "xla" | "onednn" (make_model resolves "auto")
    span: tuple | None = None            # (c, L): the server part of split learning, fed `batch['hidden_in']`

    def setup(self):
        use_um, use_ema = self.uncertainty is not None, self.ema_cfg is not None
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {self.task_type!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.span is not None and (use_um or use_ema):
            raise ValueError(f"a split model part (span={self.span}) is plain LoRA: it cannot have UM or EMA")
        self.backbone = build_backbone(self.backbone_cfg, lora=self.lora_cfg, dtype=self.dtype, remat=self.remat,
                                       matmul=self.cpu_matmul, span=self.span)
        if use_um:                       # every head lives in the uncertainty slot: params/um/...
            self.um = self.uncertainty.build(self.task_type, self.pooling)
        if use_ema:
            self.ema = MemoryFusion(self.ema_cfg)
            shape = (self.ema_cfg.slots, self.backbone_cfg.hidden_size)
            xavier = nn.initializers.xavier_uniform()
            self.bank_keys = self.variable("memory", "keys", lambda: xavier(self.make_rng("params"), shape))
            self.bank_values = self.variable("memory", "values", lambda: xavier(self.make_rng("params"), shape))
            self.bank_pointer = self.variable("memory", "pointer", lambda: jnp.zeros((), jnp.int32))
            self.bank_filled = self.variable("memory", "filled", lambda: jnp.zeros((), jnp.int32))
        # dtype None: computed in the input's (fp32 here; fp64 in x64 gradient tests)
        self.head = nn.Dense(self.num_labels, kernel_init=nn.initializers.normal(0.02),
                             dtype=None, param_dtype=jnp.float32)

    def exported_scores(self) -> tuple:
        """The per-example uncertainty scores evaluation reports: the head's, and its own temperature."""
        if self.uncertainty is None:
            return ()
        return tuple(self.uncertainty.scores) + (("temperature",) if self.uncertainty.calibrates else ())

    def eval_samples(self) -> int:
        """Forward passes evaluation averages (the head's choice; 1 = one deterministic pass)."""
        return 1 if self.uncertainty is None else int(self.uncertainty.eval_samples())

    def __call__(self, batch: Mapping[str, Any], train: bool = False, write_memory: bool = True,
                 sample: bool = False) -> ModelOutput:
        use_um, use_ema = self.uncertainty is not None, self.ema_cfg is not None
        ner = self.task_type == "ner"
        input_ids = jnp.asarray(batch["input_ids"]).astype(jnp.int32)
        bsz, _ = input_ids.shape
        mask = batch.get("attention_mask")
        mask = jnp.ones_like(input_ids) if mask is None else jnp.asarray(mask).astype(jnp.int32)
        example_mask = batch.get("example_mask")
        example_mask = jnp.ones((bsz,), jnp.float32) if example_mask is None else \
            jnp.asarray(example_mask).astype(jnp.float32)
        task_id = batch.get("task_id")
        task_id = jnp.zeros((bsz,), jnp.int32) if task_id is None else jnp.asarray(task_id).astype(jnp.int32)
        mask_f = mask.astype(jnp.float32)

        out = self.backbone(input_ids, mask, deterministic=not (train or sample),   # sample: dropout on at eval
                            output_hidden_states=use_um and self.uncertainty.needs_hidden_states,
                            compute_logits=False, hidden_in=batch.get("hidden_in"))
        hidden = out.last_hidden_state
        hidden = hidden.astype(jnp.promote_types(hidden.dtype, jnp.float32))   # fp32 (fp64 in x64 tests)
        aux: dict = {}

        if use_um:
            head = self.uncertainty.output(self.um(out.embeddings, out.hidden_states, hidden, mask, task_id), ner)
            rep, m_u, u_bar, temperature = head.representation, head.memory_embedding, head.u_bar, head.temperature
            aux.update(head.scores)
            aux["temperature"] = temperature
        else:
            if ner:
                rep = hidden
            elif self.pooling == "mean":
                rep = masked_mean(hidden, mask_f)
            else:
                rep = last_valid_token(hidden, mask_f)
            m_u, u_bar = None, None
            temperature = jnp.ones(rep.shape[:-1], jnp.float32)

        internals: dict = {}
        if use_ema:
            bank = {"keys": self.bank_keys.value, "values": self.bank_values.value,
                    "pointer": self.bank_pointer.value, "filled": self.bank_filled.value}
            fusion = self.ema(rep, bank, m_u, u_bar)
            rep = fusion.fused
            aux.update(memory_top_indices=fusion.top_indices, memory_top_weights=fusion.top_weights)
            if train:
                # NER: token-level confidence-weighted mean over valid tokens of real rows.
                weight_mask = example_mask[:, None] * mask_f if ner else example_mask
                conf = jnp.zeros(rep.shape[:-1], jnp.float32) if u_bar is None else u_bar
                numer, denom = confidence_weighted_moments(rep, conf, weight_mask, self.ema_cfg.axis_name)
                internals.update(memory_entry_numer=numer, memory_entry_denom=denom,
                                 memory_update_ratio=fusion.update_ratio)
                if write_memory and self.is_mutable_collection("memory"):
                    new_bank = write_moments(bank, numer, denom)
                    self.bank_keys.value = new_bank["keys"]
                    self.bank_values.value = new_bank["values"]
                    self.bank_pointer.value = new_bank["pointer"]
                    self.bank_filled.value = new_bank["filled"]
        if train:
            internals["features"] = rep
            if out.routing is not None:      # MiLoRA: [L,B,M] per block, for the balance loss and usage
                internals.update({f"router_{k}": v for k, v in out.routing.items()})
            if m_u is not None:
                internals["memory_embedding"] = m_u

        raw_logits = self.head(rep)
        logits = raw_logits / temperature[..., None]
        return ModelOutput(logits=logits, raw_logits=raw_logits, temperature=temperature, aux=aux,
                           internals=internals, features=rep)


def dummy_batch(batch_shape: tuple[int, int]) -> dict:
    """A right-padded int32 batch of the given (B, n), used for initialisation and shape checks."""
    bsz, n = batch_shape
    mask = jnp.ones((bsz, n), jnp.int32)
    return {"input_ids": jnp.zeros((bsz, n), jnp.int32), "attention_mask": mask,
            "example_mask": jnp.ones((bsz,), jnp.int32), "task_id": jnp.zeros((bsz,), jnp.int32)}


def init_variables(model: UmemaModel, rng: jax.Array, batch_shape: tuple[int, int] = (2, 8),
                   backbone_params: dict | None = None) -> dict:
    """{'params', 'lora' (if model.lora_cfg), 'memory' (EMA variants)}.

    The same rng gives the same backbone, head, UM/EMA and LoRA factors for every
    variant, so variants can be compared at step 0. LoRA factors come from
    `adapters.lora.init_lora` (B = 0) and sit under `lora/backbone/...`.
    With `backbone_params` (e.g. loaded weights) the backbone is not randomly
    initialised at all — only the missing head/um/ema params and the bank are
    created (Flax lazy init), so an 8B backbone is never materialised twice.
    """
    param_rng, lora_rng = jax.random.split(rng)
    batch = dummy_batch(batch_shape)
    if backbone_params is None:
        variables = dict(jax.jit(lambda r, b: model.init({"params": r, "dropout": r}, b, train=False))(
            param_rng, batch))
    else:
        def create(r, bb, b):
            _, created = model.apply({"params": {"backbone": bb}}, b, train=False,
                                     rngs={"params": r, "dropout": r}, mutable=["params", "memory"])
            return created
        variables = dict(jax.jit(create)(param_rng, backbone_params, batch))
        variables["params"] = dict(variables["params"], backbone=backbone_params)
    if model.lora_cfg is not None:
        from umema_jax.adapters.lora import init_lora
        variables["lora"] = {"backbone": init_lora(lora_rng, variables["params"]["backbone"], model.lora_cfg,
                                                   model.backbone_cfg.arch)}
    return variables


def _get(section, key, default):
    return section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)


def make_model(config, backbone_cfg: BackboneConfig | None = None, *, use_lora: bool, use_um: bool,
               use_ema: bool) -> UmemaModel:
    """UmemaModel from the root ConfigDict, with the components a training method asks for
    (`umema_jax.methods`: `Method.make_model` passes its own flags).

    Reads `model.name` (→ `get_backbone_config`, unless `backbone_cfg` is given,
    e.g. from a weight loader), `model.pooling`,
    `model.lora.{rank,alpha,dropout,target_regex}` ('' = arch default),
    `model.uncertainty` (a registered head's name, default 'um') and its section `model.<name>.*`
    (for UM: UMConfig fields d_u, quant_levels, layers, num_tasks, ...),
    `model.ema.*` → EMAConfig fields (slots, tau0, d_u, top_k, axis_name),
    `model.dtype` ('float32' | 'bfloat16'), optional `model.remat` (bool, default
    False), optional `model.cpu_matmul` ('auto' | 'xla' | 'onednn', default 'auto': oneDNN on CPU
    when it builds), `task.type` ('cls' | 'ner'), `task.num_labels`.
    """
    from umema_jax.kernels.cpu_gemm import resolve
    from umema_jax.adapters.lora import LoraConfig
    m = config.model
    if backbone_cfg is None:
        backbone_cfg = get_backbone_config(m.name)
    lora_section = _get(m, "lora", None) if use_lora else None
    lora_cfg = None
    if lora_section is not None:
        target = _get(lora_section, "target_regex", None) or None
        lora_cfg = LoraConfig(rank=int(_get(lora_section, "rank", 8)), alpha=_get(lora_section, "alpha", None),
                              dropout=float(_get(lora_section, "dropout", 0.0)), target_regex=target)
    uncertainty = None
    if use_um:                       # the head `model.uncertainty` names (default: the paper's UM), its section
        head = get_head(str(_get(m, "uncertainty", "um")))
        uncertainty = head.from_section(dict(_get(m, head.name, {}) or {}))
    ema_kwargs = dict(_get(m, "ema", {}) or {})
    if "axis_name" in ema_kwargs:    # '' = None
        ema_kwargs["axis_name"] = ema_kwargs["axis_name"] or None
    return UmemaModel(
        backbone_cfg=backbone_cfg, lora_cfg=lora_cfg,
        task_type=str(config.task.type), num_labels=int(config.task.num_labels),
        pooling=str(_get(m, "pooling", "last")), uncertainty=uncertainty,
        ema_cfg=EMAConfig(**ema_kwargs) if use_ema else None,
        dtype=jnp.dtype(str(_get(m, "dtype", "float32"))), remat=bool(_get(m, "remat", False)),
        cpu_matmul=resolve(str(_get(m, "cpu_matmul", "auto")), shape_class=(backbone_cfg.hidden_size,
                           backbone_cfg.intermediate_size), dtype=str(_get(m, "dtype", "float32"))))


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def extra_param_counts(backbone_name_or_cfg, task_type: str = "cls", num_labels: int = 2,
                       uncertainty=UMConfig(), ema_cfg: EMAConfig | None = EMAConfig()) -> dict:
    """Parameter counts from shapes only (`jax.eval_shape`, no weights materialised):
    {'backbone', 'um', 'ema', 'head', 'memory'(buffer elements, not params)}."""
    cfg = get_backbone_config(backbone_name_or_cfg) if isinstance(backbone_name_or_cfg, str) \
        else backbone_name_or_cfg
    model = UmemaModel(backbone_cfg=cfg, task_type=task_type, num_labels=num_labels, uncertainty=uncertainty,
                       ema_cfg=ema_cfg)
    batch = dummy_batch((1, 4))
    shapes = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, batch, train=False),
                            jax.random.PRNGKey(0))
    params = shapes["params"]
    # The backbone with its LM head (an untied lm_head is only created when logits are computed).
    backbone = build_backbone(cfg)
    backbone_shapes = jax.eval_shape(lambda r: backbone.init(r, batch["input_ids"], compute_logits=True),
                                     jax.random.PRNGKey(0))
    return {"backbone": count_params(backbone_shapes["params"]), "um": count_params(params.get("um", {})),
            "ema": count_params(params.get("ema", {})), "head": count_params(params["head"]),
            "memory": count_params(shapes.get("memory", {}))}


__all__ = ["ModelOutput", "UmemaModel", "count_params", "dummy_batch", "extra_param_counts", "init_variables",
           "make_model"]
