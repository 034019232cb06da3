"""Two processes (torchrun / accelerate launch, gloo on CPU) train exactly as one on the same global batch.

Each test runs a stage once in the test's own process and once launched on two
processes, and compares what they logged and the weights they wrote. The
tolerances are far below what a wrong split or a wrong loss normalisation
gives (a per-rank token mean instead of the global one moves the SFT loss in
the third digit), and far above float rounding between the two (about 1e-6).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_PRETRAIN, TINY_RL, cli_env, run_cli, write_tiny_corpus
from reward_helpers import good_bad_pairs, tiny_decoder, write_jsonl

from alignloop.config.base import load_config
from alignloop.config.registry import config_class
from alignloop.errors import ConfigError
from alignloop.pretrain.stage import run_pretrain
from alignloop.reward.stage import run_reward
from alignloop.rl.advantages import masked_whiten, masked_whiten_across
from alignloop.rl.ppo import run_ppo
from alignloop.runs import RunDir
from alignloop.sft.stage import run_sft
from alignloop.train import distributed

BIN = Path(sys.executable).parent
REL = 1e-4  # on logged losses; float rounding between 1 and 2 processes is ~1e-6

# PPO's logged values that are means of terms with both signs, so a relative tolerance means nothing near
# zero: bound them by their terms' scale instead. policy_loss = -mean(min(r A, clip(r) A)) over tokens with
# whitened advantages (|A| ~ 1, the mean itself ~1e-3): the two runs' log-probs differ by float rounding
# (~1e-6 nats, more when the matmul libraries pick other thread counts on a loaded machine), which moves r,
# hence the loss, by ~1e-6 per unit of |A|: 1e-4 of that unit leaves room for it (a wrong split or
# normalisation is caught by the weight update, `assert_same_update`). approx_kl = mean((r - 1) - log r)
# is ~1e-7 at these steps. KL is a difference of two log-prob sums of tens of nats:
# the sampler's rounding, which depends on the batch's shape, moves it by ~1e-5 nats.
PPO_ABS_TOL = {"policy_loss": 1e-4, "approx_kl": 1e-6, "kl": 1e-4}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# An accelerate config choosing FSDP, as `accelerate config` writes it (alignloop shards with FSDP2 itself).
FSDP_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 2
  fsdp_reshard_after_forward: true
"""


def launch(*args: str, launcher: str = "torchrun", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`alignloop ARGS` on two CPU processes, started the way a user would.

    `launcher`: "torchrun" (DDP), "accelerate" (its multi-GPU launcher: DDP) or "fsdp"
    (`accelerate launch --config_file` with an FSDP config).
    """
    if launcher == "torchrun":
        command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "alignloop", *args]
    elif launcher == "fsdp":
        config = Path(args[args.index("-r") + 1]).parent / "accelerate-fsdp.yaml"
        config.write_text(FSDP_CONFIG)
        command = [str(BIN / "accelerate"), "launch", "--config_file", str(config),
                   "--main_process_port", str(_free_port()), "-m", "alignloop", *args]
    else:
        # On a machine without GPUs, accelerate's --multi_gpu launcher still starts N processes
        # (through torch.distributed.run); alignloop then joins them with gloo on the CPU.
        command = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                   "-m", "alignloop", *args]
    extra = {"OMP_NUM_THREADS": "1", "HF_HOME": str(Path(args[args.index("-r") + 1]).parent / "hf"),
             **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=cli_env(**extra), timeout=300)


STAGES = {"pretrain": run_pretrain, "sft": run_sft, "reward": run_reward, "ppo": run_ppo}


def alone(stage: str, run: Path, args: list[str]) -> None:
    """The stage in this (single) process: the reference the launched run must equal."""
    STAGES[stage](RunDir(run).ensure(), load_config(config_class(stage), None, args), lambda message: None)


def run_both(stage: str, one: Path, two: Path, args: list[str], launcher: str = "torchrun") -> str:
    """The stage alone in this process on run `one`, and launched on two processes on run `two` (its stderr)."""
    alone(stage, one, args)
    result = launch(stage, "-r", str(two), *args, launcher=launcher)
    _ok(result)
    return result.stderr


def assert_sharded(stderr: str, launcher: str, models: int = 1) -> None:
    """Under the FSDP launcher, rank 0 said once per trained model that FSDP sharded it (and never otherwise)."""
    shardings = re.findall(r"FSDP: \w+ sharded over 2 processes \((\d+) blocks", stderr)
    assert len(shardings) == (models if launcher == "fsdp" else 0) and all(int(n) > 0 for n in shardings), stderr


def _metrics(path: Path, key: str) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["step"], r[key]) for r in records if key in r]


def assert_same_metrics(one: Path, two: Path, keys: list[str], abs_tol: dict[str, float] | None = None) -> None:
    for key in keys:
        tolerance = (abs_tol or {}).get(key, 1e-6)
        a, b = _metrics(one, key), _metrics(two, key)
        assert a and [s for s, _ in a] == [s for s, _ in b], (key, a, b)  # each step logged once, by rank 0
        for (step, x), (_, y) in zip(a, b):
            assert y == pytest.approx(x, rel=REL, abs=tolerance), f"{key} at step {step}: 1 process {x}, 2 processes {y}"


def _weights(*folders: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(folder / "model.safetensors")) for folder in folders]


def assert_same_update(start: Path, one: Path, two: Path) -> None:
    """Both runs moved every weight the same way: |w2 - w1| <= 1% of the largest change from the start."""
    w0, w1, w2 = _weights(start, one, two)
    moved = max(float((w1[k] - w0[k]).abs().max()) for k in w1)
    apart = max(float((w2[k] - w1[k]).abs().max()) for k in w1)
    assert moved > 0 and apart <= 0.01 * moved, f"weights moved up to {moved:.3g}; the runs differ by {apart:.3g}"


def assert_same_weights(since: Path, one: Path, two: Path, share: float = 1e-2) -> None:
    """Per tensor, the two runs' final weights are apart by at most `share` of how far the one-process run moved
    them from `since` (a checkpoint or the starting model; a tensor it lacks, such as a new head: of its norm),
    in L2 norm.

    Not element by element: Adam divides each gradient element by its running RMS, so an element whose gradient
    is near zero turns the float rounding of the two-process sum (~1e-7 relative) into an update difference of up
    to the learning rate. A handful of such elements is expected (one in ~500,000 of the tiny model passed 1e-5);
    a wrong split or normalisation moves whole tensors."""
    w0, w1, w2 = _weights(since, one, two)
    for name in w1:
        moved = float((w1[name] - w0.get(name, torch.zeros_like(w1[name]))).norm())
        apart = float((w2[name] - w1[name]).norm())
        assert apart <= share * moved, f"{name}: moved {moved:.3g} since {since.name}; the runs differ by {apart:.3g}"


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "fsdp"])
def test_pretrain_two_processes_match_one_and_resume(tmp_path, launcher):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    args = [f"data.path={corpus}", "train.max_steps=6", "train.save_every=3", "train.eval_every=3",
            *TINY_PRETRAIN, "train.log_every=1"]
    one, two = tmp_path / "one", tmp_path / "two"
    alone("pretrain", one, args)

    crashed = launch("pretrain", "-r", str(two), *args, launcher=launcher,
                     env={"ALIGNLOOP_CRASH_AT": "pretrain:saved:3"})
    assert crashed.returncode != 0
    assert [p.name for p in (two / "pretrain" / "checkpoints").iterdir()] == ["step-000003"]
    resumed = launch("pretrain", "-r", str(two), *args, launcher=launcher)
    _ok(resumed)
    assert resumed.stderr.count("resuming from step 3") == 1  # every rank resumed; one spoke
    assert_sharded(resumed.stderr, launcher)

    assert_same_metrics(one / "pretrain" / "metrics.jsonl", two / "pretrain" / "metrics.jsonl", ["loss", "val_loss"])
    assert_same_weights(one / "pretrain" / "checkpoints" / "step-000003", one / "pretrain" / "final",
                        two / "pretrain" / "final")
    assert json.loads((two / "manifest.json").read_text())["stages"]["pretrain"]["status"] == "done"


def _uneven_sft_pairs(n: int = 24) -> list[dict]:
    """Responses from 1 to 12 sentences: the two halves of a batch hold very different token counts."""
    rng = random.Random(1)
    pairs = []
    for i in range(n):
        name = rng.choice(["Tom", "Mia", "Ben", "Lily"])
        pairs.append({"prompt": f"{name} went to the park.",
                      "response": " ".join([f"{name} was happy."] * (1 + (i * 5) % 12)) + " The end."})
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "fsdp"])
def test_sft_under_accelerate_launch_normalises_by_global_tokens(pretrained_run, tmp_path, launcher):
    data = write_jsonl(tmp_path / "sft.jsonl", _uneven_sft_pairs())
    args = [f"data.path={data}", f"model.path={pretrained_run / 'pretrain' / 'final'}", "train.max_steps=4",
            "train.batch_size=4", "train.lr=3e-3", "train.warmup_steps=1", "train.eval_every=2", "train.save_every=4",
            "train.eval_batches=2", "train.samples=0", "train.log_every=1", "train.threads=1", "data.max_len=96"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert_sharded(run_both("sft", one, two, args, launcher=launcher), launcher)
    assert_same_metrics(one / "sft" / "metrics.jsonl", two / "sft" / "metrics.jsonl", ["loss", "val_loss"])
    assert_same_update(pretrained_run / "pretrain" / "final", one / "sft" / "final", two / "sft" / "final")


def _uneven_preferences() -> list[dict]:
    """Pairs, with a second and third comparison under some prompts: groups of 1 to 3 comparisons."""
    records = good_bad_pairs(40)
    for i in range(0, 40, 3):
        prompt, thing = records[i]["prompt"], records[i]["rejected"].split()[0]
        records.append({"prompt": prompt, "chosen": "They played all day. The end.", "rejected": f"{thing} {thing}."})
        if i % 2:
            records.append({"prompt": prompt, "chosen": "It was a good day.", "rejected": f"{thing}."})
    return records


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "fsdp"])
def test_reward_two_processes_match_one(tmp_path, launcher):
    backbone = tiny_decoder(tmp_path / "backbone")
    prefs = write_jsonl(tmp_path / "prefs.jsonl", _uneven_preferences())
    args = [f"data.path={prefs}", f"model.path={backbone}", "train.max_steps=4", "train.batch_size=8",
            "train.lr=3e-3", "train.warmup_steps=1", "train.eval_every=2", "train.save_every=2", "train.log_every=1",
            "train.threads=1", "train.patience=0", "model.max_length=48"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert_sharded(run_both("reward", one, two, args, launcher=launcher), launcher)
    stage = Path("rounds") / "001" / "reward"
    assert_same_metrics(one / stage / "metrics.jsonl", two / stage / "metrics.jsonl",
                        ["loss", "accuracy", "val_loss", "grad_norm"])
    assert_same_weights(backbone, one / stage / "final", two / stage / "final")


def _ppo_both(rl_run: Path, tmp_path: Path, launcher: str, args: list[str], keys: list[str],
              abs_tol: dict[str, float] | None = None) -> Path:
    """PPO on `rl_run` alone and on a copy of it on two processes (8 prompts, 2 epochs, two micro-batches
    a minibatch, greedy sampling); asserts they logged the same `keys`. Returns the copy."""
    other = tmp_path / "two"
    shutil.copytree(rl_run, other)
    args = [f"prompts.path={rl_run / 'prompts.jsonl'}", "ppo.rollout_prompts=8", "ppo.epochs=2", "ppo.minibatches=1",
            "ppo.grad_accum=2", *args, "sampling.top_k=1", *TINY_RL]
    assert_sharded(run_both("ppo", rl_run, other, args, launcher=launcher), launcher, models=2)  # policy, critic
    stage = Path("rounds") / "001" / "ppo"
    assert_same_metrics(rl_run / stage / "metrics.jsonl", other / stage / "metrics.jsonl", keys, abs_tol=abs_tol)
    return other


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "fsdp"])
def test_ppo_two_processes_match_one(rl_run, tmp_path, launcher):
    # top_k=1 makes the rollouts a function of the prompts alone, whichever process samples them
    # (log-probs and the update still use the full distribution). Two micro-batches per minibatch
    # take the unfused critic path and the token-weighted accumulation across processes.
    other = _ppo_both(rl_run, tmp_path, launcher,
                      ["ppo.iterations=3", "ppo.lr=1e-4", "run.save_every=2"],
                      ["score", "kl", "policy_loss", "value_loss", "approx_kl", "kl_coef"],
                      abs_tol=PPO_ABS_TOL)
    stage = Path("rounds") / "001" / "ppo"
    policy = Path("rounds") / "001" / "policy" / "final"
    assert_same_update(rl_run / "pretrain" / "final", rl_run / policy, other / policy)
    samples = (other / stage / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 3 * 2  # two rows an iteration, written once


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "fsdp"])
def test_lora_ppo_two_processes_match_one(rl_run, tmp_path, launcher):
    # LoRA under DDP or FSDP: the wrapper holds the peft policy (and the LoRA critic), the reference is
    # the policy with its adapter off, and rank 0 saves adapters in checkpoints and a merged final
    # (under FSDP from the gathered shards).
    other = _ppo_both(rl_run, tmp_path, launcher,
                      ["models.lora.r=4", "ppo.iterations=2", "ppo.lr=3e-3", "ppo.critic_lr=3e-3", "run.save_every=1"],
                      ["score", "kl", "policy_loss", "value_loss", "approx_kl"], abs_tol=PPO_ABS_TOL)
    stage = Path("rounds") / "001" / "ppo"
    checkpoint = other / stage / "checkpoints" / "step-000002"
    assert (checkpoint / "critic" / "adapter" / "adapter_model.safetensors").exists()
    assert not (checkpoint / "model.safetensors").exists()  # adapters alone
    policy = Path("rounds") / "001" / "policy" / "final"
    assert_same_update(rl_run / "pretrain" / "final", rl_run / policy, other / policy)
    a1, a2 = (load_file(str(r / policy / "adapter" / "adapter_model.safetensors")) for r in (rl_run, other))
    assert a1.keys() == a2.keys() and all(torch.allclose(a2[k], a1[k], atol=1e-5) for k in a1)


@pytest.mark.slow
def test_guard_under_torchrun_checks_once_and_every_rank_stops_together(rl_run):
    # Both ranks sample each check; rank 0's figures decide the best policy and the stop, so neither waits for
    # the other at the save or the stop, and each check is written once.
    from test_guard import PPO_ARGS, guard_run, kept_by_hand

    run = guard_run(rl_run)
    # Two ranks' first update moves the tiny policy further than one's (KL about 0.6 at the first check, 1.1 at
    # the third): a wider KL budget than the one-process test's lets a check be kept before the stop.
    result = launch("ppo", "-r", str(run), f"prompts.path={run / 'prompts.jsonl'}", *PPO_ARGS, *TINY_RL,
                    "guard.max_kl=0.9")
    _ok(result)
    stage = run / "rounds" / "001" / "ppo"
    history = [json.loads(line) for line in (stage / "guard.jsonl").read_text().splitlines()]
    stop = history[-1]
    assert stop["stopped"] and [h["iteration"] for h in history] == list(range(1, stop["iteration"] + 1))
    assert result.stderr.count(f"ppo guard it {stop['iteration']}:") == 1  # logged by rank 0 alone
    entry = json.loads((run / "manifest.json").read_text())["stages"]["ppo:001"]
    assert entry["status"] == "done" and entry["guard_stopped_at"] == stop["iteration"]
    best = kept_by_hand(history, 0.9)
    assert best is not None and stop["kept"] == best["iteration"] and "guard.max_kl 0.9" in stop["fired"]
    final, kept = _weights(run / "rounds" / "001" / "policy" / "final",
                           stage / "guard" / f"best-{best['iteration']:06d}")
    assert final.keys() == kept.keys() and all(torch.equal(final[k], kept[k]) for k in final)


FSDP_HELPERS_SCRIPT = """
import torch
from torch.distributed.tensor import DTensor
from transformers import GPT2Config, GPT2LMHeadModel
from alignloop.train import distributed as d

d.start("cpu")
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
shapes = {name: p.shape for name, p in model.named_parameters()}
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
model, optimizer = d.prepare(model, optimizer)
assert all(isinstance(p, DTensor) for p in model.parameters())  # sharded
tokens = torch.arange(24).reshape(4, 6) % 50
with d.full_params(model), torch.no_grad():
    # Whole plain tensors, and forward passes that exchange nothing: the ranks run different
    # batches, and through the backbone (a block's hooks) before any forward of the root.
    assert all(not isinstance(p, DTensor) and p.shape == shapes[n] for n, p in model.named_parameters())
    model.transformer(input_ids=tokens[: 1 + d.rank()])
assert all(isinstance(p, DTensor) for p in model.parameters())  # sharded again
model(input_ids=tokens, labels=tokens).loss.backward()
optimizer.step()
weights, state = d.full_state_dict(model), d.optimizer_state(optimizer)
if d.is_main():
    assert weights["lm_head.weight"] is weights["transformer.wte.weight"]  # tied: one tensor
    assert all(weights[n].shape == shapes[n] for n in shapes)
assert all(v["exp_avg"].shape == shapes[n] for v, n in zip(state["state"].values(), shapes))
before = [p.to_local().clone() for p in model.parameters()]
d.load_optimizer_state(optimizer, state)
d.load_full_state_dict(model, d.broadcast_object(weights))
assert all(torch.equal(p.to_local(), b) for p, b in zip(model.parameters(), before))
print("helpers ok on rank", d.rank())
"""


@pytest.mark.slow
def test_fsdp_helpers_on_two_processes(tmp_path):
    # `full_params`, the whole state dicts and their way back, on two processes sharded by FSDP2.
    script = tmp_path / "helpers.py"
    script.write_text(FSDP_HELPERS_SCRIPT)
    result = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script)],
                            capture_output=True, text=True, timeout=300,
                            env=cli_env(OMP_NUM_THREADS="1", ACCELERATE_USE_FSDP="true"))
    _ok(result)
    assert result.stdout.count("helpers ok on rank") == 2


@pytest.mark.parametrize("setting, message", [
    ("ACCELERATE_USE_DEEPSPEED", r"^DeepSpeed is not supported \(sampling, checkpoints and resume are built for DDP "
                                 r"and FSDP\); choose FSDP .* or DDP in the accelerate config$"),
    ("FSDP_OFFLOAD_PARAMS", r"^FSDP with fsdp_offload_params is not supported; set it to false"),
])
def test_unsupported_engine_settings_are_one_line_errors(monkeypatch, setting, message):
    # As `accelerate launch` sets them from a config choosing DeepSpeed, or FSDP with CPU offload;
    # refused before any process group is joined.
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "ACCELERATE_USE_FSDP": "true", setting: "true"}.items():
        monkeypatch.setenv(name, value)
    if setting == "ACCELERATE_USE_DEEPSPEED":
        monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(ConfigError, match=message):
        distributed.start("cpu")
    assert distributed._accelerator is None and not torch.distributed.is_initialized()


# ---- a single process: every helper is the identity ------------------------------------------

def test_alone_each_process_takes_everything():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.local_slice(5, "train.batch_size") == slice(0, 5)
    assert distributed.uneven_slice(3) == slice(0, 3)
    assert distributed.shard_list([1, 2, 3], "x") == [1, 2, 3]
    assert distributed.global_share(17) == 1.0 and distributed.gradient_scale() == 1
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0]
    assert distributed.global_mean(0.25, 4) == 0.25
    assert distributed.mean_across({"a": 1.0}, summed=("a",)) == {"a": 1.0}
    model = torch.nn.Linear(2, 2)
    assert distributed.unwrap(model) is model and distributed.prepare(model) == (model,)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    with distributed.full_params(model):
        pass
    assert distributed.full_state_dict(model) is None  # saved as usual
    assert distributed.optimizer_state(optimizer).keys() == optimizer.state_dict().keys()


def test_a_global_batch_that_does_not_split_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # as under `torchrun --nproc_per_node 2`
    with pytest.raises(ConfigError, match=r"^train.batch_size=3 is the global batch and must be divisible by "
                                          r"the 2 processes of this run; set it to a multiple of 2$"):
        distributed.local_slice(3, "train.batch_size")
    assert distributed.local_slice(4, "train.batch_size") == slice(0, 2)  # rank 0's half


def test_whitening_across_one_process_is_plain_whitening():
    x = torch.tensor([[1.0, 2.0, 7.0, 0.0], [3.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    torch.testing.assert_close(masked_whiten_across(x, mask, lambda values: list(values)), masked_whiten(x, mask))


def test_commands_that_do_not_train_refuse_a_launcher(tmp_path):
    result = run_cli("loop", "-r", str(tmp_path / "run"), env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "`alignloop loop` runs in one process" in result.stderr
