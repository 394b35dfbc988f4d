"""The learner's math on one rank: a scored Arrow batch → tensors and advantages (batch), the loss with global
normalisers (objective), one step over mini- and micro-batches (train_step). No Ray; the actor is
actors/learner.py."""
