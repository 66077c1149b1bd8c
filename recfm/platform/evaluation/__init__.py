"""Full-ranking evaluation and the baselines every model is reported beside."""
