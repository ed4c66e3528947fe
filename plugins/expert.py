"""Built-in stage ``expert``: one expert per label source, fine-tuned from the amateur weights."""
from metanet.hookspecs import hookimpl
from metanet.training import evaluate, linear_head, state_to_cpu, train_classifier

DEFAULTS = {"epochs": 2, "max_steps": 20, "batch_size": 64, "lr": 5e-4, "optimizer": "adamw", "weight_decay": 0.05,
            "sources": None}


@hookimpl
def metanet_register_stages(register):
    register("expert", defaults=DEFAULTS, description="one expert per source, fine-tuned from the amateur weights")


@hookimpl
def metanet_run_stage(stage, context):
    if stage != "expert":
        return None
    cfg, device = context.config, context.device
    sources = context.data.require_sources(cfg["sources"])
    amateur_heads = context.state.get("amateur", {}).get("heads", {})
    experts, metrics, firsts, lasts = {}, {}, [], []
    for i, (s, split) in enumerate(sources.items()):
        model, origin = context.model_from("amateur")
        head = linear_head(model.num_features, split.num_classes, device)
        if f"{s}.weight" in amateur_heads:  # keep the amateur's head for this source
            head.load_state_dict({"weight": amateur_heads[f"{s}.weight"], "bias": amateur_heads[f"{s}.bias"]})
        log = train_classifier(model, head, split.train, cfg, context.seed + i, device)
        metrics[f"{s}.acc"] = evaluate(model, head, split.test, device)
        summary = log.summary()
        firsts.append(summary["train_loss_first"])
        lasts.append(summary["train_loss_last"])
        experts[s] = {"weights": state_to_cpu(model), "head": state_to_cpu(head), "origin": origin}
    metrics["acc"] = sum(metrics.values()) / len(sources)
    metrics["train_loss_first"] = sum(firsts) / len(firsts)
    metrics["train_loss_last"] = sum(lasts) / len(lasts)
    context.state["expert"] = {"experts": experts}
    return metrics
