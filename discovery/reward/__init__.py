"""The reward family (docs/reward.md): a reservoir readout learning a motor task of docs/science.md S5 by a
three-factor rule from rules.reward. ``family`` (the discovery.family.Family object), ``spec`` (RewardRuleSpec),
``sim`` (the batched reservoir), ``search`` (screening, CMA-ES forward selection, front), ``job`` (spec → result),
``compare`` (beside FORCE, RMHL, SUPERTREX, η tuned alike). Nothing is imported here (discovery.spec imports
``spec``)."""
