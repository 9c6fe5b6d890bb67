"""Real-model faults a hostile user meets (issue 30), on tiny checkpoints the tests write themselves:
each is a valid tiny `task=text policy=pretrained` config with one thing wrong, and the words its
one-line refusal must hold. Used by tests/test_preflight.py and the hostile-config property test."""
from __future__ import annotations

import json
from pathlib import Path

from sim.lm.families import FAMILIES
from tests.lm.tiny import write_tiny

# a tiny pretrained run that the preflight accepts: 2 prompts, 8 new tokens
VALID = {"task": "text", "policy": "pretrained", "task.prompts": "2", "task.prompts_per_step": "null",
         "task.eval_prompts": "null", "task.new_tokens": "8",
         "task.phi.positions": "{start:0,stop:4}", "task.phi_prime.positions": "{start:4,stop:8}",
         "algo.group_size": "2", "seeds": "1", "steps": "2", "log_every": "1", "policy.eval.samples": "2", "plots": "false"}


def overrides(changes: dict) -> list[str]:
    """VALID with `changes` (key -> value; a key starting with '+' or '~' is added as it is)."""
    base = {k: v for k, v in VALID.items() if k not in changes}
    return [f"{k}={v}" for k, v in base.items()] + [k if v is None else f"{k}={v}" for k, v in changes.items()]


def _hf_copy(hf: Path, directory: Path, config_text: str | None = None, **config) -> str:
    directory.mkdir()
    for f in hf.iterdir():
        if f.name != "config.json":
            (directory / f.name).symlink_to(f)
    cfg = json.loads((hf / "config.json").read_text())
    (directory / "config.json").write_text(config_text if config_text is not None else json.dumps(cfg | config))
    return str(directory)


def write_faults(root: Path) -> tuple[str, dict[str, tuple[dict, str]]]:
    """(the good checkpoint, fault name -> (changes to VALID, words of the refusal))."""
    tiny = write_tiny(root / "tiny")
    hf = tiny["hf_dir"]
    cut = root / "cut.gguf"
    cut.write_bytes(tiny["gguf"].read_bytes()[:tiny["gguf"].stat().st_size // 2])
    (root / "latin1.txt").write_bytes("Say hi.\nCaf\xe9 au lait?\n".encode("latin-1"))
    (root / "empty.txt").write_text("# nothing but a comment\n\n")
    ck = lambda path: {"policy.checkpoint": path}  # noqa: E731
    faults = {
        "config.json not JSON": (ck(_hf_copy(hf, root / "notjson", config_text="{model_type: llama")),
                                 "config.json is not valid JSON"),
        "truncated gguf": (ck(str(cut)), "not a readable GGUF file, truncated or damaged"),
        "model_type qwen2": (ck(_hf_copy(hf, root / "qwen2", model_type="qwen2")),
                             "config.json model_type='qwen2' is not supported; supported: "),
        "model_type gpt2": (ck(_hf_copy(hf, root / "gpt2", model_type="gpt2")), "model_type='gpt2' is not supported"),
        "wrong tensor shape": (ck(_hf_copy(hf, root / "shape", intermediate_size=96)),
                               "tensor model.layers.0.mlp.gate_proj.weight has shape (128, 64); expected (96, 64)"),
        "prompts not UTF-8": ({"task.prompts_file": str(root / "latin1.txt")}, "not UTF-8 text (byte 0xe9"),
        "prompts missing": ({"task.prompts_file": str(root / "nope.txt")}, "nope.txt: no such file"),
        "prompts empty": ({"task.prompts_file": str(root / "empty.txt")}, "empty.txt: holds no prompt"),
        "too many prompts": ({"task.prompts": "1000"}, "task.prompts=1000: the shipped instructions.txt has"),
        "rule matches no token": ({"task.phi_prime.rule.regex": "zzqzzq"}, "matches 0 of the"),
        "rule matches every token": ({"task.phi_prime.rule.regex": "'.*'"}, "matches every one of the"),
        "context too long": ({"task.new_tokens": "100000"}, "task.new_tokens=100000: the longest prompt"),
        "mesh vs devices": ({"runtime.mesh.data": "7"}, "runtime.mesh data=7 x fsdp=1 x tp=1 = 7: must equal the "
                                                        "number of devices"),
        "tensorboard missing": ({"logger": "tensorboard"}, "logger=tensorboard: needs the tensorboardX package"),
        "no coordinator": ({"runtime.distributed": "true"}, "runtime.distributed=true: cannot join"),
    }
    if "qwen2" in FAMILIES:  # supported once its model is (then it is no fault)
        del faults["model_type qwen2"]
    return str(hf), {name: ({"policy.checkpoint": str(hf), **changes}, words) for name, (changes, words) in faults.items()}
