"""Pydantic models of a discovery job, shared by the engine, the workers, the service and the CLI.

A job = network (widths L+1, softplus β, feedback mode) + task (data set, M-way K-shot Q-query) + rule family
(the terms F^r whose coefficients θ_r are meta-learned) + meta-training (episodes, Adam lr, λ‖θ‖₁, gradient mode)
+ an optional sweep (Ray Tune trials) + resources.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from discovery.reward.spec import RewardRuleSpec
from discovery.transfer.spec import TransferSpec
from rules.terms import POOLS as RULE_POOLS

FeedbackMode = Literal["bp", "fa", "dfa", "sign"]
DatasetName = Literal["mnist5k", "digits", "digits28", "emnist-balanced", "synthetic"]
#: An uploaded data set (``POST /api/datasets``), named by its id: ``"upload:<id>"``.
UPLOAD_PATTERN = r"^upload:[1-9][0-9]{0,9}$"
UploadRef = Annotated[str, Field(pattern=UPLOAD_PATTERN, examples=["upload:1"],
                                 description="an uploaded data set: 'upload:<id>' (GET /api/datasets)")]
GradMode = Literal["forward", "reverse", "auto"]

#: Term pools (ids of rules.terms): paper3, bio10, the generated 16-term library and the 43-term gated library.
POOLS: dict[str, list[str]] = RULE_POOLS
PoolName = Literal["paper3", "bio10", "library", "library_gated"]
RecurrentPoolName = Literal["rec4", "rec5", "rec_library"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkSpec(_Strict):
    """Fully connected net without biases: widths = [n_0, ..., n_L]; softplus(β) hidden units, logits out."""

    widths: list[int] = Field(default_factory=lambda: [784, 170, 130, 100, 70, 10], min_length=2, max_length=33)
    beta: float = Field(10.0, gt=0, le=1000)
    feedback: FeedbackMode = "fa"
    init_scale: float = Field(1.0, gt=0, le=100, description="multiplier of the Xavier-uniform range r")

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v):
            raise ValueError("every width must be >= 1")
        return v

    @property
    def depth(self) -> int:
        """Number of weight layers L."""
        return len(self.widths) - 1


class UploadSource(_Strict):
    """Where the engine reads an uploaded data set (``task.dataset = "upload:<id>"``): the content-addressed file
    ``<dir>/<sha256>.npz`` (discovery.data.uploads). The service fills ``name`` and ``sha256`` when the job is
    submitted (they stay in the job's spec as its provenance) and ``dir`` when it hands the job to the workers;
    without ``dir`` the engine reads the folder ``PLASTICITY_DATASET_DIR``."""

    name: str | None = Field(None, max_length=64)
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="checksum of the data set's content")
    dir: str | None = Field(None, max_length=4096, description="server folder of the file (set by the server)")


class TaskSpec(_Strict):
    """Episodes of M classes, K online training samples and Q query samples per class.

    ``kind = "fixedpoint-mnist"`` targets the recurrent fixed-point setting of docs/science.md S2 instead: widths
    [784, N, 10] give N recurrent units, and the rule's terms are recurrent directions (dW1, dW3, dW4, ...).

    ``kind = "pca"`` is the unsupervised family (discovery.unsupervised): a linear layer y = W x, widths [64, k]
    (k outputs), trained online on centred ``digits`` (or 8×8 ``mnist5k`` patches) by an error-free Hebbian rule;
    its settings (objective, unroll, passes) sit in the rule spec (UnsupervisedRuleSpec).

    ``kind = "reservoir-motor"`` is the reward family (discovery.reward): a reservoir readout learning a motor task
    of docs/science.md S5 by a reward-modulated rule; its settings sit in the rule spec (RewardRuleSpec)."""

    kind: Literal["fewshot", "fixedpoint-mnist", "pca", "reservoir-motor"] = "fewshot"
    dataset: DatasetName | UploadRef = "mnist5k"
    ways: int = Field(5, ge=2, le=47)
    shots: int = Field(50, ge=1, le=1000)
    queries: int = Field(10, ge=1, le=1000)
    remap_labels: bool = True
    upsample: bool = False
    emnist_dir: str | None = None
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    upload: UploadSource | None = Field(None, description="an uploaded data set's checksum (set by the server)")

    @model_serializer(mode="wrap")
    def _no_upload_when_built_in(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """A built-in data set's task dumps without ``upload`` (the stored specs of earlier jobs stay as they were)."""
        data = handler(self)
        if data.get("upload") is None:
            data.pop("upload", None)
        return data

    @model_validator(mode="after")
    def _upload_fits_dataset(self) -> TaskSpec:
        if self.upload is not None and not self.dataset.startswith("upload:"):
            raise ValueError(f"task.upload belongs to an uploaded data set ('upload:<id>'), not {self.dataset!r}")
        return self


RuleFamily = Literal["feedforward", "recurrent", "unsupervised", "reward"]
#: the rule family each task kind learns (docs/science.md S3: feedforward ΔW_ℓ; S2: recurrent fixed-point ΔW; pca: the
#: unsupervised Hebbian family)
TASK_FAMILY: dict[str, RuleFamily] = {"fewshot": "feedforward", "fixedpoint-mnist": "recurrent",
                                      "pca": "unsupervised", "reservoir-motor": "reward"}


class _RuleTerms(_Strict):
    """What every rule family shares: term ids (or a pool name) and θ at the start."""

    terms: list[str] | None = None
    theta_init: dict[str, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _pool_as_terms(cls, data: object) -> object:
        """``"terms": "library"`` (a pool's name instead of a list) means ``"pool": "library"``."""
        if isinstance(data, dict) and isinstance(data.get("terms"), str):
            name = data["terms"]
            data = {**data, "pool": name, "terms": None}
        return data

    def _check_distinct(self) -> None:
        if not self.terms:
            raise ValueError("the rule family needs at least one term")
        if len(set(self.terms)) != len(self.terms):
            raise ValueError("terms must be distinct")


class RuleSpec(_RuleTerms):
    """The feedforward rule family ΔW_ℓ = Σ_r θ_r F^r_ℓ: term ids of rules.terms (or a pool name) and θ at the
    start. ``terms`` is a list of term ids, or a pool name ("library" = the generated 16-term library)."""

    family: Literal["feedforward"] = "feedforward"
    pool: PoolName | None = None

    @model_validator(mode="after")
    def _resolve_terms(self) -> RuleSpec:
        if self.terms is None:
            self.terms = list(POOLS[self.pool or "paper3"])
        self._check_distinct()
        return self

    def initial_theta(self) -> dict[str, float]:
        """θ at episode 0: the given values, else 1e-3 on F0 (pseudo-gradient) and 0 elsewhere."""
        init = {t: (1e-3 if t == "F0" else 0.0) for t in self.terms or []}
        for k, v in (self.theta_init or {}).items():
            if k not in init:
                raise ValueError(f"theta_init names {k!r}, which is not one of the terms {self.terms}")
            init[k] = float(v)
        return init


class RecurrentRuleSpec(_RuleTerms):
    """The recurrent fixed-point rule family ΔW = Σ_k θ_k F_k (docs/science.md S2): ids (or aliases) of
    rules.recurrent terms, or a pool ("rec4" by default); θ starts at the published learning rates."""

    family: Literal["recurrent"] = "recurrent"
    pool: RecurrentPoolName | None = None

    @model_validator(mode="after")
    def _resolve_terms(self) -> RecurrentRuleSpec:
        from rules.recurrent import RECURRENT_POOLS, resolve_term_ids

        if self.terms is None or (self.terms == POOLS["paper3"] and not self.theta_init):
            # no terms named (or the feedforward default of a spec stored before the family was explicit)
            self.terms = list(RECURRENT_POOLS[self.pool or "rec4"])
        self.terms = resolve_term_ids(self.terms)
        self._check_distinct()
        return self

    def initial_theta(self) -> dict[str, float]:
        """θ at episode 0: the published learning rates (rules.recurrent.DEFAULT_THETA), overridden by
        ``theta_init`` (ids or aliases)."""
        from rules.recurrent import DEFAULT_THETA, resolve_term_ids

        init = {t: DEFAULT_THETA[t] for t in self.terms or []}
        for k, v in (self.theta_init or {}).items():
            (tid,) = resolve_term_ids([k])
            if tid not in init:
                raise ValueError(f"theta_init names {k!r}, which is not one of the terms {self.terms}")
            init[tid] = float(v)
        return init


class UnsupervisedRuleSpec(_RuleTerms):
    """The unsupervised family ΔW = Σ_r θ_r F_r over the generated Hebbian library (rules.unsupervised; ids or
    names, or the pool "hebbian" = all 17 terms, the default). θ starts at 0 (or ``theta_init``). The inner loop
    runs ``unroll`` online steps per meta-training episode from W₀ with rows of norm ``init_norm``; the meta-objective
    is the reconstruction error ‖x − WᵀW x‖² (pins W Wᵀ = I) or the principal-subspace error at the end (averaged
    over ``checkpoints`` points of the unroll's second half); the front is scored after the unroll and after
    ``passes`` online passes over the training split. The search fits at ``unroll``; the selected support is refit
    alone at ``final_unroll`` (default: ``unroll``), where a longer unroll learns a smaller step η."""

    family: Literal["unsupervised"] = "unsupervised"
    pool: Literal["hebbian"] | None = None
    objective: Literal["reconstruction", "subspace"] = "reconstruction"
    unroll: int = Field(2000, ge=2, le=20_000)
    passes: int = Field(5, ge=1, le=50)
    init_norm: float = Field(1.0, gt=0, le=100)
    checkpoints: int = Field(1, ge=1, le=16)
    final_unroll: int | None = Field(None, ge=2, le=20_000)

    @model_validator(mode="after")
    def _resolve_terms(self) -> UnsupervisedRuleSpec:
        from rules.unsupervised import UNSUPERVISED_TERMS, unsupervised_term

        if self.terms is None or (self.terms == POOLS["paper3"] and not self.theta_init):
            self.terms = list(UNSUPERVISED_TERMS)
        try:
            self.terms = [unsupervised_term(t).id for t in self.terms]
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        self._check_distinct()
        return self

    def initial_theta(self) -> dict[str, float]:
        """θ at episode 0: 0 for every term, overridden by ``theta_init`` (ids or names)."""
        from rules.unsupervised import unsupervised_term

        init = {t: 0.0 for t in self.terms or []}
        for k, v in (self.theta_init or {}).items():
            tid = unsupervised_term(k).id
            if tid not in init:
                raise ValueError(f"theta_init names {k!r}, which is not one of the terms {self.terms}")
            init[tid] = float(v)
        return init


#: The rule part of a spec: one model per family, told apart by ``family`` (filled from ``task.kind`` when the
#: spec does not say it).
AnyRuleSpec = Annotated[RuleSpec | RecurrentRuleSpec | UnsupervisedRuleSpec | RewardRuleSpec,
                        Field(discriminator="family")]


class MetaSpec(_Strict):
    """Outer loop: Adam(lr) on θ, one step per meta-batch of episodes; loss = query CE + l1·Σ|θ_r|."""

    episodes: int = Field(600, ge=1, le=100_000)
    meta_batch: int = Field(1, ge=1, le=256)
    lr: float = Field(1e-3, gt=0, le=10.0)
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description=(
        "'cosine' decays Adam's learning rate from lr to lr·lr_final over the run's episodes, "
        "η_t = η (f + (1 − f)(1 + cos(π t / T))/2); long fits at a constant lr wander late (docs/results.md)"))
    lr_final: float = Field(0.1, ge=0, le=1.0, description="the cosine schedule's last lr as a fraction of lr")
    keep: Literal["last", "best"] = Field("last", description=(
        "the θ a fit returns: 'last' (after its last step) or 'best' (at the lowest moving average of the "
        "meta-train loss over keep_window steps: early stopping on meta-train episodes, never held-out ones)"))
    keep_window: int = Field(50, ge=1, le=10_000, description="the moving average's time constant, in meta-steps")
    rollback: float = Field(0.0, ge=0, le=10.0, description=(
        "cliff guard: when the meta-train loss average (keep_window) rises above (1 + rollback) × its lowest, θ "
        "returns to the θ of that lowest, Adam's moments are cleared and lr is halved (0: never)"))
    l1: float = Field(0.0, ge=0, le=1e4)
    grad_mode: GradMode = Field("auto", description=(
        "meta-gradient: 'forward' carries R tangents through the inner loop (cost grows with R); 'reverse' is one "
        "backward pass (the C adjoint kernel where the rule runs fused on CPU, else autograd through the unrolled "
        "loop); 'auto' = the adjoint kernel from 6 terms on where it can run, else forward"))
    kernel: Literal["auto", "fused", "torch"] = Field(
        "auto", description="inner loop: 'fused' = the C (or numba) CPU kernel (fa, dfa or bp feedback, rules of "
                            "gated outer products G·u vᵀ, u in y, e, 1, v in x, e_pre, 1_pre, Wᵀy, Wᵀe, plus decay: "
                            "every library term); 'torch' = batched torch ops (any rule, CPU or CUDA); "
                            "'auto' = fused where it applies")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    dtype: Literal["float32", "float64"] = "float32"
    eval_episodes: int = Field(200, ge=0, le=100_000)
    eval_every: int = Field(0, ge=0, description="evaluate on held-out episodes every N episodes (0: only at end)")
    checkpoint_every: int = Field(50, ge=1)
    max_update_norm: float = Field(1e4, gt=0, description="an inner update larger than this counts as divergence")
    term_scale: Literal["none", "norm"] = Field("none", description=(
        "per-term step size: 'norm' divides term r's Adam step by ‖F_r‖/‖F_ref‖ (measured on fresh networks, "
        "capped at 1; F_ref = pseudo_grad when in the pool, else the median term), so a term that moves W much "
        "more per unit θ (F5, F9, F3 of bio10) is not moved as far as F0 by Adam's first steps"))
    l1_mode: Literal["subgradient", "proximal"] = Field("subgradient", description=(
        "how λ‖θ‖₁ enters: 'subgradient' adds λ sign(θ) to the gradient (never exactly 0 under Adam); 'proximal' "
        "soft-thresholds φ = θ/s after each Adam step by λ times Adam's per-term step, which sets exact zeros"))
    l1_exempt: list[str] = Field(default_factory=list, max_length=64, description=(
        "term ids the L1 penalty leaves alone (glmnet's penalty factor 0), e.g. the error-driven base F0"))
    backtrack_after: int = Field(3, ge=0, le=1000, description=(
        "after this many consecutive skipped meta-steps, restore the last θ whose episodes were finite, clear Adam's "
        "moments and halve the learning rate (0: never)"))


class SweepSpec(_Strict):
    """Lists of values to sweep as Ray Tune trials; the best trial (held-out accuracy) becomes the job's rule."""

    seeds: list[int] | None = None
    lr: list[float] | None = None
    l1: list[float] | None = None

    def is_empty(self) -> bool:
        return not (self.seeds or self.lr or self.l1)


class SearchSpec(_Strict):
    """Open discovery: search the structure of the rule over the pool, not only its coefficients.

    ``forward``: greedy forward selection by meta-gradient screening (∂L/∂θ_r of every candidate at θ_r = 0 from
    the forward-mode tangents), each added term refit; ``backward``: fit the whole pool, then drop the term of the
    smallest effect |θ_r|/s_r and refit, down to one term; ``path``: a proximal-L1 path from λ_max (no term but
    F0 enters) down, warm starts, then a refit of each support without L1. The episode budget is meta.episodes; every support found is scored on the
    same held-out episodes and the simplest within the 95 % CI of the best is selected (the front)."""

    method: Literal["none", "forward", "backward", "path"] = "none"
    max_terms: int = Field(5, ge=1, le=64, description="largest support the forward search grows (front size)")
    screen_episodes: int = Field(16, ge=2, le=256,
                                 description="episodes per screening of the candidates (the score test needs ≥ 2)")
    n_lambda: int = Field(5, ge=1, le=20, description="λ values on the proximal path")
    front_eval_episodes: int | None = Field(None, ge=1, le=100_000, description=(
        "held-out episodes per front point (default meta.eval_episodes)"))

    @property
    def active(self) -> bool:
        return self.method != "none"


#: The smallest nonzero resource quantity Ray schedules (its fractional precision).
RAY_RESOURCE_UNIT = 0.0001


class ResourceSpec(_Strict):
    """What the job's Ray actor reserves; fractions finer than Ray's precision (0.0001) are refused here, not at
    submission."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: float = Field(0.0, ge=0, le=8, description="0, or a (fractional) number of GPUs of at least 0.0001",
                            json_schema_extra=lambda s: s.update(anyOf=[
                                {"type": "number", "const": 0},
                                {"type": "number", "minimum": RAY_RESOURCE_UNIT, "maximum": 8}]) or [
                                s.pop(k, None) for k in ("type", "minimum", "maximum")])
    num_cpus: float = Field(1.0, ge=RAY_RESOURCE_UNIT, le=64)

    @field_validator("num_gpus")
    @classmethod
    def _gpu_precision(cls, v: float) -> float:
        if 0 < v < RAY_RESOURCE_UNIT:
            raise ValueError(f"num_gpus is 0 or at least {RAY_RESOURCE_UNIT} (Ray's precision)")
        return v


class DiscoverySpec(_Strict):
    """A whole discovery job."""

    name: str | None = Field(None, max_length=200)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    task: TaskSpec = Field(default_factory=TaskSpec)
    rule: AnyRuleSpec = Field(default_factory=RuleSpec)
    meta: MetaSpec = Field(default_factory=MetaSpec)
    sweep: SweepSpec = Field(default_factory=SweepSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    transfer: TransferSpec | None = Field(None, description=(
        "a task distribution (docs/transfer.md): cells with roles train / select / test, the objective over the "
        "training cells (mean or a quantile), shared / profile / per-layer coefficients, the full-budget refit"))

    @model_serializer(mode="wrap")
    def _no_transfer_when_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """A spec without a task distribution dumps without ``transfer`` (stored specs stay as they were)."""
        data = handler(self)
        if isinstance(data, dict) and data.get("transfer") is None:
            data.pop("transfer", None)
        return data

    @model_validator(mode="after")
    def _transfer_fits(self) -> DiscoverySpec:
        """A task distribution is a few-shot (feedforward) one; per-layer coefficients need one depth."""
        if self.transfer is None:
            return self
        if self.task.kind != "fewshot":
            raise ValueError(f"transfer (a task distribution) is for few-shot tasks, not {self.task.kind!r}")
        if self.transfer.coefficients == "per-layer":
            depths = {len(c.widths) - 1 if c.widths else (c.depth or self.network.depth) for c in self.transfer.cells}
            if len(depths) > 1:
                raise ValueError(f"per-layer coefficients need cells of one depth, not {sorted(depths)}; use "
                                 "'profile' (a linear depth profile) across depths")
        return self

    @model_validator(mode="before")
    @classmethod
    def _family_from_task(cls, data: Any) -> Any:
        """A rule without ``family`` belongs to the family of the task kind (fewshot → feedforward,
        fixedpoint-mnist → recurrent)."""
        if not isinstance(data, dict):
            return data
        task = data.get("task")
        kind = task.get("kind", "fewshot") if isinstance(task, dict) else getattr(task, "kind", "fewshot")
        if not isinstance(kind, str):   # not a task kind: the task's own validation reports it
            return data
        rule = data.get("rule")
        if rule is None and TASK_FAMILY.get(kind) == "recurrent":
            return {**data, "rule": {"family": "recurrent"}}
        if rule is None and TASK_FAMILY.get(kind) in ("unsupervised", "reward"):
            return {**data, "rule": {"family": TASK_FAMILY[kind]}}
        if isinstance(rule, dict) and "family" not in rule and kind in TASK_FAMILY:
            return {**data, "rule": {**rule, "family": TASK_FAMILY[kind]}}
        return data

    @model_validator(mode="after")
    def _family_fits_task(self) -> DiscoverySpec:
        expected = TASK_FAMILY[self.task.kind]
        if self.rule.family != expected:
            raise ValueError(f"rule.family {self.rule.family!r} does not fit task.kind {self.task.kind!r}, which "
                             f"learns {expected} rules")
        return self

    @property
    def family(self) -> RuleFamily:
        """The rule family of this job (the one its task kind learns)."""
        return self.rule.family

    @field_validator("name")
    @classmethod
    def _printable_name(cls, v: str | None) -> str | None:
        if v is not None and any(ord(c) < 32 and c not in "\t\n" for c in v):
            raise ValueError("the name must not contain control characters (NUL, ...)")
        return v

    @model_validator(mode="after")
    def _fused_kernel_applies(self) -> DiscoverySpec:
        """meta.kernel = 'fused' is refused at submission when the kernel cannot run the job."""
        if self.meta.kernel != "fused" or self.task.kind != "fewshot":
            return self
        if self.network.feedback not in ("fa", "dfa", "bp"):
            raise ValueError(f"meta.kernel 'fused' runs fa, dfa or bp feedback, not {self.network.feedback!r}")
        if self.resources.device == "cuda":
            raise ValueError("meta.kernel 'fused' is a CPU kernel; use 'torch' (or 'auto') on cuda")
        from discovery.feedforward.kernels.fused import plan
        from rules.compiler import compile_terms
        from rules.terms import term

        for t in self.rule.terms or []:
            try:
                expr = term(t).expr
            except KeyError as exc:   # a validator must raise ValueError (a 422), not KeyError (a 500)
                raise ValueError(exc.args[0]) from None
            if plan(compile_terms([expr])) is None:
                raise ValueError(f"meta.kernel 'fused' cannot run term {t}; use 'auto'")
        return self

    @model_validator(mode="after")
    def _output_matches_ways(self) -> DiscoverySpec:
        if self.task.kind in ("pca", "reservoir-motor"):     # no labels: the unsupervised and reward families
            return self
        if self.task.remap_labels and self.network.widths[-1] < self.task.ways:
            raise ValueError(
                f"network output width {self.network.widths[-1]} is smaller than the number of ways {self.task.ways}"
            )
        return self

    @model_validator(mode="after")
    def _pca_shape(self) -> DiscoverySpec:
        """task.kind 'pca': widths [64, k] with 1 ≤ k ≤ 64, data digits or mnist5k (8×8 patches), search none or
        forward."""
        if self.task.kind != "pca":
            return self
        widths = self.network.widths
        if len(widths) != 2 or widths[0] != 64 or widths[1] > 64:
            raise ValueError(f"the unsupervised (pca) task is one linear layer [64, k] with k <= 64, not {widths}")
        if self.task.dataset not in ("digits", "mnist5k"):
            raise ValueError(f"the unsupervised (pca) task runs on digits or mnist5k patches, not "
                             f"{self.task.dataset!r}")
        if self.search.method not in ("none", "forward"):
            raise ValueError(f"the unsupervised family searches by forward selection, not {self.search.method!r}")
        return self

    @model_validator(mode="after")
    def _reservoir_search(self) -> DiscoverySpec:
        """task.kind 'reservoir-motor' (the reward family): search none or forward."""
        if self.task.kind == "reservoir-motor" and self.search.method not in ("none", "forward"):
            raise ValueError(f"the reward family searches by forward selection, not {self.search.method!r}")
        return self
