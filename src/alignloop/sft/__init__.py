"""Stage 1b: supervised fine-tuning on prompt/response pairs (loss on responses only)."""
