"""What every experiment's training shares: precision, seeding, checkpoints, progress."""
