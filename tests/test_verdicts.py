"""Verdicts and claims on constructed rows: each rule at its boundary, so a broken rule fails.

The rows are built by hand in the builders' format (``analysis.tables.ROW_COLUMNS``) for cells
the paper reports (``analysis/paper_numbers.csv``); no database is involved.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis import claims, paper, verdicts
from analysis.verdicts import judge

P = paper.parse


def row(
    artifact,
    method,
    metric,
    value,
    se=math.nan,
    n=20,
    episodes=2000,
    B=100,
    ci=(math.nan,) * 2,
    **key,
):
    r = {
        "artifact": artifact,
        "paper_item": "",
        "setting": " ".join(f"{k}={v}" for k, v in key.items()),
        "method": method,
        "metric": metric,
        "value": value,
        "se": se,
        "n_seeds": n,
        "episodes": episodes,
        "B": B,
        "ci_low": ci[0],
        "ci_high": ci[1],
    }
    for f in paper.KEY_FIELDS:
        r[f] = key.get(f)
    return r


T3 = dict(target="reverse_copy", reward="terminal", match="prompts", V=2, K=8)


def frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def one(df: pd.DataFrame, **sel) -> dict:
    for k, v in sel.items():
        df = df[df[k] == v]
    assert len(df) == 1, df
    return df.iloc[0].to_dict()


# --------------------------------------------------------------------------------------------
# The rule, number by number
# --------------------------------------------------------------------------------------------


def test_exact_value_two_standard_errors_plus_half_a_digit():
    se, half = 1.0, 0.05  # "7.4": last printed digit 0.1
    assert judge(P("7.4"), 7.4 + 1.9 * se + half, se).ok is True
    assert judge(P("7.4"), 7.4 - 1.9 * se - half, se).ok is True
    assert judge(P("7.4"), 7.4 + 2.1 * se + half, se).ok is False
    assert judge(P("7.4"), 7.4 - 2.1 * se - half, se).ok is False


def test_exact_value_combines_our_and_the_papers_standard_error():
    # sqrt(0.6² + 0.8²) = 1: the tolerance is 2 + half a digit (0.005 for "7.36")
    assert judge(P("7.36"), 7.36 + 1.95, 0.6, paper_se=0.8).ok is True
    assert judge(P("7.36"), 7.36 + 2.02, 0.6, paper_se=0.8).ok is False
    # without the paper's s.e. the same difference differs
    assert judge(P("7.36"), 7.36 + 1.95, 0.6).ok is False


def test_exact_value_without_standard_error_allows_half_the_printed_digit():
    assert judge(P("0.73"), 0.7349).ok is True
    assert judge(P("0.73"), 0.7351).ok is False
    assert judge(P("28"), 28.03).ok is True  # λ = e^{10/3}, printed as 28
    assert judge(P("28"), 28.6).ok is False


def test_steps_inside_or_outside_the_bootstrap_interval():
    assert judge(P("58"), 60, ci=(52, 70), n_seeds=20, steps=True).ok is True
    assert judge(P("58"), 70, ci=(58.4, 80), n_seeds=20, steps=True).ok is True  # ± half
    assert judge(P("58"), 70, ci=(58.6, 80), n_seeds=20, steps=True).ok is False
    assert judge(P("58"), 50, ci=(40, 57.4), n_seeds=20, steps=True).ok is False
    # an interval reaching never contains every later step
    assert judge(P("904"), 700, ci=(500, math.inf), n_seeds=20, steps=True).ok is True
    # our seed mean never crosses and no resample does: a printed step differs
    never = judge(P("904"), math.nan, ci=(math.inf, math.inf), n_seeds=20, steps=True)
    assert never.ok is False


def test_steps_the_papers_never():
    assert judge(P("never"), math.nan, ci=(math.inf, math.inf), n_seeds=10, steps=True).ok
    assert judge(P("never"), 300, ci=(200, math.inf), n_seeds=10, steps=True).ok is True
    assert judge(P("never"), 300, ci=(200, 400), n_seeds=10, steps=True).ok is False
    # no value and no seeds: nothing of ours to judge
    assert judge(P("never"), math.nan, n_seeds=0, steps=True).ok is None


def test_bounds_use_two_standard_errors():
    assert judge(P(">95"), 94.0, 0.6).ok is True  # 94 + 1.2 > 95
    assert judge(P(">95"), 94.0, 0.4).ok is False  # 94 + 0.8 ≤ 95
    assert judge(P("<2.3"), 2.5, 0.15).ok is True  # 2.5 - 0.3 < 2.3
    assert judge(P("<2.3"), 2.5, 0.05).ok is False


def test_figure_readings_agree_within_a_factor_of_three():
    assert judge(P("~1e-4"), 2.9e-4).ok is True
    assert judge(P("~1e-4"), 3.1e-4).ok is False
    assert judge(P("~1e-4"), 0.34e-4).ok is True
    assert judge(P("~1e-4"), 0.32e-4).ok is False
    assert judge(P("~1e-4"), 0.0).ok is False


# --------------------------------------------------------------------------------------------
# Verdict rows: matching, reduced, not run, discrepancies
# --------------------------------------------------------------------------------------------


def test_verdict_agrees_differs_and_cells_are_matched_by_key():
    df = verdicts.verdicts(
        frame(
            row("table3_terminal", "tpo", "final_error_pct", 7.4 + 1.9, 1.0, H=10, **T3),
            row("table3_terminal", "tpo", "final_error_pct", 8.6 + 2.1 + 0.05, 1.0, H=8, **T3),
        )
    )
    t3 = df[(df["artifact"] == "table3_terminal") & (df["method"] == "tpo")]
    assert (
        one(t3, cell="target=reverse_copy reward=terminal match=prompts H=10 V=2 K=8")["verdict"]
        == "agrees"
    )
    assert (
        one(t3, cell="target=reverse_copy reward=terminal match=prompts H=8 V=2 K=8")["verdict"]
        == "differs"
    )
    # H = 7 and 9 were not run
    h7 = one(t3, cell="target=reverse_copy reward=terminal match=prompts H=7 V=2 K=8")
    assert h7["verdict"] == "not run" and h7["ours"] == "—"


def test_reduced_run_shows_the_provisional_reading():
    df = verdicts.verdicts(
        frame(
            row("table3_terminal", "tpo", "final_error_pct", 7.4, 1.0, n=5, H=10, **T3),
            row("table3_terminal", "grpo", "final_error_pct", 20.0, 1.0, episodes=200, H=10, **T3),
            row("table3_terminal", "ppo", "final_error_pct", 99.0, 0.1, B=16, H=10, **T3),
        )
    )
    cell = "target=reverse_copy reward=terminal match=prompts H=10 V=2 K=8"
    tpo = one(df, artifact="table3_terminal", method="tpo", cell=cell)
    assert (tpo["verdict"], tpo["reading"]) == ("reduced", "consistent")
    assert "seeds 5 < 20" in tpo["detail"]
    grpo = one(df, artifact="table3_terminal", method="grpo", cell=cell)
    assert (grpo["verdict"], grpo["reading"]) == ("reduced", "inconsistent")
    assert "episodes 200 < 2000" in grpo["detail"]
    ppo = one(df, artifact="table3_terminal", method="ppo", cell=cell)
    assert (ppo["verdict"], ppo["reading"]) == ("reduced", "consistent")  # ">95", B 16 < 100


def test_a_key_field_we_leave_empty_does_not_distinguish():
    # our row has no match/target: it still serves the paper's prompt-matched H = 10 number
    r = row("table3_terminal", "tpo", "final_error_pct", 7.4, 1.0, H=10, V=2, K=8)
    df = verdicts.verdicts(frame(r))
    hits = df[
        (df["artifact"] == "table3_terminal") & (df["method"] == "tpo") & (df["value"] == 7.4)
    ]
    # both matchings at H = 10 (prompts 7.4 agrees; interactions 19.0 differs)
    assert sorted(hits["verdict"]) == ["agrees", "differs"]


def test_all_methods_row_and_discrepancy_text():
    key = dict(target="reverse_copy", reward="terminal", H=8, V=2, K=32)
    df = verdicts.verdicts(
        frame(
            row(
                "fig11_diagnostics",
                "tpo",
                "initial_all_fail_fraction",
                0.9,
                0.01,
                10,
                2000,
                256,
                **key,
            ),
            row(
                "fig11_diagnostics",
                "grpo",
                "initial_all_fail_fraction",
                0.5,
                0.01,
                10,
                2000,
                256,
                **key,
            ),
        )
    )
    af = df[df["metric"] == "initial_all_fail_fraction"]
    assert dict(zip(af["method"], af["verdict"], strict=True)) == {
        "grpo": "differs",
        "tpo": "agrees",
    }
    assert set(af["discrepancy"]) == {"D12"}
    assert af["discrepancy_text"].iloc[0] == paper.DISCREPANCIES["D12"]


def test_smaller_fixed_group_size_is_reduced_but_a_swept_one_is_another_cell():
    key = dict(target="reverse_copy", reward="terminal", H=8, V=2)
    # Fig 14: the paper's K = 32 throughout; our smoke run has K = 8
    df = verdicts.verdicts(
        frame(
            row(
                "fig14_grpo_masking",
                "tpo",
                "final_error_pct",
                0.05,
                0.01,
                30,
                2000,
                256,
                K=8,
                **key,
            )
        )
    )
    got = one(df, artifact="fig14_grpo_masking", method="tpo")
    assert (got["verdict"], got["reading"]) == ("reduced", "consistent")
    assert "K 8 < 32" in got["detail"]
    # Fig 13 sweeps K: our K = 8 row is the paper's K = 8 number only
    df = verdicts.verdicts(
        frame(row("fig13_k_sweep", "tpo", "final_error_pct", 5.2, 0.1, 30, 2000, 256, K=8, **key))
    )
    t = df[(df["artifact"] == "fig13_k_sweep") & (df["method"] == "tpo")]
    assert dict(zip(t["cell"].str.extract(r"K=(\d+)")[0], t["verdict"], strict=True)) == {
        "4": "not run",
        "8": "agrees",
        "16": "not run",
        "32": "not run",
        "64": "not run",
    }


def test_mnist_steps_are_shifted_to_true_steps(monkeypatch):
    monkeypatch.delenv("TPO_PAPER_X_AXIS", raising=False)
    # paper: TPO below 5% at x = 1,600 on the authors' axis = true step 1,800 (D15)
    r = row(
        "fig5_mnist",
        "tpo",
        "steps_to_5pct_test_error",
        1800,
        n=20,
        episodes=10000,
        ci=(1790, 1810),
    )
    got = one(
        verdicts.verdicts(frame(r)),
        artifact="fig5_mnist",
        method="tpo",
        metric="step_to_5pct_test_error",
    )
    assert got["verdict"] == "agrees" and "D15" in got["detail"]
    monkeypatch.setenv("TPO_PAPER_X_AXIS", "1")  # our steps on their axis too: 1800 ≠ 1600
    got = one(
        verdicts.verdicts(frame(r)),
        artifact="fig5_mnist",
        method="tpo",
        metric="step_to_5pct_test_error",
    )
    assert got["verdict"] == "differs"


def test_run_too_small_to_have_the_number_is_reduced_unmeasured():
    key = dict(target="reverse_copy", reward="terminal", match="prompts", H=10, V=2, K=8)
    # a 20-episode run has no error at episode 999
    r = row("fig1b_terminal", "tpo", "final_error_pct", 50.0, 1.0, 2, 20, 16, **key)
    df = verdicts.verdicts(frame(r))
    got = one(df, artifact="fig1b_terminal", method="tpo", metric="error_pct_at_episode_999")
    assert (got["verdict"], got["reading"]) == ("reduced", "unmeasured")


def test_no_rows_every_number_not_run_and_llm_out_of_scope():
    df = verdicts.verdicts(None)
    assert set(df["verdict"]) == {"not run"}
    assert "fig10_llm" not in set(df["artifact"])
    n_llm = int((paper.numbers()["artifact"] == "fig10_llm").sum())
    assert len(df) == len(paper.numbers()) - n_llm
    assert len(verdicts.out_of_scope()) == n_llm
    c = verdicts.counts(df)
    assert c["not run"] == len(df) and c["agrees"] == c["differs"] == c["reduced"] == 0


def test_old_builder_columns_are_tolerated():
    old = pd.DataFrame(
        [
            {
                "artifact": "appendix_b",
                "setting": "x",
                "method": "tpo",
                "metric": "lambda",
                "value": 28.03,
                "se": math.nan,
                "n_seeds": pd.NA,
            }
        ]
    )
    got = one(verdicts.verdicts(old), artifact="appendix_b", metric="lambda")
    assert got["verdict"] == "agrees"


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------


def claim(cid: str) -> claims.Claim:
    return next(c for c in claims.CLAIMS if c.id == cid)


def fig3(values: dict, n=100, episodes=150):
    return frame(
        *(
            row("fig3_tabular_single", m, "final_error", v, 1e-5, n, episodes, 100, K=100)
            for m, v in values.items()
        )
    )


def test_order_claim_holds_fails_not_run():
    c = claim("fig3_error")
    ok = claims.check(c, fig3({"tpo": 1e-4, "dg": 2e-4, "grpo": 3e-3, "pg": 1e-3}))
    assert ok["verdict"] == "agrees" and "holds" in ok["evidence"]
    bad = claims.check(c, fig3({"tpo": 1e-4, "dg": 2e-3, "grpo": 3e-3, "pg": 1e-3}))
    assert bad["verdict"] == "differs"  # DG 2e-3 is not below PG 1e-3
    assert claims.check(c, None)["verdict"] == "not run"
    # one method missing: nothing to check the claim on
    assert claims.check(c, fig3({"tpo": 1e-4, "dg": 2e-4, "grpo": 3e-3}))["verdict"] == "not run"
    small = claims.check(c, fig3({"tpo": 1e-4, "dg": 2e-4, "grpo": 3e-3, "pg": 1e-3}, n=2))
    assert (small["verdict"], small["reading"]) == ("reduced", "consistent")


def table1(v_values: dict[int, dict[str, float]]):
    out = []
    for V, by_method in v_values.items():
        for m, steps in by_method.items():
            out.append(
                row(
                    "table1_vocab",
                    m,
                    "steps_to_1pct",
                    steps,
                    n=20,
                    episodes=1000,
                    target="reverse_copy",
                    reward="bag_of_tokens",
                    H=10,
                    V=V,
                    K=8,
                )
            )
    return frame(*out)


def test_per_cell_claim_over_every_v_and_steps_never():
    c = claim("table1_fastest")
    fast = {"tpo_token": 58, "grpo_token": 904, "dg": 199, "ppo": 872}
    ok = claims.check(c, table1({v: fast for v in (2, 4, 8, 16)}))
    assert ok["verdict"] == "agrees"
    # PPO never reaches 1% at V = 16: still after TPO (never = +inf)
    ok = claims.check(c, table1({**{v: fast for v in (2, 4, 8)}, 16: {**fast, "ppo": math.nan}}))
    assert ok["verdict"] == "agrees"
    bad = claims.check(c, table1({**{v: fast for v in (2, 4, 8)}, 16: {**fast, "dg": 40}}))
    assert bad["verdict"] == "differs" and "V=16" in bad["evidence"]
    # only V = 2 ran: consistent, but the claim covers fewer cells than the paper's
    part = claims.check(c, table1({2: fast}))
    assert (part["verdict"], part["reading"]) == ("reduced", "consistent")
    assert "V=16: not run" in part["detail"]
    # TPO never reaches 1% but DG does: fails
    late = claims.check(c, table1({v: {**fast, "tpo_token": math.nan} for v in (2, 4, 8, 16)}))
    assert late["verdict"] == "differs" and "undetermined" not in late["detail"]
    # no method reaches 1%: undetermined, which fails the claim
    never = dict.fromkeys(fast, math.nan)
    none = claims.check(c, table1({v: never for v in (2, 4, 8, 16)}))
    assert none["verdict"] == "differs" and "undetermined" in none["detail"]


def test_threshold_claims_above_and_below():
    key = dict(target="reverse_copy", reward="terminal", match="prompts", V=2, K=8)
    above = claim("fig9_ablations")

    def fig9(x):
        return frame(
            *(
                row("fig9_ablations", m, "final_error_pct", v, 0.1, H=10, **key)
                for m, v in x.items()
            )
        )

    assert (
        claims.check(above, fig9({"tpo_no_anchor": 99.5, "group_pg": 99.9, "grpo_no_kl": 99.2}))[
            "verdict"
        ]
        == "agrees"
    )
    assert (
        claims.check(above, fig9({"tpo_no_anchor": 99.5, "group_pg": 98.0, "grpo_no_kl": 99.2}))[
            "verdict"
        ]
        == "differs"
    )
    below = claim("fig16_epochs")

    def fig16(x):
        return frame(
            *(
                row(
                    "fig16_epoch_sweep",
                    "tpo",
                    "final_error_pct",
                    v,
                    0.1,
                    30,
                    2000,
                    256,
                    target="reverse_copy",
                    reward="terminal",
                    H=8,
                    V=2,
                    K=32,
                    epochs=e,
                )
                for e, v in x.items()
            )
        )

    assert claims.check(below, fig16({e: 0.5 for e in (1, 2, 4, 8, 16)}))["verdict"] == "agrees"
    assert (
        claims.check(below, fig16({1: 0.5, 2: 0.5, 4: 2.4, 8: 0.5, 16: 0.5}))["verdict"]
        == "differs"
    )


def test_increasing_claim_over_eta():
    c = claim("table5_eta")

    def t5(steps):
        return frame(
            *(
                row(
                    "table5_eta",
                    "tpo",
                    "steps_to_1pct",
                    s,
                    n=10,
                    episodes=1000,
                    target="reverse_copy",
                    H=10,
                    V=2,
                    K=8,
                    eta=e,
                )
                for e, s in zip((0.25, 0.5, 1.0, 2.0, 4.0), steps, strict=True)
            )
        )

    assert claims.check(c, t5([72, 67, 96, 141, 260]))["verdict"] == "agrees"  # 0.25 not in it
    assert claims.check(c, t5([72, 67, 96, 90, 260]))["verdict"] == "differs"


def test_closed_form_claim():
    c = claim("appendix_b_closed_form")

    def b(delta):
        out = []
        for p in (0.1, 0.5):
            out.append(
                row(
                    "appendix_b",
                    "tpo",
                    "beta_coefficient",
                    0.73 + delta,
                    n=math.nan,
                    episodes=math.nan,
                    B=math.nan,
                    p=p,
                )
            )
            out.append(
                row(
                    "appendix_b",
                    "tpo",
                    "beta_closed_form",
                    0.73,
                    n=math.nan,
                    episodes=math.nan,
                    B=math.nan,
                    p=p,
                )
            )
        return frame(*out)

    assert claims.check(c, b(5e-5))["verdict"] == "agrees"
    assert claims.check(c, b(2e-4))["verdict"] == "differs"


def test_claims_checked_on_the_papers_own_numbers():
    # Table 3 prints GRPO 14.5 above PPO 12.0 at H = 7 (and 27.6 > 26.3 at H = 8)
    t3 = claims.paper_check(claim("table3_order"))
    assert t3.startswith("fails") and "H=7" in t3 and "H=8" in t3 and "H=9" not in t3
    assert claims.paper_check(claim("table5_eta")).startswith("holds")
    assert claims.paper_check(claim("table1_fastest")) == "holds"
    # figure readings ~5e-4 for CE, TPO and GRPO overlap: the figure cannot decide
    assert claims.paper_check(claim("fig4_ce_lowest")).startswith("undetermined")


def test_every_claim_runs_on_no_rows():
    df = claims.claims(None)
    assert list(df.columns) == claims.CLAIM_COLUMNS
    assert set(df["verdict"]) == {"not run"}
    assert len(df) == len(claims.CLAIMS) >= 15


@pytest.mark.parametrize("text", ["7.4", "~1e-4", ">95", "<2.3", "never", "85-87"])
def test_every_paper_value_kind_is_judged(text):
    pv = P(text)
    j = judge(pv, 90.0, 1.0, n_seeds=10, steps=text == "never")
    assert j.ok in (True, False) and j.detail
