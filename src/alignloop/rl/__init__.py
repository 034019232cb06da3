"""Stage 4: RL fine-tuning of the policy (PPO, GRPO/RLOO, DPO, best-of-n): the maths, the configs and the loops."""
