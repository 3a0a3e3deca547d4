"""Training recipes, each a readable loop driven by a typed config: `sft_ar`, `sft_av` (and `rl`)."""
