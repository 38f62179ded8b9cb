"""Defaults shared by every experiment config (paper settings marked "paper").

Each `configs/<task>.py` calls `base_config()` and changes only what differs, so
a key means the same thing in every experiment and `--config.a.b=v` works the
same everywhere. Every key is validated in `umema_jax/train/validate.py`
before any compute.
"""
from __future__ import annotations

import os

import ml_collections

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_data_dir() -> str:
    """`$UMEMA_DATA_DIR`, else `../shared/data` next to the checkout, else '' (= the hub)."""
    from_env = os.environ.get("UMEMA_DATA_DIR", "")
    if from_env:
        return from_env
    beside = os.path.abspath(os.path.join(_REPO_ROOT, "..", "shared", "data"))
    return beside if os.path.isdir(beside) else ""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "smollm2-135m"        # built-in GGUF; `gpt2`, a hub id or a local path also work
    c.model.init_from_scratch = False    # True: random weights (smoke tests, tiny configs)
    c.model.method = "lora"              # lora | lora+um | lora+ema | full | full_ft | lisa | splitlora | milora | flora | alora
    c.model.pooling = "last"             # last | mean (sequence classification summary)
    c.model.dtype = "float32"            # compute dtype: float32 | bfloat16
    c.model.frozen_param_dtype = "float32"  # storage dtype of the frozen backbone (bfloat16 halves it)
    c.model.remat = False                # rematerialise backbone layers in backward (activation memory ~ 1 layer)
    c.model.cpu_matmul = "auto"          # auto | xla | onednn: backbone matmuls via oneDNN on CPU (auto: on AMX/AVX512-BF16 CPUs, when it builds)
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 8                # paper: r = 8 (main results)
    c.model.lora.alpha = -1.0            # -1 = 2 * rank (paper: alpha = 2r, scale 2 at every rank)
    c.model.lora.dropout = 0.0
    c.model.lora.target_regex = ""       # '' = arch default (c_attn for GPT-2, q_proj|v_proj for LLaMA)
    # The uncertainty head of lora+um and full: a registered head's name (umema_jax/uncertainty/heads.py,
    # docs/EXTENDING.md); its settings are the section `model.<name>.*`. The paper's UM branch:
    c.model.uncertainty = "um"
    # UM branch (docs/METHOD.md; fields of umema_jax.uncertainty.um.UMConfig), used by lora+um and full.
    c.model.um = ml_collections.ConfigDict()
    c.model.um.d_u = 64                  # bottleneck / latent size
    c.model.um.quant_levels = 8          # Q: confidence quantisation levels
    c.model.um.layers = ()               # backbone layers used for propagation; () = all (negatives from the end)
    c.model.um.num_tasks = 1             # rows of the task-embedding table
    c.model.um.temperature_bias_init = -4.0   # b_T at init (T starts ~1.02)
    c.model.um.kappa_init = -4.0         # κ at init
    c.model.um.temperature_max = 3.0     # soft bound of T; 0 = unbounded METHOD form (collapses, docs/METHOD.md)
    c.model.um.error_weight = 0.0        # > 0: + w (1 - corr(u_bar, 1 - p_y)) ties u_bar to errors; 0 = the paper
    c.model.um.temperature_input = "unit"  # what w_T reads: unit = M_U's direction (default; seed 2 collapsed with raw) | raw M_U (METHOD); docs/METHOD.md dev. 13
    c.model.um.spread_eps = 1e-6
    # EMA branch (docs/METHOD.md; fields of umema_jax.memory.fusion.EMAConfig), used by lora+ema and full.
    c.model.ema = ml_collections.ConfigDict()
    c.model.ema.slots = 256              # J (paper)
    c.model.ema.tau0 = 1.0               # base retrieval temperature
    c.model.ema.d_u = 64                 # bottleneck of the query / gate / read projections
    c.model.ema.top_k = 3                # top slots reported per prediction
    c.model.ema.retrieval = "cosine"     # cosine | dot (METHOD form; collapses to one-hot, docs/METHOD.md)
    c.model.ema.retrieval_scale = 10.0   # cosine logit scale (fixed: bounds retrieval sharpness)
    c.model.ema.query_norm = True        # LayerNorm c and M_U before the query projection
    c.model.ema.mask_unwritten = True    # never-written (Xavier) slots get no retrieval weight
    c.model.ema.axis_name = ""           # '' = None (jit + sharding); a mesh axis under shard_map/pmap
    # Every other registered uncertainty head's section, from its fields and their defaults.
    import umema_jax.uncertainty  # noqa: F401  (registers the built-in heads)
    from umema_jax.uncertainty.heads import HEADS
    for name, head in HEADS.items():
        if name not in c.model:
            c.model[name] = ml_collections.ConfigDict(head.defaults())

    # Hyper-parameters of the training methods, `methods.<name>.<key>`, each section built from its
    # method's `defaults` (umema_jax/methods/<name>.py, docs/METHODS.md values; docs/METHODS.md lists them):
    # methods.full_ft.param_dtype, methods.lisa.gamma, methods.lisa.interval_steps, ...
    from umema_jax.methods import default_config as method_defaults
    c.methods = method_defaults()

    c.data = ml_collections.ConfigDict()
    c.data.name = "semeval"
    c.data.data_dir = default_data_dir()
    c.data.train_size = 1000             # paper: 200 / 500 / 1000, sampled with the seed
    c.data.dev_size = 0                  # 0 = full dev set; >0 = seeded subsample (faster early stopping)
    c.data.test_size = 0                 # 0 = full test set (always for reported numbers)
    c.data.missing_rate = 0.0            # fig 5: words deleted from train and test (dev clean), per run seed
    c.data.max_len = 128                 # paper: 512 — CPU runs use less; truncations are counted and reported
    c.data.pad_to_multiple = 32          # batches are padded to the next multiple (few shapes, few compiles)

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 3
    c.train.max_steps = -1               # -1 = epochs * steps_per_epoch
    c.train.batch_size = 16              # global mini-batch (one optimizer step, one bank write)
    c.train.grad_accum_steps = 1         # micro-batches per mini-batch
    c.train.eval_batch_size = 64
    c.train.trainable_regex = r"^(head|um|ema)/"   # params trained besides LoRA (adapter methods; full_ft/lisa set their own)
    c.train.eval_every_steps = 0         # 0 = once per epoch
    c.train.checkpoint_every_steps = 50  # plus at every evaluation and at the end
    c.train.max_to_keep = 2
    c.train.early_stopping_patience = 3  # evaluations without dev improvement; 0 = off
    c.train.log_every_steps = 10

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 2e-4         # paper sweep: 5e-5 1e-4 2e-4 5e-4 1e-3
    c.optim.warmup_ratio = 0.06          # linear warm-up then linear decay to 0 (paper)
    c.optim.weight_decay = 0.01          # AdamW (paper); applied to matrices only
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip_norm = 1.0         # global-norm clipping (paper)
    c.optim.lr_scale = 1.0               # learning-rate multiplier for the trained leaves lr_scale_regex matches
    c.optim.lr_scale_regex = r"^params/(um|ema)/"   # over trained-tree paths (default: the UM and EMA branches)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                     # -1 = all devices not used by `model`
    c.mesh.model = 1                     # FSDP shards of the frozen backbone
    c.mesh.fsdp_rules = "default"        # default | none  (path-regex -> PartitionSpec table in train/sharding.py)

    c.output = ml_collections.ConfigDict()
    c.output.tensorboard = True
    c.output.progress_bar = True
    c.output.predictions = True
    # Post-hoc calibrators fitted after training on the best checkpoint (uncertainty/posthoc.py), comma-
    # separated: laplace (last-layer K-FAC Laplace on train, prior by marginal likelihood), laplace-dev (its
    # prior by dev NLL instead), correctness (a true-class-probability head fitted on dev).
    c.output.posthoc = "laplace,laplace-dev,correctness"
    return c
