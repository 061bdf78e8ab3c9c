"""Training protocols: pretrain, finetune, linear probe."""
