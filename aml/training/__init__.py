"""Training: modes and tuples, mining, optimizer set-up, the loop, teacher descriptors."""
