"""Built-in stage ``expert``: one expert per label source, fine-tuned from the amateur weights."""
from metanet.train.loop import averaged, evaluate_split, linear_head, state_to_cpu, train_classifier


def run(context):
    cfg, device = context.config, context.device
    sources = context.data.require_sources(cfg["sources"])
    amateur_heads = context.state.get("amateur", {}).get("heads", {})
    experts, per_source, firsts, lasts = {}, {}, [], []
    for s, split in sources.items():
        model, origin = context.model_from("amateur")
        with context.seeded("expert", s):  # each expert from its source's own seed: independent of the others
            head = linear_head(model.num_features, split.num_classes, device)
            if f"{s}.weight" in amateur_heads:  # keep the amateur's head for this source
                head.load_state_dict({"weight": amateur_heads[f"{s}.weight"], "bias": amateur_heads[f"{s}.bias"]})
            trainer = train_classifier(model, head, split.train, cfg, context.seed_for("batches", s), device,
                                       context=context, key=s)
        per_source[s] = evaluate_split(model, head, split, device)
        summary = trainer.summary()
        firsts.append(summary["train_loss_first"])
        lasts.append(summary["train_loss_last"])
        experts[s] = {"weights": state_to_cpu(model), "head": state_to_cpu(head), "origin": origin}
    metrics = averaged(per_source)
    metrics["train_loss_first"] = sum(firsts) / len(firsts)
    metrics["train_loss_last"] = sum(lasts) / len(lasts)
    context.state.setdefault("expert", {})["experts"] = experts
    return metrics
