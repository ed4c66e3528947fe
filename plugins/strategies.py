"""Built-in plugin: NNI 3.0 search strategies (random, regularized evolution, TPE, PPO)."""
from metanet.hookspecs import hookimpl
from metanet.quiet import quiet


def _random(seed=None, **options):
    with quiet():
        from nni.nas.strategy import Random
    return Random(seed=seed, **options)


def _evolution(seed=None, population_size=8, sample_size=4, mutation_prob=0.1, **options):
    with quiet():
        from nni.nas.strategy import RegularizedEvolution
    return RegularizedEvolution(population_size=population_size, sample_size=sample_size,
                                mutation_prob=mutation_prob, seed=seed, **options)


def _tpe(seed=None, **options):
    with quiet():
        from nni.nas.strategy import TPE
    return TPE(**options)


def _ppo(seed=None, samples_per_update=4, **options):
    try:
        with quiet():
            import gym  # noqa: F401
            import tianshou  # noqa: F401
    except ImportError:
        raise RuntimeError("strategy 'ppo' needs gym==0.26.2 and tianshou==0.4.11 "
                           "(pip install --no-deps gym==0.26.2 tianshou==0.4.11; see README)") from None
    with quiet():
        from nni.nas.strategy import PolicyBasedRL
    return PolicyBasedRL(samples_per_update=samples_per_update, **options)


@hookimpl
def metanet_register_strategies(register):
    register("random", _random, description="NNI Random: uniform proposals")
    register("evolution", _evolution, description="NNI RegularizedEvolution (aging evolution)")
    # NNI's TPE reads the space as a legacy HPO search space, which has no constraints.
    register("tpe", _tpe, description="NNI TPE (tree-structured Parzen estimator)", constraints=False)
    register("ppo", _ppo, description="NNI PolicyBasedRL: PPO over the choices, as INTERN searched MetaNet")
