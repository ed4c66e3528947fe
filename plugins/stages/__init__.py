"""Built-in plugin: INTERN's evaluation stages and a zero-cost proxy, registered as a plugin's are.

Each stage is one registration: its runner (a module of this package, imported when the stage
first runs), its settings as a typed schema (default, type, range, choices: written here once; users override
them with ``--set stage.key=value``, checked before any trial) and its capabilities: whether it leaves a trained backbone, and which
metric scores a candidate when it is the last scoring stage.
"""
from functools import partial

from metanet.errors import ConfigError
from metanet.plugin.hookspecs import hookimpl
from metanet.plugin.settings import Setting
from metanet.train.names import OPTIMIZERS, SCHEDULES

PROXIES = ("naswot", "grad_norm")


def _positive(default, what, **kw):
    return Setting(default, what, type=float, gt=0, **kw)


def _weight(default, what):
    return Setting(default, what, type=float, ge=0)


def _count(default, what, low=1):
    return Setting(default, what, type=int, ge=low)


def _training(epochs, max_steps, batch_size, lr, optimizer):
    return {"epochs": _positive(epochs, "passes over the largest source; inf: exactly max_steps", finite=False),
            "max_steps": _count(max_steps, "cap on the steps (0: none)", low=0),
            "batch_size": _count(batch_size, "images per step (per source)"),
            "lr": _positive(lr, "peak learning rate"),
            "optimizer": Setting(optimizer, "optimiser", choices=OPTIMIZERS),
            "weight_decay": _weight(0.05, "on weights, never on norms and biases")}


# How every training stage trains unless its settings say otherwise (written once, merged below): warmup over
# 10% of the steps then cosine decay to 1% of lr, gradient norm clipped to 1, label smoothing 0.1; weight
# decay never applies to norms and biases (metanet.train.loop.Schedule).
SCHEDULE = {"schedule": Setting("cosine", "learning-rate schedule after warmup", choices=SCHEDULES),
            "warmup": Setting(0.1, "fraction of the steps spent warming up", ge=0, lt=1),
            "min_lr_ratio": Setting(0.01, "final lr as a fraction of lr (cosine)", ge=0, le=1),
            "clip_grad": Setting(1.0, "gradient-norm clip (0: off)", ge=0),
            "label_smoothing": Setting(0.1, "label smoothing of the cross-entropy", ge=0, lt=1)}
SOURCES = Setting(None, "upstream sources to train on, a list or comma-separated (null: all)", names="sources")

ZERO_COST = {"proxy": Setting("naswot", "training-free score", choices=PROXIES),
             "batch_size": _count(32, "images in the one batch scored"),
             "source": Setting(None, "upstream source to draw the batch from (null: the first)", type=str,
                               names="sources")}
AMATEUR = {**_training(3, 120, 32, 2e-3, "adamw"), "sources": SOURCES,
           "contrastive_weight": _weight(0.5, "weight of the contrastive loss over two views (0: off)"),
           "temperature": _positive(0.2, "NT-Xent temperature"),
           "projection_dim": _count(64, "width of the contrastive projection"), **SCHEDULE}
EXPERT = {**_training(2, 20, 64, 5e-4, "adamw"), "sources": SOURCES, **SCHEDULE}
GENERALIST = {**_training(2, 30, 64, 1e-3, "adamw"),
              "temperature": _positive(2.0, "distillation temperature"),
              "label_weight": _weight(1.0, "weight of the labels' cross-entropy"),
              "logit_weight": _weight(1.0, "weight of the experts' logits (KL)"),
              "feature_weight": _weight(1.0, "weight of the experts' features (MSE)"), **SCHEDULE}
DOWNSTREAM = {"fraction": Setting(0.1, "fraction of each task's training labels used", gt=0, le=1),
              "epochs": _positive(100, "linear-probe passes over the labels used"),
              "batch_size": _count(64, "images per step"),
              "lr": _positive(0.01, "linear-probe learning rate"),
              "momentum": Setting(0.9, "SGD momentum", ge=0, lt=1),
              "weight_decay": _weight(1e-3, "linear-probe weight decay"),
              "optimizer": Setting("sgd", "linear-probe optimiser", choices=OPTIMIZERS),
              "tasks": Setting(None, "downstream tasks, a list or comma-separated (null: all)", names="tasks"),
              "backbone": Setting("generalist,amateur", "the first stage that left weights is adapted"),
              "finetune_steps": _count(0, "steps of full fine-tuning after the probe (0: probe only)", low=0),
              "finetune_lr": _positive(1e-3, "fine-tuning learning rate"),
              # baselines for INTERN's data-efficiency claim: adapted with 100% of the data, and from scratch on
              # 100% for scratch_epochs epochs (scratch_max_steps: an optional cap, 0 for none)
              "adapted_full": Setting(False, "also adapt with 100% of the labels"),
              "from_scratch": Setting(False, "also train the architecture from scratch on 100%"),
              "scratch_epochs": _positive(30, "from-scratch passes; inf: exactly scratch_max_steps", finite=False),
              "scratch_max_steps": _count(0, "cap on the from-scratch steps (0: none)", low=0),
              "scratch_lr": _positive(2e-3, "from-scratch learning rate"), **SCHEDULE}
SUPERNET = {"path": Setting("", "the supernet checkpoint (metanet supernet train)"),
            "calibration_batches": _count(4, "batches that re-estimate BatchNorm statistics"),
            "batch_size": _count(64, "images per calibration batch"),
            "test": Setting(False, "also report the test split")}


def check_steps(stage: str, config: dict, setup: dict, epochs: str = "epochs", max_steps: str = "max_steps",
                when: str | None = None) -> None:
    """Unbounded epochs train exactly the steps asked: refused without a step cap, before any trial."""
    if (when is None or config[when]) and config[epochs] == float("inf") and not config[max_steps]:
        raise ConfigError(f"{stage}.{epochs}: inf trains exactly {stage}.{max_steps} steps; set "
                          f"{stage}.{max_steps} above 0")


@hookimpl
def metanet_register_stages(register):
    register("zero-cost", "metanet.plugins.stages.zero_cost:run", defaults=ZERO_COST, score_metric="score",
             description="training-free score at init (naswot or grad_norm)")
    register("amateur", "metanet.plugins.stages.amateur:run", defaults=AMATEUR, trains_backbone=True, score_metric="acc",
             fidelity=True, check=partial(check_steps, "amateur"),
             description="multi-source pre-training: one head per label source + contrastive views; scores by "
                         "validation accuracy (the mean over sources)")
    register("expert", "metanet.plugins.stages.expert:run", defaults=EXPERT, fidelity=True,
             check=partial(check_steps, "expert"),
             description="one expert per source, fine-tuned from the amateur weights")
    register("generalist", "metanet.plugins.stages.generalist:run", defaults=GENERALIST, trains_backbone=True, fidelity=True,
             check=partial(check_steps, "generalist"),
             description="multi-teacher distillation of the experts (logits + features) into one model")
    register("downstream", "metanet.plugins.stages.downstream:run", defaults=DOWNSTREAM,
             check=partial(check_steps, "downstream", epochs="scratch_epochs", max_steps="scratch_max_steps",
                           when="from_scratch"),
             description="frozen backbone + linear probe on 10% of each held-out task's labels (GV-B)")
    register("supernet", "metanet.plugins.stages.supernet_scoring:run", defaults=SUPERNET, trains_backbone=True,
             check="metanet.plugins.stages.supernet_scoring:check",
             description="weights inherited from a trained supernet (metanet supernet train), BN recalibrated")
