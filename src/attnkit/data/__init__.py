"""Real text for training and evaluating models: the Shakespeare corpus and its tokenisers."""
