"""The paper's qualitative claims, as data: which artefact, metric and methods each one is
about, and what it asserts (an ordering of methods, a bound, a trend, a closed form).
``analysis.claims`` checks them against our rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Claim:
    id: str
    paper_item: str
    artifact: str
    text: str
    metric: str
    kind: str  # order | above | below | increasing | closed_form
    groups: tuple[tuple[str, ...], ...] = ()
    methods: tuple[str, ...] = ()
    per: tuple[str, ...] = ()
    where: Mapping[str, object] = field(default_factory=dict)
    expect: Mapping[str, tuple] = field(default_factory=dict)
    threshold: float = math.nan
    along: str = ""
    reference: str = ""
    tol: float = 1e-4

    def all_methods(self) -> tuple[str, ...]:
        if self.kind == "order":
            return tuple(m for g in self.groups for m in g)
        return self.methods


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "fig3_error",
        "Fig 3",
        "fig3_tabular_single",
        "TPO and DG end below GRPO and PG (final error).",
        "final_error",
        "order",
        groups=(("tpo", "dg"), ("grpo", "pg")),
    ),
    Claim(
        "fig3_misalignment",
        "Fig 3",
        "fig3_tabular_single",
        "TPO keeps the lowest misalignment to the PG oracle (final misalignment).",
        "final_misalignment",
        "order",
        groups=(("tpo",), ("grpo", "dg", "pg")),
    ),
    Claim(
        "fig4_ce_lowest",
        "Fig 4",
        "fig4_tabular_multi",
        "CE ends with the lowest error.",
        "final_error",
        "order",
        groups=(("ce",), ("tpo", "grpo", "dg", "pg")),
    ),
    Claim(
        "fig4_tpo_below_dg_pg",
        "Fig 4",
        "fig4_tabular_multi",
        "TPO ends below DG and PG (final error).",
        "final_error",
        "order",
        groups=(("tpo",), ("dg", "pg")),
    ),
    Claim(
        "fig4_misalignment",
        "Fig 4",
        "fig4_tabular_multi",
        "TPO's misalignment to CE is the lowest of the RL methods (final misalignment).",
        "final_misalignment",
        "order",
        groups=(("tpo",), ("grpo", "dg", "pg")),
    ),
    Claim(
        "appendix_b_closed_form",
        "App. B",
        "appendix_b",
        "The measured update coefficient β(p) equals the closed form for every method and p "
        "(|Δ| ≤ 1e-4).",
        "beta_coefficient",
        "closed_form",
        per=("p",),
        reference="beta_closed_form",
        tol=1e-4,
    ),
    Claim(
        "fig5a_final",
        "Fig 5a",
        "fig5_mnist",
        "TPO ends with the lowest MNIST test error.",
        "final_test_error_pct",
        "order",
        groups=(("tpo",), ("dg", "group_pg", "grpo", "pg")),
    ),
    Claim(
        "fig5a_steps",
        "Fig 5a",
        "fig5_mnist",
        "TPO reaches 5% test error before DG.",
        "steps_to_5pct_test_error",
        "order",
        groups=(("tpo",), ("dg",)),
    ),
    Claim(
        "fig1b_order",
        "Fig 1b",
        "fig1b_terminal",
        "TPO ends below GRPO, GRPO below DG (terminal reward, H = 10).",
        "final_error_pct",
        "order",
        groups=(("tpo",), ("grpo",), ("dg",)),
    ),
    Claim(
        "table1_fastest",
        "Table 1",
        "table1_vocab",
        "TPO (token) reaches 1% error before GRPO (token), DG and PPO at every V.",
        "steps_to_1pct",
        "order",
        groups=(("tpo_token",), ("grpo_token", "dg", "ppo")),
        per=("V",),
        expect={"V": (2, 4, 8, 16)},
    ),
    Claim(
        "table2_fastest",
        "Table 2",
        "table2_variations",
        "TPO (token) is the fastest to 1% error in every prompt-matched variant.",
        "steps_to_1pct",
        "order",
        groups=(("tpo_token",), ("grpo_token", "dg", "ppo")),
        per=("target", "reward"),
        where={"match": "prompts"},
        expect={
            "target": ("copy", "flip", "reverse_copy", "reverse_flip"),
            "reward": ("bag_of_tokens", "sequential"),
        },
    ),
    Claim(
        "table3_order",
        "Table 3",
        "table3_terminal",
        "TPO ends below GRPO, GRPO below PPO and DG, at every H (prompt-matched).",
        "final_error_pct",
        "order",
        groups=(("tpo",), ("grpo",), ("ppo", "dg")),
        per=("H",),
        where={"match": "prompts"},
        expect={"H": (7, 8, 9, 10)},
    ),
    Claim(
        "fig9_ablations",
        "Fig 9",
        "fig9_ablations",
        "Every ablation (TPO without anchor, Group PG, GRPO without KL) ends above 99% error "
        "at H = 10.",
        "final_error_pct",
        "above",
        methods=("tpo_no_anchor", "group_pg", "grpo_no_kl"),
        where={"H": 10},
        threshold=99.0,
    ),
    Claim(
        "table5_eta",
        "Table 5",
        "table5_eta",
        "Steps to 1% error grow with η from 0.5 to 4.",
        "steps_to_1pct",
        "increasing",
        methods=("tpo",),
        along="eta",
        expect={"eta": (0.5, 1.0, 2.0, 4.0)},
    ),
    Claim(
        "fig13_k",
        "Fig 13",
        "fig13_k_sweep",
        "TPO ends below GRPO at every group size K.",
        "final_error_pct",
        "order",
        groups=(("tpo",), ("grpo",)),
        per=("K",),
        expect={"K": (4, 8, 16, 32, 64)},
    ),
    Claim(
        "fig14_masking",
        "Fig 14",
        "fig14_grpo_masking",
        "Zero-variance masking makes GRPO worse; TPO ends below both.",
        "final_error_pct",
        "order",
        groups=(("tpo",), ("grpo",), ("grpo_masked",)),
    ),
    Claim(
        "fig16_epochs",
        "Fig 16",
        "fig16_epoch_sweep",
        "TPO ends below 2.3% error at every epoch count.",
        "final_error_pct",
        "below",
        methods=("tpo",),
        per=("epochs",),
        threshold=2.3,
        expect={"epochs": (1, 2, 4, 8, 16)},
    ),
)
