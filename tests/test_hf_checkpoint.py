"""The final checkpoint opens with plain transformers, from nothing but its directory, and generates."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import run_cli


def test_final_opens_with_auto_classes(pretrained_run):
    final = pretrained_run / "pretrain" / "final"
    model = AutoModelForCausalLM.from_pretrained(str(final), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(final), local_files_only=True)
    ids = tokenizer("Tom went", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5 or tokenizer.eos_token_id in out[0].tolist()
    assert tokenizer.bos_token == "<|bos|>" and tokenizer.eos_token == "<|eos|>" and tokenizer.pad_token == "<|pad|>"


def test_generate_command_prints_one_line_per_prompt(pretrained_run):
    result = run_cli("generate", "--run", str(pretrained_run), "--prompt", "Tom went", "--prompt", "Mia saw",
                     "--max-new-tokens", "8", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Tom went") and lines[1].startswith("Mia saw")
    again = run_cli("generate", "--run", str(pretrained_run), "--prompt", "Tom went", "--prompt", "Mia saw",
                    "--max-new-tokens", "8", "--temperature", "0")
    assert again.stdout == result.stdout  # greedy is deterministic
