"""Built-in plugin: INTERN's evaluation stages and a zero-cost proxy, registered as a plugin's are.

Each stage is one registration: its runner (a module of this package, imported when the stage
first runs), its settings with their defaults (written here once; users override them with
``--set stage.key=value``) and its capabilities: whether it leaves a trained backbone, and which
metric scores a candidate when it is the last scoring stage.
"""
from metanet.plugin.hookspecs import hookimpl

# How every training stage trains unless its settings say otherwise (written once, merged below): warmup over
# 10% of the steps then cosine decay to 1% of lr, gradient norm clipped to 1, label smoothing 0.1; weight
# decay never applies to norms and biases (metanet.train.loop.Schedule).
SCHEDULE = {"schedule": "cosine", "warmup": 0.1, "min_lr_ratio": 0.01, "clip_grad": 1.0, "label_smoothing": 0.1}

ZERO_COST = {"proxy": "naswot", "batch_size": 32, "source": None}
AMATEUR = {"epochs": 3, "max_steps": 120, "batch_size": 32, "lr": 2e-3, "optimizer": "adamw", "weight_decay": 0.05,
           "sources": None, "contrastive_weight": 0.5, "temperature": 0.2, "projection_dim": 64, **SCHEDULE}
EXPERT = {"epochs": 2, "max_steps": 20, "batch_size": 64, "lr": 5e-4, "optimizer": "adamw", "weight_decay": 0.05,
          "sources": None, **SCHEDULE}
GENERALIST = {"epochs": 2, "max_steps": 30, "batch_size": 64, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.05,
              "temperature": 2.0, "label_weight": 1.0, "logit_weight": 1.0, "feature_weight": 1.0, **SCHEDULE}
DOWNSTREAM = {"fraction": 0.1, "epochs": 100, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3,
              "optimizer": "sgd", "tasks": None, "backbone": "generalist,amateur",
              "finetune_steps": 0, "finetune_lr": 1e-3,
              # baselines for INTERN's data-efficiency claim: adapted with 100% of the data, and from scratch on
              # 100% for scratch_epochs epochs (scratch_max_steps: an optional cap, 0 for none)
              "adapted_full": False, "from_scratch": False, "scratch_epochs": 30, "scratch_max_steps": 0,
              "scratch_lr": 2e-3, **SCHEDULE}
SUPERNET = {"path": "", "calibration_batches": 4, "batch_size": 64, "test": False}


@hookimpl
def metanet_register_stages(register):
    register("zero-cost", "metanet.plugins.stages.zero_cost:run", defaults=ZERO_COST, score_metric="score",
             description="training-free score at init (naswot or grad_norm)")
    register("amateur", "metanet.plugins.stages.amateur:run", defaults=AMATEUR, trains_backbone=True, score_metric="acc",
             fidelity=True,
             description="multi-source pre-training: one head per label source + contrastive views; scores by "
                         "validation accuracy (the mean over sources)")
    register("expert", "metanet.plugins.stages.expert:run", defaults=EXPERT, fidelity=True,
             description="one expert per source, fine-tuned from the amateur weights")
    register("generalist", "metanet.plugins.stages.generalist:run", defaults=GENERALIST, trains_backbone=True, fidelity=True,
             description="multi-teacher distillation of the experts (logits + features) into one model")
    register("downstream", "metanet.plugins.stages.downstream:run", defaults=DOWNSTREAM,
             description="frozen backbone + linear probe on 10% of each held-out task's labels (GV-B)")
    register("supernet", "metanet.plugins.stages.supernet_scoring:run", defaults=SUPERNET, trains_backbone=True,
             check="metanet.plugins.stages.supernet_scoring:check",
             description="weights inherited from a trained supernet (metanet supernet train), BN recalibrated")
