"""Tables 1 and 2: backbones and trainable parameters from shapes; the resolved setup of each profile."""
from __future__ import annotations

from umema_jax.experiments import tables as T
from umema_jax.experiments import verdicts as V
from umema_jax.experiments import profiles as P
from umema_jax.experiments import specs as S
from umema_jax.experiments.targets.core import DATASET_LABEL, Context, doc_of, train_spec
from umema_jax.experiments.targets.lr_select import lr_select_cells, lr_tables


def table1_cells(ctx: Context) -> list:
    """Table 1: backbones and methods — parameters, layers, hidden size, and trainable parameters per method
    per backbone, from shapes alone (`jax.eval_shape`: no weights, no runs). Head sized for SemEval (19
    classes). The `paper` profile lists its three backbones whatever machine runs it."""
    return []


def _shape_counts(backbone: str, method: str) -> dict | None:
    from umema_jax.memory_estimate import estimate
    try:
        r = estimate(backbone, method, devices=1)
    except Exception as err:  # noqa: BLE001 - a method the estimator does not know
        return {"error": f"{type(err).__name__}: {err}"}
    return {"frozen": r["params_frozen"], "trainable": r["params_trainable"],
            "memory_gib_bf16": r["per_device_total_gib"]}


def table1_render(ctx: Context, results: list) -> None:
    from umema_jax.backbones.config import get_backbone_config
    rows, cells = [], []
    methods = P.ABLATION + P.BASELINES
    head = ["backbone", "layers", "hidden", "params (backbone)"] + [m.label for m in methods]
    rows.append("| " + " | ".join(head) + " |")
    rows.append("|" + "---|" * len(head))
    lora_counts = {}
    for b in ctx.profile.backbones:
        cfg = get_backbone_config(b.name)
        line, base = [b.label, str(cfg.num_layers), str(cfg.hidden_size)], None
        entries = []
        for m in methods:
            name = P.method_name(m, ctx.implemented)
            counts = _shape_counts(b.name, name) if name else None
            if counts and "trainable" in counts:
                base = base or counts["frozen"]
                entries.append(f"{counts['trainable']:,}")
                if m is P.LORA:
                    lora_counts[b.label] = counts
            else:
                entries.append("not implemented" if name is None else "n/a")
            cells.append({"labels": {"backbone": b.label, "method": m.label}, "model.method": name,
                          "counts": counts, "status": "not implemented" if name is None else "computed"})
        line.append(f"{base:,}" if base else "n/a")
        rows.append("| " + " | ".join(line + entries) + " |")
    body = ["Trainable parameters per method (LoRA r = 8 on the default targets, task head for 19 classes, UM "
            "and EMA branches); parameters of the backbone without its LM head. From shapes only.", ""] + rows
    claims = []
    ours = [c for c in cells if c["labels"]["method"] == P.OURS.label and c["counts"] and "trainable" in c["counts"]]
    if ours:
        details = []
        for c in ours:
            lora = lora_counts.get(c["labels"]["backbone"])
            extra = c["counts"]["trainable"] - lora["trainable"] if lora else None
            details.append(f"{c['labels']['backbone']}: +{extra:,} trainable over LoRA = "
                           f"{100 * extra / c['counts']['frozen']:.3f} % of the backbone" if extra is not None else "")
        small = all(lora_counts.get(c["labels"]["backbone"]) and (c["counts"]["trainable"] - lora_counts[
            c["labels"]["backbone"]]["trainable"]) < 0.01 * c["counts"]["frozen"] for c in ours)
        claims.append(V.claim("C17", "\"minimal\" parameter overhead (paper §5)", V.SUPPORTS if small else V.CONTRADICTS,
                              "; ".join(details) + " (threshold: < 1 % of the backbone's parameters)"))
    T.write(ctx.out, "table1", "Table 1: backbones and methods (parameters from shapes)", ctx, body, claims, [],
            {"rows": cells}, doc=doc_of(table1_cells))


def table2_cells(ctx: Context) -> list:
    """Table 2: the resolved setup of each profile and backbone — data, lengths, optimiser, schedule,
    epochs and early stopping, and the learning rates with how they were chosen (the grid, every dev score,
    the choice, whether the best dev epoch was the last). Needs only the `lr_select` runs."""
    return lr_select_cells(ctx)


def table2_render(ctx: Context, results: list) -> None:
    p = ctx.profile
    keys = ("data.max_len", "data.dev_size", "data.test_size", "train.epochs", "train.batch_size",
            "train.early_stopping_patience", "optim.warmup_ratio", "optim.weight_decay", "optim.grad_clip_norm",
            "model.lora.rank", "model.lora.alpha", "model.pooling", "model.dtype")
    body = ["Resolved configuration of one run per backbone × dataset (config file + the profile's overrides; "
            "every run of the profile differs from it only in method, size, seed and LR).", ""]
    head = ["backbone", "dataset", "config"] + list(keys)
    body += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    setups = []
    for b in p.backbones:
        for d, setup in p.datasets.items():
            spec = train_spec(ctx, b, setup, "lora", p.sizes[-1], 0, p.lr_grid[0])
            try:
                c = S.load_config(spec)
                vals = [str(c[k.split(".")[0]][k.split(".")[1]] if k.count(".") == 1 else
                            c.model.lora[k.split(".")[-1]]) for k in keys]
            except Exception as err:  # noqa: BLE001
                vals = [f"error: {err}"] + [""] * (len(keys) - 1)
            setups.append({"backbone": b.label, "dataset": d, "config_file": setup.config_file,
                           "values": dict(zip(keys, vals))})
            body.append("| " + " | ".join([b.label, DATASET_LABEL[d], setup.config_file] + vals) + " |")
    central = (f" ({list(p.central_seeds)} for the central comparison, LoRA against Ours on SemEval at "
               f"n = {p.selection_size})" if p.central_seeds else "")
    body += ["", f"Sizes {list(p.sizes)}, seeds {list(p.seeds)}{central}; missing rates {list(p.missing_rates)}.", "",
             "### Learning rates", "",
             f"Grid (adapter family): {list(p.lr_grid)}; full-weight family: {list(p.full_weight_lr_grid)}. "
             f"Selection cell: SemEval, n = {p.selection_size}, seed 0, dev primary metric of the LoRA baseline "
             "(docs/EXPERIMENTS.md).", ""]
    body += lr_tables(results)
    for b in p.backbones:
        for fam in ("adapter", "full_weight"):
            sel = ctx.lr_selection.get(b.name, {}).get(fam, {})
            lr = ctx.lr(b, fam)
            if lr is not None:
                last = sel.get("best_is_last")
                epochs = ("best dev step = last step: more epochs may help" if last else
                          f"best dev step {sel.get('best_step')} of {sel.get('steps')}")
                body.append(f"- {b.label}, {fam.replace('_', '-')} methods: **{lr:g}** ({epochs})")
            else:
                body.append(f"- {b.label}, {fam.replace('_', '-')} methods: "
                            f"{sel.get('status') or 'not chosen yet (run lr_select)'}")
    T.write(ctx.out, "table2", "Table 2: resolved setup and learning-rate selection", ctx, body, [], results,
            {"setups": setups}, doc=doc_of(table2_cells))
