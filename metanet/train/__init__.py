"""Where and how candidates train: the evaluation's Lightning Fabric runtime (:mod:`.runtime`: device,
precision, data-parallel ranks), the training loops the stages share (:mod:`.loop`: seeded resumable batch
streams, schedules, the stage trainer a multi-fidelity search continues, heads, accuracy), seeds derived from
names (:mod:`.seeds`), the optimisers and schedules it takes by name (:mod:`.names`, light: stage schemas list
them) and the weight-sharing supernet's training (:mod:`.supernet_training`).

May import: :mod:`metanet.errors`, :mod:`metanet.plugin`, :mod:`metanet.data`, :mod:`metanet.search_spaces`,
:mod:`metanet.atomic` (atomic files, for checkpoints).
"""
