"""The teacher stage: synthetic data from a teacher model (synthesis), its quality filters, output schemas, recorded teachers and self-training."""
