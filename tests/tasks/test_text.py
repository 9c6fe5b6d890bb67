import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from sim.tasks import toy as T
from sim.tasks import text_rewards as TR
from sim.tasks import text as TT
from sim.config import parse
from sim.config_values import ConfigError
from sim.lm.config import LMConfig
from tests.conftest import compose_plain
from tests.lm import tiny
from tests.lm.tiny import tiny_tokenizer

BOS, EOS, PAD = tiny.BOS, tiny.EOS, tiny.PAD  # SmolLM2's layout: <|im_start|> 1, <|im_end|> = EOS = PAD 2


def text_cfg(phi_rule=None, phi_prime=None, **task):
    """A composed task=text config with its rewards replaced; no prompts drawn per step and none held
    out unless given (these tests read the whole prompt table)."""
    cfg = compose_plain(["task=text"])
    cfg["task"].update({"prompts_per_step": None, "eval_prompts": None, **task})
    if phi_rule is not None:
        cfg["task"]["phi"]["rule"] = phi_rule
    if phi_prime is not None:
        cfg["task"]["phi_prime"] = {**cfg["task"]["phi_prime"], **phi_prime}
    return cfg


# Each rule's definition on a token's decoded text, written out independently of text_task.
RULES = [
    ({"regex": r"^ ?[A-Z]"}, lambda t: re.search(r"^ ?[A-Z]", t) is not None),
    ({"regex": r"[a-z]"}, lambda t: re.search(r"[a-z]", t) is not None),  # the special tokens' text matches
    ({"chars": "0-9"}, lambda t: t.strip() != "" and all(c in "0123456789" for c in t.strip())),
    ({"chars": ".,;:!?"}, lambda t: t.strip() != "" and all(c in ".,;:!?" for c in t.strip())),
    ({"words": ["the", "A", "why"]}, lambda t: t.strip().lower() in {"the", "a", "why"}),
]


@pytest.mark.parametrize("rule,definition", RULES, ids=[next(iter(r)) + str(i) for i, (r, _) in enumerate(RULES)])
def test_token_class_reward_equals_its_definition_for_every_vocabulary_entry(tok, rule, definition):
    tt = TT.build(TT.parse(text_cfg(rule, prompts=4, new_tokens=8, phi_prime={"positions": {"start": 4, "stop": 8}},
                                    **{"phi": {"weight": 4.0, "shape": "mean", "positions": {"start": 0, "stop": 4},
                                               "rule": rule}})), tok)
    texts = tok.token_texts()
    V = len(texts)
    tokens_VxL = jnp.tile(jnp.arange(V, dtype=jnp.int32)[:, None], (1, 8))  # row v: token v everywhere
    phi_V, _ = jax.jit(tt.rewards_B)(tokens_VxL, jnp.ones((V, 8), bool))
    special = set(tok.tok.get_added_tokens_decoder())  # <|endoftext|>, <|im_start|>, <|im_end|>
    assert special == {0, BOS, EOS}
    expected_V = np.array([0.0 if v in special else float(definition(texts[v])) for v in range(V)])
    np.testing.assert_array_equal(np.asarray(phi_V), expected_V)
    assert 0 < expected_V.sum() < V  # the rule splits the vocabulary: the comparison has teeth


def test_masked_positions_are_never_good_and_no_mask_leaves_the_toy_unchanged():
    task = T.Task(prompts=2, length=6, vocab=5, phi=T.RewardSpec((0, 1, 2), (0, 1), "mean"),
                  phi_prime=T.RewardSpec((3, 4, 5), (2,), "all"))
    tokens_BxL = jax.random.randint(jax.random.key(0), (64, 6), 0, 5)
    # the toy's rewards before the mask existed, written out: fraction good / all good
    good_BxL = np.isin(np.asarray(tokens_BxL), [0, 1]), np.isin(np.asarray(tokens_BxL), [2])
    old = np.mean(good_BxL[0][:, :3], -1).astype(np.float32), np.prod(good_BxL[1][:, 3:], -1).astype(np.float32)
    for new, ref in zip(T.rewards_B(task, tokens_BxL), old):
        np.testing.assert_array_equal(np.asarray(new), ref)
    ones = T.rewards_B(task, tokens_BxL, jnp.ones((64, 6), bool))
    for a, b in zip(ones, T.rewards_B(task, tokens_BxL)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    all_good = jnp.array([[0, 1, 0, 2, 2, 2]] * 2)
    mask = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0]], bool)  # row 1: positions 2 and 5 masked
    phi, phi_prime = T.rewards_B(task, all_good, mask)
    np.testing.assert_array_equal(np.asarray(phi), np.float32([1.0, 2 / 3]))
    np.testing.assert_array_equal(np.asarray(phi_prime), [1.0, 0.0])


def test_text_reward_through_the_callback_equals_the_function_on_the_decoded_response(tok):
    N = 24
    cfg = text_cfg(prompts=4, new_tokens=N, phi={"weight": 1.0, "positions": {"start": 0, "stop": N},
                                                 "text": "ends_with_period"},
                   phi_prime={"positions": {"start": 0, "stop": N}, "rule": None, "text": "mentions_you"})
    cfg["task"]["phi_prime"].pop("rule")
    tt = TT.build(TT.parse(cfg), tok)
    responses = ["The cat sat on the mat.", "You can tell me why", "A dog ran 3 miles! It is.", "why you. 42"]
    rows = [tok.encode(r) + [EOS] for r in responses]
    assert max(len(r) for r in rows) <= N
    tokens_BxN = np.array([r + [tok.encode(" the")[0]] * (N - len(r)) for r in rows], np.int32)  # junk after EOS
    mask_BxN = np.array([[i < len(r) for i in range(N)] for r in rows])
    phi, phi_prime = jax.jit(tt.rewards_B)(jnp.asarray(tokens_BxN), jnp.asarray(mask_BxN), jnp.arange(4))
    decoded = [tok.decode(r[:-1]) for r in rows]
    assert decoded == responses
    np.testing.assert_array_equal(np.asarray(phi), TR.ends_with_period(decoded))
    np.testing.assert_array_equal(np.asarray(phi_prime), TR.mentions_you(decoded))
    assert list(np.asarray(phi)) == [1, 0, 1, 0] and list(np.asarray(phi_prime)) == [0, 1, 0, 1]
    # the toy's rewards_B calls the spec's bound score (RewardSpec.score): the same values
    toy_phi, _ = T.rewards_B(tt.task, jnp.asarray(tokens_BxN), jnp.asarray(mask_BxN), jnp.arange(4))
    np.testing.assert_array_equal(np.asarray(toy_phi), np.asarray(phi))
    # under vmap (runs batched): one host call sees every run, the values per run are the same
    both = jax.jit(jax.vmap(lambda t: tt.rewards_B(t, jnp.asarray(mask_BxN))[0]))(jnp.stack([tokens_BxN] * 3))
    np.testing.assert_array_equal(np.asarray(both), np.tile(np.asarray(phi), (3, 1)))


@pytest.mark.parametrize("chat,add_bos", [(True, False), (False, False), (False, True)])
def test_prompts_are_left_padded_with_the_template_and_bos_as_asked(chat, add_bos):
    tok = tiny_tokenizer(add_bos)
    tt = TT.build(TT.parse(text_cfg(prompts=6, chat_template=chat)), tok)
    texts = TT.read_prompts(None)[:6]
    assert tt.prompt_texts == tuple(texts)
    ids, mask = tt.prompt_ids_PxT, tt.prompt_mask_PxT
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (6, ids.shape[1])
    for p, text in enumerate(texts):
        if chat:
            want = tok.tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]),
                                  add_special_tokens=False).ids
        else:
            want = ([BOS] if add_bos else []) + tok.tok.encode(text, add_special_tokens=False).ids
        n = int(mask[p].sum())
        assert mask[p].tolist() == [False] * (ids.shape[1] - n) + [True] * n  # real tokens at the right end
        assert ids[p, mask[p]].tolist() == want
        assert (ids[p, ~mask[p]] == PAD).all()
        assert want.count(BOS) == (2 if chat else int(add_bos))  # chat: <|im_start|> opens user and assistant turns
    assert mask[:, -1].all() and not mask[:, 0].all()  # shipped prompts differ in length


def test_shipped_prompts_file():
    prompts = TT.read_prompts(None)
    assert len(prompts) >= 64 and len(set(prompts)) == len(prompts)
    assert all(3 <= len(p.split()) <= 20 for p in prompts)


def test_a_user_prompt_file_and_too_few_prompts(tok, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\nSay hi.\n\nSay bye.\n")
    tt = TT.build(TT.parse(text_cfg(prompts_file=str(f), prompts=2)), tok)
    assert tt.prompt_texts == ("Say hi.", "Say bye.")
    with pytest.raises(ConfigError, match=r"^task.prompts=3: .*p.txt has 2 prompts"):
        TT.build(TT.parse(text_cfg(prompts_file=str(f), prompts=3)), tok)


@pytest.mark.parametrize("change,message", [
    ({"new_tokens": 0}, r"^task.new_tokens=0: must be an integer >= 1$"),
    ({"chat_template": "yes"}, r"^task.chat_template='yes': must be true or false$"),
    ({"phi": {"weight": 4.0, "positions": {"start": 0, "stop": 40}, "rule": {"words": ["a"]}}},
     r"^task.phi.positions.stop=40: must be an integer in \[1, 32\]$"),
    ({"phi": {"weight": 4.0, "positions": [0, 1], "rule": {"words": ["a"]}}}, r"^task.phi.positions=\[0, 1\]: must be a slice"),
    ({"phi": {"weight": 4.0, "positions": {"start": 0, "stop": 20}, "rule": {"words": ["a"]}}},
     r"^task.phi_prime.positions=\[16, 32\): must not overlap task.phi.positions=\[0, 20\)$"),
    ({"phi": {"weight": 4.0, "positions": {"start": 0, "stop": 8}, "rule": {"regex": "("}}},
     r"^task.phi.rule.regex='\(': not a valid regex"),
    ({"phi": {"weight": 4.0, "positions": {"start": 0, "stop": 8}, "rule": {"glob": "*"}}},
     r"^task.phi.rule=\{'glob': '\*'\}: must be one of"),
    ({"phi": {"weight": 4.0, "positions": {"start": 0, "stop": 8}, "rule": {"words": []}}},
     r"^task.phi.rule.words=\[\]: must be a non-empty list"),
    ({"phi": {"weight": 4.0, "positions": {"start": 0, "stop": 8}, "text": "nope"}},
     r"^task.phi.text='nope': allowed values are at_most_20_words, ends_with_period"),
    ({"phi": {"weight": 4.0, "positions": {"start": 0, "stop": 8}, "rule": {"words": ["a"]}, "text": "no_digits"}},
     r"^task.phi: give exactly one of rule"),
    ({"phi": {"weight": 4.0, "shape": "max", "positions": {"start": 0, "stop": 8}, "rule": {"words": ["a"]}}},
     r"^task.phi.shape='max': allowed values are mean, all, parity$"),
])
def test_config_errors_name_the_key_the_value_and_what_is_allowed(change, message):
    with pytest.raises(ConfigError, match=message):
        TT.parse(text_cfg(**change))


def test_config_parse_of_a_text_task():
    with pytest.raises(ConfigError, match=r"^task.kind=text: needs policy.kind=pretrained"):
        parse(compose_plain(["task=text"]))
    with pytest.raises(ConfigError, match=r"^task.kind='prose': allowed values are toy, text$"):
        parse(compose_plain(["+task.kind=prose"]))
    with pytest.raises(ConfigError, match=r"^task.vocab: unknown key"):
        parse(compose_plain(["task=text", "+task.vocab=3"]))
    assert parse(compose_plain(["+task.kind=toy"])).static.task == parse(compose_plain()).static.task
    plain = compose_plain(["task=text"])
    assert TT.parse(OmegaConf.create(plain)) == TT.parse(plain)  # Hydra's DictConfig / ListConfig read alike


def test_a_rule_that_matches_no_token_is_refused(tok):
    with pytest.raises(ConfigError, match=r"^task.phi.rule=\{'regex': 'zzzz'\}: matches 0 of the 300 tokens"):
        TT.build(TT.parse(text_cfg({"regex": "zzzz"})), tok)


@pytest.mark.parametrize("rule", [{"regex": ".*"}, {"regex": "^"}])
def test_a_rule_that_matches_every_token_is_refused(tok, rule):
    """'.*' matches every token's text; the special tokens are never good, so it used to pass as
    'one bad token' (docs/text-task.md promised a refusal): counted over the tokens a rule can match."""
    with pytest.raises(ConfigError, match=r"^task.phi.rule=\{'regex': '(\.\*|\^)'\}: matches every one of the 297 "
                                          r"tokens a rule can match \(special tokens never are\); allowed"):
        TT.build(TT.parse(text_cfg(rule)), tok)


@pytest.mark.parametrize("content, message", [
    (None, r"^task.prompts_file=.*nope.txt: no such file$"),
    (b"Say hi.\n\xff\xfe caf\xe9\n", r"^task.prompts_file=.*bad.txt: not UTF-8 text \(byte 0xff at offset 8\)$"),
    (b"# only comments\n\n", r"^task.prompts_file=.*bad.txt: holds no prompt \(one per line; blank lines and '#' "
                              r"lines are skipped\)$"),
])
def test_a_prompts_file_that_is_missing_not_utf8_or_empty_is_one_line(tok, tmp_path, content, message):
    path = tmp_path / ("nope.txt" if content is None else "bad.txt")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        TT.build(TT.parse(text_cfg(prompts_file=str(path), prompts=1)), tok)


def test_the_training_path_passes_the_prompts_to_text_rewards(tok, tmp_path):
    """task.rewards_B (what the training step and the logged samples call) gives a text reward the
    prompt of each row, as TextTask.rewards_B does."""
    from dataclasses import replace

    seen = []

    @TR.register("_test_prompt_len")
    def prompt_len(completions, prompts=None, **kw):
        seen.append(prompts)
        return [float(len(p)) for p in prompts]

    try:
        prompts = tmp_path / "p.txt"
        prompts.write_text("a\nbb\nccc\n")
        cfg = text_cfg(prompts=3, prompts_file=str(prompts), new_tokens=4,
                       phi={"weight": 1.0, "positions": {"start": 0, "stop": 2}, "rule": {"chars": "0-9"}},
                       phi_prime={"positions": {"start": 2, "stop": 4}, "text": "_test_prompt_len"})
        cfg["task"]["phi_prime"].pop("rule")
        tt = TT.build(TT.parse(cfg), tok)
        task = tt.task  # its text reward is bound to tok and the prompts' texts
        tokens = jnp.full((3, 4), 5, jnp.int32)
        got = jax.jit(lambda t, p: T.rewards_B(task, t, jnp.ones((3, 4), bool), p)[1])(tokens, jnp.array([2, 0, 1]))
        np.testing.assert_array_equal(np.asarray(got), [3.0, 1.0, 2.0])
        assert seen[-1] == ["ccc", "a", "bb"]
    finally:
        del TR.REGISTRY["_test_prompt_len"]
