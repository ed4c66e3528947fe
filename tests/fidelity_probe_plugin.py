"""A strategy plugin that records what NNI's strategy side receives: random proposals, and every final metric
the engine (through the middlewares) hands back (used by tests/test_fidelity.py, loaded with -p as a user's
plugin would be)."""
from metanet import hookimpl

RECEIVED: list[tuple[dict, float]] = []  # (the proposal's choices, the metric the strategy got)


def _recording(seed=None, **options):
    from nni.nas.execution.event import ModelEventType
    from nni.nas.strategy import Random

    class Recording(Random):
        def _initialize(self, model_space, engine):
            engine.register_model_event_callback(ModelEventType.FinalMetric, self._record)
            return super()._initialize(model_space, engine)

        def _record(self, event):
            RECEIVED.append((dict(event.model.sample), event.metric))

    return Recording(seed=seed, dedup=False)


@hookimpl
def metanet_register_strategies(register):
    register("recording", _recording, description="random proposals; records the metrics it receives")
