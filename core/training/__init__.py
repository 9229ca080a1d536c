"""Training: the loop, the defenses' objectives and the overfitting guard."""
