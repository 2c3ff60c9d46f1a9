"""discovery.goal: plain-language goals → DiscoverySpec, and clear errors for what is not understood."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.goal import (
    BAD_INIT_SCALE,
    SMALL_INIT_SCALE,
    VOCABULARY,
    GoalError,
    goal_to_spec,
    interpolate_hidden,
    network_widths,
    parse_goal,
)
from discovery.spec import POOLS, DiscoverySpec


def test_the_example_goal_of_the_issue() -> None:
    spec = goal_to_spec("find a plasticity rule for depth-5 online learning under feedback alignment")
    assert spec.network.widths == [784, 170, 130, 100, 70, 10]
    assert spec.network.feedback == "fa"
    assert spec.task.dataset == "mnist5k"
    # no term named: open discovery over the generated library (no F0/F2/F9 hint)
    assert spec.rule.pool == "library" and spec.rule.terms == POOLS["library"]
    assert spec.search.method == "forward" and spec.meta.term_scale == "norm"


@pytest.mark.parametrize(
    ("goal", "pool", "terms", "method"),
    [
        ("find a rule using the paper's three terms", "paper3", ["F0", "F2", "F9"], "none"),
        ("only F0 and F2", None, ["F0", "F2"], "none"),
        ("find a rule from bio10", "bio10", POOLS["bio10"], "forward"),
        ("a rule from the gated library by l1 path", "library_gated", POOLS["library_gated"], "path"),
        ("depth-3 with oja", None, ["F0", "F9"], "none"),
    ],
)
def test_goal_restricts_the_search(goal: str, pool: str | None, terms: list[str], method: str) -> None:
    parse = parse_goal(goal)
    assert parse.spec.rule.pool == pool and parse.spec.rule.terms == terms
    assert parse.spec.search.method == method
    assert any("open discovery" in u for u in parse.understood) == (method != "none")


def test_goal_max_terms_and_named_terms_conflict() -> None:
    assert goal_to_spec("at most 3 terms by backward elimination").search.max_terms == 3
    with pytest.raises(GoalError, match="needs a pool"):
        goal_to_spec("oja by forward selection")


@pytest.mark.parametrize(
    ("depth", "widths"),
    [
        (1, [784, 10]),
        (2, [784, 115, 10]),
        (3, [784, 170, 70, 10]),
        (4, [784, 170, 115, 70, 10]),
        (5, [784, 170, 130, 100, 70, 10]),
    ],
)
def test_depth_interpolates_widths(depth: int, widths: list[int]) -> None:
    assert goal_to_spec(f"depth-{depth} online").network.widths == widths
    assert goal_to_spec(f"{depth} layers").network.widths == widths


def test_interpolation_is_monotone_for_deep_nets() -> None:
    hidden = interpolate_hidden(19)
    assert hidden[0] == 170 and hidden[-1] == 70
    assert all(a >= b for a, b in itertools.pairwise(hidden))
    assert network_widths(3, 64, 10, width=32) == [64, 32, 32, 10]


def test_e2e_goal_with_width_and_episodes() -> None:
    parsed = parse_goal(
        "find a plasticity rule for depth-2 online learning under feedback alignment with oja on "
        "synthetic data for 3 episodes, width 16"
    )
    spec = parsed.spec
    assert spec.network.widths == [784, 16, 10]
    assert spec.task.dataset == "synthetic"
    assert spec.rule.terms == ["F0", "F9"]
    assert spec.meta.episodes == 3
    assert any("oja" in note for note in parsed.understood)


def test_tiny_sets_small_sizes_but_explicit_numbers_win() -> None:
    spec = goal_to_spec("tiny depth-2 backprop on digits for 4 episodes, 7 shots")
    assert spec.network.widths == [64, 16, 10]
    assert spec.network.feedback == "bp"
    assert spec.task.shots == 7 and spec.task.queries == 5
    assert spec.meta.episodes == 4 and spec.meta.eval_episodes == 10


@pytest.mark.parametrize(
    ("phrase", "mode"),
    [
        ("feedback alignment", "fa"),
        ("FA", "fa"),
        ("random feedback", "fa"),
        ("backprop", "bp"),
        ("backpropagation", "bp"),
        ("weight transport", "bp"),
        ("direct feedback alignment", "dfa"),
        ("DFA", "dfa"),
        ("direct feedback", "dfa"),
        ("sign-symmetric", "sign"),
        ("sign symmetric feedback", "sign"),
    ],
)
def test_feedback_phrases(phrase: str, mode: str) -> None:
    assert goal_to_spec(f"depth-2 {phrase}").network.feedback == mode


@pytest.mark.parametrize(
    ("phrase", "dataset", "n_in", "n_out"),
    [
        ("mnist", "mnist5k", 784, 10),
        ("MNIST", "mnist5k", 784, 10),
        ("digits", "digits", 64, 10),
        ("digits28", "digits28", 784, 10),
        ("synthetic", "synthetic", 784, 10),
        ("emnist", "emnist-balanced", 784, 47),
    ],
)
def test_datasets_set_input_and_output_widths(phrase: str, dataset: str, n_in: int, n_out: int) -> None:
    spec = goal_to_spec(f"depth-3 on {phrase}")
    assert spec.task.dataset == dataset
    assert spec.network.widths[0] == n_in and spec.network.widths[-1] == n_out


@pytest.mark.parametrize(
    ("phrase", "terms"),
    [
        ("oja", ["F0", "F9"]),
        ("Oja's rule", ["F0", "F9"]),
        ("hebbian", ["F0", "hebb"]),
        ("error-Hebbian", ["F0", "F2"]),
        ("eHebb", ["F0", "F2"]),
        ("decay", ["F0", "F3"]),
        ("pseudo-gradient", ["F0"]),
        ("eHebb and oja", ["F0", "F2", "F9"]),
        ("only oja", ["F9"]),
        ("F4 and F7", ["F0", "F4", "F7"]),
    ],
)
def test_term_phrases(phrase: str, terms: list[str]) -> None:
    assert goal_to_spec(f"depth-2 with {phrase}").rule.terms == terms


def test_all_ten_terms_is_the_bio10_pool() -> None:
    assert goal_to_spec("depth-5 with all ten terms").rule.terms == POOLS["bio10"]
    assert goal_to_spec("bio10 pool on mnist").rule.terms == POOLS["bio10"]


def test_init_phrases() -> None:
    assert goal_to_spec("depth-5 bad init").network.init_scale == BAD_INIT_SCALE
    assert goal_to_spec("depth-5 large initialization").network.init_scale == BAD_INIT_SCALE
    assert goal_to_spec("depth-5 small init").network.init_scale == SMALL_INIT_SCALE
    assert goal_to_spec("depth-5 init scale 2.5").network.init_scale == 2.5


def test_training_numbers() -> None:
    spec = goal_to_spec(
        "depth-2 for 1,200 episodes, 50 eval episodes, 3-way 20-shot 4 queries, seed 7, lr 3e-4, "
        "l1 0.001, meta-batch 4, beta 5"
    )
    assert (spec.meta.episodes, spec.meta.eval_episodes, spec.meta.seed) == (1200, 50, 7)
    assert (spec.task.ways, spec.task.shots, spec.task.queries) == (3, 20, 4)
    assert spec.meta.lr == pytest.approx(3e-4) and spec.meta.l1 == pytest.approx(1e-3)
    assert spec.meta.meta_batch == 4 and spec.network.beta == 5


def test_gpu_phrase() -> None:
    spec = goal_to_spec("depth-5 on gpu")
    assert spec.resources.device == "cuda" and spec.resources.num_gpus == 1


def test_batch_learning_is_refused() -> None:
    with pytest.raises(GoalError, match="batch learning is not supported"):
        parse_goal("depth-5 mini-batch learning with oja")


def test_unknown_words_are_listed_with_what_was_understood() -> None:
    with pytest.raises(GoalError) as info:
        parse_goal("depth-2 quantum learning with oja on mnist using telepathy")
    detail = info.value.to_dict()
    assert detail["unknown_words"] == ["quantum", "telepathy"]
    assert any("depth-2" in u for u in detail["understood"])
    assert any("oja" in u for u in detail["understood"])
    assert detail["vocabulary"] == VOCABULARY


def test_contradictions_are_errors() -> None:
    with pytest.raises(GoalError, match="contradicts"):
        parse_goal("backprop with feedback alignment")
    with pytest.raises(GoalError, match="contradicts"):
        parse_goal("depth-2 and depth-3")


def test_invalid_resulting_spec_is_a_goal_error() -> None:
    with pytest.raises(GoalError, match="invalid spec"):
        parse_goal("depth-2 1-way")
    with pytest.raises(GoalError, match="invalid spec"):
        parse_goal("depth-0")


def test_empty_goal() -> None:
    with pytest.raises(GoalError, match="empty"):
        parse_goal("   ")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=120))
def test_any_text_gives_a_spec_or_a_goal_error(text: str) -> None:
    try:
        spec = goal_to_spec(text)
    except GoalError as exc:
        assert exc.message
        return
    assert isinstance(spec, DiscoverySpec)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "depth-2",
                "online",
                "oja",
                "ehebb",
                "decay",
                "mnist",
                "3 episodes",
                "width 8",
                "tiny",
                "seed 3",
                "bad init",
                "with",
                "on",
                "the",
                "for",
            ]
        ),
        max_size=8,
    )
)
def test_vocabulary_phrases_always_parse(words: list[str]) -> None:
    text = " ".join(words)
    if words.count("depth-2") > 1 or not text.strip():
        return
    spec = goal_to_spec(text)
    assert spec.network.widths[0] == 784


def test_a_recurrent_goal_resolves_to_the_fixed_point_family() -> None:
    parsed = parse_goal("find a recurrent plasticity rule for fixed points on mnist")
    spec = parsed.spec
    assert spec.task.kind == "fixedpoint-mnist" and spec.family == "recurrent"
    assert spec.network.widths == [784, 100, 10] and spec.task.dataset == "mnist5k"
    # no term named: an open forward search over the recurrent library (issue #23), not a fit of fixed terms
    assert spec.search.method == "forward" and set(spec.rule.terms) >= {"rec_dW1", "rec_dW3", "rec_dW4", "rec_oja",
                                                                          "rec_decay"}
    assert any(u.startswith("recurrent fixed-point rule on mnist5k: N = 100") for u in parsed.understood)


def test_a_recurrent_goal_names_its_terms_and_size() -> None:
    spec = goal_to_spec("fixed-point rnn with dW1, dW3 and oja, 32 units, 5 episodes")
    assert spec.rule.terms == ["rec_dW1", "rec_dW3", "rec_oja"]
    assert spec.network.widths == [784, 32, 10] and spec.meta.episodes == 5


@pytest.mark.parametrize("goal", ["recurrent rule on digits", "depth-2 rule with dW3", "recurrent rule with ehebb",
                                  "recurrent rule under feedback alignment"])
def test_recurrent_goals_that_cannot_run_say_why(goal: str) -> None:
    with pytest.raises(GoalError) as err:
        parse_goal(goal)
    assert "recurrent" in err.value.message


# --- goals read tolerantly (issue #23): slots are filled, words that change nothing are listed as ignored ----------
def test_a_local_recurrent_rule_that_converges_is_an_open_recurrent_search() -> None:
    parsed = parse_goal("find a local learning rule for a recurrent network that converges to fixed points")
    assert parsed.spec.family == "recurrent" and parsed.spec.task.kind == "fixedpoint-mnist"
    assert parsed.spec.search.active and parsed.spec.search.method == "forward"
    assert "local" in parsed.ignored and "converges" in parsed.ignored
    assert any(u.startswith("ignored (they change nothing)") for u in parsed.understood)


def test_fit_only_named_terms_under_feedback_alignment() -> None:
    parsed = parse_goal("fit only F0 and F2 under feedback alignment")
    assert parsed.spec.rule.terms == ["F0", "F2"] and parsed.spec.network.feedback == "fa"
    assert not parsed.spec.search.active and parsed.ignored == ["fit"]


def test_a_sparse_rule_with_at_most_three_terms() -> None:
    parsed = parse_goal("find a sparse rule with at most 3 terms")
    assert parsed.spec.search.active and parsed.spec.search.max_terms == 3
    assert parsed.spec.rule.pool == "library" and "sparse" in parsed.ignored


def test_ten_way_classification_of_digits() -> None:
    spec = goal_to_spec("find a rule for 10-way classification of digits")
    assert spec.task.dataset == "digits" and spec.task.ways == 10
    assert spec.network.widths[0] == 64 and spec.network.widths[-1] == 10
    assert goal_to_spec("find a rule for 10-way classification of digits28").network.widths[0] == 784


def test_hidden_layers_and_random_feedback_weights() -> None:
    parsed = parse_goal("plasticity rule, 4 hidden layers, random feedback weights")
    assert parsed.spec.network.depth == 5 and parsed.spec.network.widths == [784, 170, 130, 100, 70, 10]
    assert parsed.spec.network.feedback == "fa"


def test_the_paper_three_terms_without_an_apostrophe() -> None:
    spec = goal_to_spec("find a plasticity rule for depth-5 online learning under feedback alignment using the paper "
                        "three terms")
    assert spec.rule.terms == ["F0", "F2", "F9"] and not spec.search.active and spec.network.feedback == "fa"


@pytest.mark.parametrize("word", ["sparse", "plasticity", "local", "ordinary", "simple", "converging"])
def test_words_that_change_nothing_do_not_refuse_a_goal(word: str) -> None:
    plain, worded = goal_to_spec("depth-2 with oja on mnist"), parse_goal(f"depth-2 {word}, with oja on mnist!")
    assert worded.spec.model_dump(exclude={"name"}) == plain.model_dump(exclude={"name"})


@pytest.mark.parametrize(("goal", "word"), [("a convolutional rule on mnist", "convolutional"),
                                            ("depth-3 on cifar", "cifar"), ("a spiking network rule", "spiking")])
def test_a_word_that_would_change_the_job_is_refused_with_the_vocabulary(goal: str, word: str) -> None:
    with pytest.raises(GoalError) as err:
        parse_goal(goal)
    detail = err.value.to_dict()
    assert word in detail["unknown_words"] and "cannot do" in detail["message"]
    assert detail["vocabulary"] == VOCABULARY
