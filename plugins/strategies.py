"""Built-in plugin: NNI 3.0 search strategies (random, regularized evolution, TPE, PPO)."""
import time

from metanet.plugin.hookspecs import hookimpl
from metanet.quiet import quiet


# Each factory names the options it takes (NNI's strategies swallow unknown keyword arguments), so a misspelt
# --config strategy_options key is refused before the run (metanet.search.driver.check_config).
def _random(seed=None, dedup=True):
    with quiet():
        from nni.nas.strategy import Random
    return Random(seed=seed, dedup=dedup)


def _evolution(seed=None, population_size=24, sample_size=6, mutation_prob=0.15, crossover=False, dedup=True):
    with quiet():
        from nni.nas.strategy import RegularizedEvolution
    return RegularizedEvolution(population_size=population_size, sample_size=sample_size,
                                mutation_prob=mutation_prob, crossover=crossover, dedup=dedup, seed=seed)


def _tpe(seed=None, tpe_args=None):
    with quiet():
        import nni
        from nni.nas.strategy import TPE

    class BusyTPE(TPE):
        """NNI's TPE, less the one-second sleep NNI's HPO strategies take after every proposal.

        With screening, most proposals never reach a worker, so that sleep made a 100-trial search
        last many minutes of idling; here the loop waits only while no worker is free.
        """

        def _run(self) -> None:
            space = {label: mutable.as_legacy_dict() for label, mutable in self.model_space.simplify().items()}
            with self._thread_lock:
                self.tuner.update_search_space(space)
            while self.engine.budget_available():
                if not self.engine.idle_worker_available():
                    time.sleep(0.05)
                    continue
                with self._thread_lock:
                    try:
                        param = self.tuner.generate_parameters(self._model_count)
                    except nni.NoMoreTrialError:
                        break
                    model = self.model_space.freeze(param)
                    self._model_to_id[model] = self._model_count
                    self._model_count += 1
                self.engine.submit_models(model)

    # NNI's TPE tuner minimises unless told otherwise; metanet's scores are maximised.
    return BusyTPE(optimize_mode="maximize", seed=seed, tpe_args=tpe_args)


def _ppo(seed=None, samples_per_update=10, lr=3e-3, entropy=0.1, hidden_dim=64, replay_buffer_size=None,
         update_kwargs=None):
    try:
        with quiet():
            import gym  # noqa: F401
            import tianshou  # noqa: F401
    except ImportError:
        raise RuntimeError("strategy 'ppo' needs gym==0.26.2 and tianshou==0.4.11 "
                           "(pip install --no-deps gym==0.26.2 tianshou==0.4.11; see README)") from None
    with quiet():
        from nni.nas.strategy import PolicyBasedRL
    import torch
    if seed is not None:  # the policy network and tianshou's sampling draw from torch's and numpy's generators
        import numpy as np
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)

    def policy_fn(env):
        # NNI's default policy (LSTM over the choices, PPO) with a higher learning rate and entropy bonus:
        # with NNI's (1e-4, 0.01) the policy settled on its first good region and stopped exploring
        # (benchmarks/search_efficiency.py: best after 25 trials = best after 100).
        from nni.nas.strategy._rl_impl import Actor, Critic, Preprocessor
        from tianshou.policy import PPOPolicy
        net = Preprocessor(env.observation_space, hidden_dim)
        actor, critic = Actor(env.action_space, net), Critic(net)
        optim = torch.optim.Adam(set(actor.parameters()).union(critic.parameters()), lr=lr)
        return PPOPolicy(actor, critic, optim, torch.distributions.Categorical, discount_factor=1.0,
                         action_space=env.action_space, ent_coef=entropy, reward_normalization=True)

    # one PPO update (5 epochs over the buffer) per collection: NNI's default runs it 5 times over, 25
    # epochs on 10 trajectories, which overfits the policy to its first rewards
    if update_kwargs is None:
        update_kwargs = {"batch_size": 32, "repeat": 5, "update_times": 1}
    return PolicyBasedRL(samples_per_update=samples_per_update, policy_fn=policy_fn,
                         replay_buffer_size=replay_buffer_size, update_kwargs=update_kwargs)


@hookimpl
def metanet_register_strategies(register):
    register("random", _random, description="NNI Random: uniform proposals")
    register("evolution", _evolution, description="NNI RegularizedEvolution (aging evolution)")
    # NNI's TPE reads the space as a legacy HPO search space, which has no constraints.
    register("tpe", _tpe, description="NNI TPE (tree-structured Parzen estimator)", constraints=False)
    register("ppo", _ppo, description="NNI PolicyBasedRL: PPO over the choices, as INTERN searched MetaNet")
