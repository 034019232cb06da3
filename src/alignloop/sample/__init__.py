"""Stage 2a: the policy writes K responses per prompt, loaded into the feedback store for judging."""
