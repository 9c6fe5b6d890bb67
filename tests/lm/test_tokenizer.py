"""sim/lm/tokenizer.py: the GGUF-built tokenizer against tokenizer.json, chat templates, SmolLM2."""
from __future__ import annotations

import json
from dataclasses import replace

import jinja2
import pytest
from tokenizers import Tokenizer as HFTokenizer

from sim.lm import tokenizer as T
from sim.lm.weights import CheckpointError
from tests.lm import tiny as tiny_mod

TEXTS = [
    "The capital of France is Paris.",
    "In 2024 there were 365 days; 3.14159 and 1,000,000 too.",
    "She said: \"it's fine\", they'll see, we're done, I'm here, you've won, he'd go.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "Ünïcödé: café, naïve, 東京, emoji 🙂 and math ∑x²",
    "words never seen in training: zygote xylophone quixotic",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "",
]
PARAGRAPH = ("Reinforcement learning from human feedback fine-tunes a language model against a learned "
             "reward. The policy is kept close to its reference by a penalty on the divergence between "
             "the two, so that it does not forget what it knew while it learns what it is paid for.")


def test_gguf_tokenizer_equals_tokenizer_json(tiny):
    hf = HFTokenizer.from_file(str(tiny["hf_dir"] / "tokenizer.json"))
    ours_hf, ours_gguf = T.load(str(tiny["hf_dir"])), T.load(str(tiny["gguf"]))
    for t in TEXTS:
        want = hf.encode(t).ids
        assert ours_gguf.encode(t) == want, t
        assert ours_hf.encode(t) == want, t
        assert ours_gguf.decode(want) == hf.decode(want, skip_special_tokens=False) == t
    for tok in (ours_hf, ours_gguf):
        assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 2, tiny["cfg"].vocab)
        assert tok.add_bos is False  # as SmolLM2: tokenizer.ggml.add_bos_token = false, no BOS template
    assert ours_gguf.decode(ours_gguf.encode(TEXTS[-2]), skip_special_tokens=True) == "user\nhello\nassistant\n"


@pytest.mark.parametrize("pre", ["gpt-2", "smollm"])
def test_the_pre_tokenizer_named_in_the_gguf_is_the_one_used(tiny, tmp_path, pre):
    """A GGUF naming the pre-tokenizer its vocabulary was trained with reproduces tokenizer.json.
    GPT-2's split keeps numbers whole, so its vocabulary has digit merges; read with SmolLM2's
    (digits one by one) the same vocabulary tokenizes numbers differently: the name matters."""
    hf = tiny_mod.make_tokenizer(pre)
    cfg = replace(tiny["cfg"], vocab=hf.get_vocab_size())
    params = tiny_mod.random_params(cfg)
    right = T.load(str(tiny_mod.write_gguf(tmp_path / "right.gguf", cfg, params, hf, pre=pre)))
    for text in TEXTS:
        assert right.encode(text) == hf.encode(text).ids, text
    if pre == "gpt-2":
        wrong = T.load(str(tiny_mod.write_gguf(tmp_path / "wrong.gguf", cfg, params, hf, pre="smollm")))
        assert wrong.encode(TEXTS[1]) != hf.encode(TEXTS[1]).ids


def test_add_bos_token_is_honoured(tiny, tmp_path):
    path = tiny_mod.write_gguf(tmp_path / "bos.gguf", tiny["cfg"], tiny["params"],
                               HFTokenizer.from_file(str(tiny["hf_dir"] / "tokenizer.json")), add_bos=True)
    tok = T.load(str(path))
    assert tok.add_bos
    ids = tok.encode("The capital")
    assert ids[0] == 1 and ids[1:] == tok.encode("The capital", add_special_tokens=False)
    tok.save(tmp_path)  # tokenizer.json + tokenizer_config.json read back with the same behaviour
    back = T.from_hf_dir(tmp_path)
    assert back.add_bos and back.encode("The capital") == ids and back.chat_template == tok.chat_template


def test_save_and_reload_from_hf_dir(tiny, tmp_path):
    tok = T.load(str(tiny["gguf"]))
    tok.save(tmp_path)
    back = T.from_hf_dir(tmp_path)
    assert (back.bos_id, back.eos_id, back.pad_id, back.add_bos) == (tok.bos_id, tok.eos_id, tok.pad_id, False)
    for t in TEXTS:
        assert back.encode(t) == tok.encode(t)


def test_token_texts(tiny):
    tok = T.load(str(tiny["hf_dir"]))
    texts = tok.token_texts()
    assert len(texts) == tok.vocab_size and texts[:3] == tuple(tiny_mod.SPECIAL)
    for t in TEXTS[:4]:  # ASCII: every token decodes to whole characters
        assert "".join(texts[i] for i in tok.encode(t)) == t


def test_chat_template_renders_as_transformers_does(tiny):
    tok = T.load(str(tiny["gguf"]))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tok.apply_chat_template(messages) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(messages[:1], add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"
    # trim_blocks / lstrip_blocks, bos_token, tojson and raise_exception as transformers sets them up
    tok.chat_template = ("{% for m in messages %}\n    {% if m['role'] == 'user' %}\n{{ bos_token }}"
                         "{{ m['content'] | tojson }}\n    {% endif %}\n{% endfor %}"
                         "{% if messages | length > 1 %}{{ raise_exception('one message only') }}{% endif %}")
    assert tok.apply_chat_template(messages[:1]) == '<|im_start|>"Hi"\n'
    with pytest.raises(jinja2.exceptions.TemplateError, match="one message only"):
        tok.apply_chat_template(messages)
    tok.chat_template = "{{ ''.__class__.__mro__ }}"  # the sandbox refuses attribute escapes
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template(messages)


def test_errors_are_one_line(tiny, tmp_path):
    (tmp_path / "config.json").write_text((tiny["hf_dir"] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no tokenizer.json") as e:
        T.load(str(tmp_path))
    assert "\n" not in str(e.value)
    hf = HFTokenizer.from_file(str(tiny["hf_dir"] / "tokenizer.json"))
    path = tiny_mod.write_gguf(tmp_path / "odd.gguf", tiny["cfg"], tiny["params"], hf, pre="no-such-pre")
    with pytest.raises(CheckpointError, match="tokenizer.ggml.pre='no-such-pre' is not supported") as e:
        T.load(str(path))
    assert "\n" not in str(e.value)
    tok = T.Tokenizer(hf, bos_id=1, eos_id=2, pad_id=2)
    with pytest.raises(CheckpointError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "Hi"}])


# ---------------------------------------------------------------------------- SmolLM2 (when installed)

def test_smollm2_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (49152, 1, 2, 2, False)
    ids = tok.encode("The capital of France is")
    assert [tok.tok.id_to_token(i) for i in ids] == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]  # whole words
    assert tok.decode(ids) == "The capital of France is"
    assert len(tok.encode("12345")) == 5  # SmolLM2's pre-tokenizer splits digits one by one
    assert tok.decode(tok.encode(PARAGRAPH)) == PARAGRAPH
    words = len(PARAGRAPH.split())
    assert words <= len(tok.encode(PARAGRAPH)) <= 1.5 * words  # ordinary English: about a word a token
    for t in TEXTS:
        assert tok.decode(tok.encode(t)) == t
    assert tok.encode("<|im_start|>user<|im_end|>")[::2] == [1, 2]  # special tokens parsed from text
    texts = tok.token_texts()
    assert len(texts) == 49152 and texts[2] == "<|im_end|>"


def test_smollm2_chat_template(smollm2_tokenizer):
    text = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == 1 and ids.count(2) == 2


def test_hf_dir_options(tiny, tmp_path):
    """tokenizer_config.json's add_bos_token adds BOS as LlamaTokenizerFast does; a
    chat_template.jinja file (newer transformers) wins over the config's template."""
    (tmp_path / "tokenizer.json").write_text((tiny["hf_dir"] / "tokenizer.json").read_text())
    config = json.loads((tiny["hf_dir"] / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"add_bos_token": True}))
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    tok = T.from_hf_dir(tmp_path)
    assert tok.add_bos and tok.encode("Paris") == [1] + T.load(str(tiny["hf_dir"])).encode("Paris")
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == "<|im_start|>Hi"
