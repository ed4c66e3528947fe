"""A search run on disk: its directory with one writer (:mod:`.directory`: the lock, the kept weights, the
ranking), the durable trial store (:mod:`.store`: SQLite, a row written the moment a trial ends), the search's
options parsed once with errors naming the field (:mod:`.config`) and YAML/TOML/JSON files read safely
(:mod:`.files`). Nothing here needs torch: ``metanet results`` reads a run without it.

May import: :mod:`metanet.errors`, :mod:`metanet.budget`, :mod:`metanet.atomic` (locks and atomic files), and,
to parse a ``--score``, :mod:`metanet.evaluate` (lazily).
"""
