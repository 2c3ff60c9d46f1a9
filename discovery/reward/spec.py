"""The rule part of a reward-family job (task kind ``reservoir-motor``): which library terms, which motor task, the
reservoir size, the search and score protocols, the reward baseline's and eligibility trace's time constants and
the CMA-ES budget (docs/reward.md#the-job-spec)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Protocol = Literal["full", "shortened", "fast"]


class RewardRuleSpec(BaseModel):
    """ΔW = Σ_k θ_k M_k post_k pre_kᵀ over the reward library (rules.reward; ids or names, or the pool "reward" = the
    18 terms without the supervised error, the default, or "reward_supervised" = all 24). The search runs on
    ``search_protocol`` (periods overridable for tests), the front is scored on ``score_protocol``; θ is fitted by
    CMA-ES (``popsize`` × ``generations`` per added term, the ``top_m`` best-screened terms tried in lockstep)."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["reward"] = "reward"
    terms: list[str] | None = None
    theta_init: dict[str, float] | None = None
    pool: Literal["reward", "reward_supervised"] | None = None
    motor_task: Literal[1, 2] = Field(1, description="1: draw the butterfly; 2: the two-joint arm")
    N: int = Field(200, ge=10, le=2000, description="reservoir units")
    search_protocol: Protocol = "fast"
    score_protocol: Protocol = "shortened"
    periods_train: int | None = Field(None, ge=1, le=20, description="overrides both protocols' training periods")
    periods_test: int | None = Field(None, ge=1, le=10, description="overrides both protocols' test periods")
    period_steps: int | None = Field(None, ge=50, le=50_000, description="overrides both protocols' period length")
    reward_tau: float = Field(5.0, ge=1.0, le=1e5, description="time constant (steps) of the running mean R̄")
    trace_tau: float = Field(0.0, ge=0.0, le=1e5, description="eligibility trace time constant (steps; 0: none)")
    shaping: Literal["quartic", "none"] = Field("quartic", description="R − R̄ enters as sign·|·|^{1/4} (the "
                                                                       "seed's shaping) or linearly")
    grid: list[float] = Field(default_factory=lambda: [1.0, 4.0, 16.0], min_length=1, max_length=8)
    popsize: int = Field(6, ge=2, le=64)
    generations: int = Field(4, ge=1, le=100)
    top_m: int = Field(3, ge=1, le=24)
    search_seeds: int = Field(2, ge=1, le=16)
    eval_seeds: int = Field(3, ge=1, le=32)

    @model_validator(mode="before")
    @classmethod
    def _pool_as_terms(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("terms"), str):
            data = {**data, "pool": data["terms"], "terms": None}
        return data

    @model_validator(mode="after")
    def _resolve_terms(self) -> RewardRuleSpec:
        from rules.reward import REWARD_POOLS, REWARD_TERMS, reward_term
        from rules.terms import POOLS

        if self.terms is None or (self.terms == POOLS["paper3"] and not self.theta_init):  # the feedforward default
            self.terms = list(REWARD_POOLS[self.pool or "reward"])
        try:
            self.terms = [reward_term(t).id for t in self.terms]
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        if not self.terms or len(set(self.terms)) != len(self.terms):
            raise ValueError("the rule needs at least one term, and distinct terms")
        if self.motor_task != 1 and any(REWARD_TERMS[t].supervised for t in self.terms):
            raise ValueError("the output error z − f needs the target output: only motor task 1 is supervised")
        for k in self.theta_init or {}:
            try:
                known = reward_term(k).id in self.terms
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
            if not known:
                raise ValueError(f"theta_init names {k!r}, which is not one of the terms")
        return self

    def initial_theta(self) -> dict[str, float]:
        """θ at the start: 0 for every term, overridden by ``theta_init`` (ids or names)."""
        from rules.reward import reward_term

        init = {t: 0.0 for t in self.terms or []}
        for k, v in (self.theta_init or {}).items():
            init[reward_term(k).id] = float(v)
        return init
