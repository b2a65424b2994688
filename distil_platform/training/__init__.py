"""The student stage: LoRA fine-tuning with TRL (trainer) and its Kubernetes job entry point (job)."""
