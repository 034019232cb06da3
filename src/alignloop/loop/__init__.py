"""Stage 5: rounds of feedback and RL one after another, the demo, and the report."""
