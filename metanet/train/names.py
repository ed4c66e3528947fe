"""The optimisers and learning-rate schedules the training loop takes, by name: importable without torch, so
that a stage's settings schema lists them (``metanet plugins``, ``--set amateur.optimizer=...``)."""

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("cosine", "constant")
