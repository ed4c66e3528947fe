"""Proxy fidelity: do a search's scores predict what a longer or larger evaluation says?

``metanet proxy-check RUN --top K --set amateur.max_steps=400 ...`` re-evaluates K finished trials
of a run (its best, and an even spread over the rest of the ranking) with the run's stages and the
overrides, and reports Kendall's tau and Spearman's rho between the search-time scores and the
re-evaluated ones (both validation scores). A low tau says the proxy cannot tell these
architectures apart: make it longer or larger before spending GPU-weeks on a search.

The re-evaluations are a run directory of their own inside the run (``proxy-check-<key>/``, the key
derived from the overrides): ``metanet results`` reads it, and the same command again resumes it
(finished re-evaluations are kept, in-flight ones run again).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metanet.errors import ConfigError, RunError
from metanet.runs.directory import RunDir
from metanet.runs.config import SearchConfig, merge_settings
from metanet.runs.store import OK, RUNNING

MIN_TRIALS = 3


@dataclass
class ProxyCheck:
    run_dir: Path
    check_dir: Path
    kendall_tau: float | None
    spearman_rho: float | None
    trials: list[dict[str, Any]]
    kendall_tau_ci: tuple[float, float] | None = None   # 95% bootstrap interval over the architectures
    noise: dict[str, Any] | None = None                 # --noise-ceiling: the proxy against itself, SNR, verdict

    def to_json(self) -> dict[str, Any]:
        return {"kendall_tau": self.kendall_tau, "spearman_rho": self.spearman_rho, "trials": self.trials,
                "run_dir": str(self.run_dir), "check_dir": str(self.check_dir),
                "kendall_tau_ci": list(self.kendall_tau_ci) if self.kendall_tau_ci else None,
                "noise_ceiling": self.noise}

    def table(self) -> str:
        from metanet.budget import format_flops
        lines = [f"{'id':>4} {'budget':>7} {'FLOPs':>8} {'search':>8} {'rank':>5} {'recheck':>8} {'rank':>5}"]
        for t in self.trials:
            re = "-" if t["recheck_score"] is None else f"{t['recheck_score']:.4f}"
            lines.append(f"{t['id']:>4} {format_flops(t['budget']):>7} {format_flops(t['flops']):>8} "
                         f"{t['search_score']:>8.4f} {t['search_rank']:>5} {re:>8} {t['recheck_rank'] or '-':>5}")
        fmt = (lambda v: "undefined (a constant ranking)" if v is None else f"{v:+.3f}")
        ci = f" [95% CI {self.kendall_tau_ci[0]:+.2f}, {self.kendall_tau_ci[1]:+.2f}]" if self.kendall_tau_ci else ""
        lines.append(f"Kendall's tau {fmt(self.kendall_tau)}{ci}, Spearman's rho {fmt(self.spearman_rho)} "
                     f"over {sum(t['recheck_score'] is not None for t in self.trials)} trials")
        n = self.noise
        if n:
            ci = f" [95% CI {n['kendall_tau_ci'][0]:+.2f}, {n['kendall_tau_ci'][1]:+.2f}]" if n["kendall_tau_ci"] else ""
            lines.append(f"noise ceiling (the search's proxy against itself under seed {n['seed']}): Kendall's tau "
                         f"{fmt(n['kendall_tau'])}{ci}")
            if n["snr"] is not None:
                binomial = f"; binomial alone ±{n['binomial_se']:.4f}" if n["binomial_se"] is not None else ""
                lines.append(f"signal/noise {n['snr']:.2f}: scores spread {n['arch_spread']:.4f} across architectures, "
                             f"{n['seed_noise']:.4f} across seeds of one{binomial}")
            lines.append(f"verdict: {n['verdict']}")
        return "\n".join(lines)


def select_trials(ranked: list[dict], k: int) -> list[dict]:
    """The best ``ceil(k/2)`` of ``ranked`` (best first), then an even spread over the rest down to the worst."""
    if k >= len(ranked):
        return list(ranked)
    top = math.ceil(k / 2)
    rest, n = ranked[top:], k - top
    picks = sorted({round(i * (len(rest) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [len(rest) - 1]
    return ranked[:top] + [rest[i] for i in picks]


def rank_correlations(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    """Kendall's tau-b and Spearman's rho (ties averaged); None where a side is constant."""
    from scipy.stats import kendalltau, spearmanr
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    tau = float(kendalltau(x, y).statistic)
    rho = float(spearmanr(x, y).statistic)
    return (tau if math.isfinite(tau) else None), (rho if math.isfinite(rho) else None)


def bootstrap_tau(x: list[float], y: list[float], draws: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """The 95% percentile interval of Kendall's tau over ``draws`` resamples of the architectures (pairs drawn
    with replacement; resamples with a constant side are skipped); None with fewer than 4 pairs."""
    import random

    from scipy.stats import kendalltau
    if len(x) < 4:
        return None
    rng, taus = random.Random(seed), []
    for _ in range(draws):
        idx = [rng.randrange(len(x)) for _ in x]
        a, b = [x[i] for i in idx], [y[i] for i in idx]
        if len(set(a)) > 1 and len(set(b)) > 1:
            t = kendalltau(a, b).statistic
            if math.isfinite(t):
                taus.append(float(t))
    if len(taus) < draws // 10:
        return None
    taus.sort()
    return taus[int(0.025 * (len(taus) - 1))], taus[int(0.975 * (len(taus) - 1))]


def _sd(values: list[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / max(1, len(values) - 1))


SNR_TO_RANK = 2.0   # scores must spread at least twice as much across architectures as across seeds
CEILING_TO_RANK = 0.3


def noise_verdict(pairs: list[tuple[float, float]], ses: list[float], steps: int | None, eta: int = 3) -> dict:
    """From (score, score under another seed) per architecture: the spread across architectures, the noise
    across seeds, their ratio (SNR; about 1 when the scores are noise) and a verdict in plain words."""
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    seed_noise = _sd([x - y for x, y in pairs]) / math.sqrt(2) if len(pairs) >= 2 else None
    spread = _sd([(x + y) / 2 for x, y in pairs]) if len(pairs) >= 2 else None
    snr = spread / seed_noise if spread is not None and seed_noise else None
    binomial = sorted(ses)[len(ses) // 2] if ses else None
    tau, _ = rank_correlations(a, b)
    ranks = tau is not None and tau >= CEILING_TO_RANK and (snr is None or snr >= SNR_TO_RANK)
    if ranks:
        verdict = (f"the proxy agrees with itself under another seed (tau {tau:+.2f}, signal/noise "
                   f"{snr:.1f}): its ranking of these architectures is more than noise")
    else:
        asks = []
        if steps:
            asks.append(f">= {eta * steps} steps")
        mean = sum(a + b) / (2 * len(pairs))
        if spread and 0 < mean < 1 and binomial is not None:
            needed = math.ceil(4 * mean * (1 - mean) / spread ** 2)  # binomial SE <= half the spread
            asks.append(f">= {needed:,} validation images")
        against = f"tau against itself {tau:+.2f}" if tau is not None else "a constant ranking"
        against += f", signal/noise {snr:.1f}" if snr is not None else ""
        verdict = ("cannot rank this space at this budget" + (f": give it {' or '.join(asks)}" if asks else "")
                   + f" ({against})")
    return {"kendall_tau": tau, "snr": snr, "arch_spread": spread, "seed_noise": seed_noise, "binomial_se": binomial,
            "verdict": verdict}


def check_config(cfg: SearchConfig, sets: dict[str, dict], proxy_resolution: int | None,
                 repeats: int | None, seed: int | None = None, stages: list[str] | None = None) -> SearchConfig:
    """The run's config with the overrides: same stages, data and score; a longer/larger schedule, or
    (``seed``) the same proxy with another data split and initialisation, whose agreement with the
    search is the most any proxy of this noise level can show; or (``stages``) other stages altogether,
    e.g. stand-alone training against supernet scores, scored by their own default metric."""
    from metanet.plugin.manager import registry
    from metanet.evaluate.candidate import check_stages, preflight_stages
    new_stages = list(stages) if stages else list(cfg.stages)
    unknown = [s for s in sets if s not in new_stages]
    if unknown:
        whose = "the stages" if stages else "the run's stages"
        raise ConfigError(f"set: stage {unknown[0]!r} is not among {whose} {','.join(new_stages)}", param="set")
    settings = merge_settings({k: v for k, v in cfg.settings.items() if k in new_stages}, sets)
    pm = registry(cfg.plugins)
    configs = check_stages(pm, new_stages, settings)
    out = replace(cfg, stages=new_stages, settings=settings, score=cfg.score if new_stages == cfg.stages else None,
                  proxy_resolution=proxy_resolution or cfg.proxy_resolution, repeats=repeats or cfg.repeats,
                  seed=cfg.seed if seed is None else seed, engine="sequential", out=None, final_stages=[])
    preflight_stages(pm, new_stages, configs, out.stage_setup())
    from metanet.evaluate.candidate import step_size
    from metanet.search_spaces.memory import check_image_fits
    check_image_fits(out.proxy_resolution, step_size(pm, new_stages, configs)[0], accelerator=out.accelerator)
    return out


def _key(cfg: SearchConfig) -> str:
    what = {"settings": cfg.settings, "proxy_resolution": cfg.proxy_resolution, "repeats": cfg.repeats,
            "seed": cfg.seed}
    if cfg.score is None:  # re-evaluated with other stages (older check directories keep their keys)
        what["stages"] = cfg.stages
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]


def proxy_check(run_dir: str | Path, top: int, sets: dict[str, dict] | None = None,
                proxy_resolution: int | None = None, repeats: int | None = None, budget: int | None = None,
                seed: int | None = None, echo=lambda *_: None, stages: list[str] | None = None,
                final: bool = False, noise_ceiling: bool = False) -> ProxyCheck:
    """Re-evaluate ``top`` finished trials of the run (see the module's docstring). ``final``: the second
    phase of a two-phase search instead: exactly the ``top`` best, into ``RUN/final-<key>/``.

    ``noise_ceiling``: also re-evaluate them with the search's own proxy under another seed (its own
    resumable check directory); the result then holds that tau (the most a proxy of this noise can agree
    with anything), the signal-to-noise ratio and a verdict (:func:`noise_verdict`)."""
    least = 1 if final else MIN_TRIALS
    if top < least:
        raise ConfigError(f"top: need at least {MIN_TRIALS} trials to correlate rankings, got {top}", param="top")
    run = RunDir.open(run_dir)
    cfg = run.config
    from metanet.writable import check_creatable
    check_creatable(run.path, "run_dir", RunError)  # its re-evaluations are kept in the run, resumable
    if budget is not None and budget not in cfg.flops:
        raise ConfigError(f"flops: the run has no budget {budget} (budgets: {', '.join(map(str, cfg.flops))})",
                          param="flops")
    check_cfg = check_config(cfg, sets or {}, proxy_resolution, repeats, seed, stages)
    rows = [r for r in run.ranked(budget, status=OK, store=run.read_store()) if r["score"] is not None]
    if len(rows) < least:
        raise RunError(f"{run.path}: {len(rows)} finished trial(s); proxy-check needs at least {MIN_TRIALS}")
    chosen = rows[:top] if final else select_trials(rows, top)

    result = _run_check(run, check_cfg, chosen, "final" if final else "proxy-check", echo)
    if noise_ceiling and not final:
        other = cfg.seed + 1 if seed is None or seed == cfg.seed else seed + 1
        ceiling = _run_check(run, check_config(cfg, {}, None, None, other), chosen, "proxy-check", echo)
        pairs = [(t["search_score"], c["recheck_score"]) for t, c in zip(result.trials, ceiling.trials)
                 if c["recheck_score"] is not None]
        ses = [r["metrics"].get("score_se") for r in chosen if r["metrics"].get("score_se") is not None]
        result.noise = {"seed": other, "check_dir": str(ceiling.check_dir),
                        "kendall_tau_ci": bootstrap_tau([p[0] for p in pairs], [p[1] for p in pairs]),
                        **noise_verdict(pairs, ses, proxy_steps(cfg))}
    from metanet.atomic import write_atomic
    write_atomic(result.check_dir / f"{result.check_dir.name.rsplit('-', 1)[0].replace('-', '_')}.json",
                 json.dumps(result.to_json(), indent=2))
    return result


def proxy_steps(cfg: SearchConfig) -> int | None:
    """The training steps the search's proxy takes (the longest of its training stages; a ladder's top)."""
    if cfg.fidelity is not None:
        return cfg.fidelity[1]
    from metanet.plugin.manager import registry
    pm = registry(cfg.plugins)
    steps = [pm.stage(s).config(cfg.settings.get(s)).get("max_steps") for s in cfg.stages if pm.stage(s).fidelity]
    steps = [v for v in steps if isinstance(v, int) and v > 0]
    return max(steps) if steps else None


def _run_check(run: RunDir, check_cfg: SearchConfig, chosen: list[dict], kind: str, echo) -> ProxyCheck:
    check_dir = run.path / f"{kind}-{_key(check_cfg)}"
    if (check_dir / RunDir.CONFIG).exists():
        check = RunDir.open(check_dir)
        check.acquire()
    else:
        check = RunDir.create(replace(check_cfg, out=str(check_dir), trials=len(chosen)))  # locked
    try:
        return _recheck(run, check, chosen, echo)
    finally:
        check.release()


def _recheck(run: RunDir, check: RunDir, chosen: list[dict], echo) -> ProxyCheck:
    from metanet.search_spaces.spec import ArchSpec
    from metanet.search.trial import evaluate_spec, trial_settings

    store = check.store
    for row in store.trials(status=RUNNING):  # in flight when a previous check was killed
        store.delete(row["id"])
    out = []
    for i, row in enumerate(chosen, 1):
        settings = trial_settings(check.config, check.path, row["budget"])
        echo(f"{check.path.name}: trial {row['id']} ({i}/{len(chosen)})")
        _, rechecked = evaluate_spec(ArchSpec.from_dict(row["spec"]), settings)
        full = {r["id"]: r for r in store.trials(row["budget"])}.get(rechecked["id"], {})
        out.append({"id": row["id"], "budget": row["budget"], "flops": row["flops"], "spec": row["spec"],
                    "search_score": row["score"], "search_test_score": row.get("test_score"),
                    "recheck_id": rechecked["id"], "recheck_status": rechecked["status"],
                    "recheck_score": rechecked["score"] if rechecked["status"] == OK else None,
                    "recheck_test_score": full.get("test_score"), "recheck_error": full.get("error")})
    _ranks(out, "search_score", "search_rank")
    _ranks(out, "recheck_score", "recheck_rank")
    pairs = [(t["search_score"], t["recheck_score"]) for t in out if t["recheck_score"] is not None]
    tau, rho = rank_correlations([p[0] for p in pairs], [p[1] for p in pairs])
    return ProxyCheck(run.path, check.path, tau, rho, out,
                      bootstrap_tau([p[0] for p in pairs], [p[1] for p in pairs]))


def _ranks(rows: list[dict], key: str, into: str) -> None:
    scored = sorted((r for r in rows if r[key] is not None), key=lambda r: -r[key])
    for r in rows:
        r[into] = None
    for i, r in enumerate(scored, 1):
        r[into] = i
