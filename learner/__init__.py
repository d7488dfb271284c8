"""Learner: GRPO updates with DeepSpeed."""
