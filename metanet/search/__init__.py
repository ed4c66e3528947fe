"""The search: the driver that checks everything before a run exists and runs NNI experiments under FLOP
budgets (:mod:`.driver`), the NNI adapter with the budget screen and the middlewares (:mod:`.nni_adapter`),
remote machines (:mod:`.remote`), multi-fidelity scheduling (:mod:`.fidelity`), one trial and its rungs
(:mod:`.trial`), proxy-check and its noise ceiling (:mod:`.proxy_check`), and what a search reports
(:mod:`.report`, :mod:`.progress`).

May import: every package before it (:mod:`metanet.errors`, :mod:`metanet.plugin`, :mod:`metanet.data`,
:mod:`metanet.search_spaces`, :mod:`metanet.train`, :mod:`metanet.evaluate`, :mod:`metanet.runs`).

The Python API of ``metanet search``: ``run_search(SearchConfig.from_dict({...}))``.
"""
_EXPORTS = {"run_search": "metanet.search.driver", "check_config": "metanet.search.driver",
            "check_data": "metanet.search.driver", "check_engine": "metanet.search.driver",
            "stage_setup": "metanet.search.driver", "SearchConfig": "metanet.runs.config",
            "proxy_check": "metanet.search.proxy_check", "summarize": "metanet.search.report"}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metanet.search' has no attribute {name!r}")
