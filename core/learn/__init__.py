"""Learning from feedback: losses (pure), training pairs from the log, the training loop with
callbacks, tower surgery, fine-tune and self-supervised workflows, and background jobs."""
