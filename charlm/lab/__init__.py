"""The lab: instruments that measure the long-term dependency problem on charlm's models.

- gradients: how far back the gradient of a loss reaches (||dL/dh_t| against lag)
- context: how much of the past a trained model uses (loss given only the last n tokens)
- truncation: echo corpora and the BPTT(k) x distance truncation table
- sweep: one training run across a grid of options, one table
- cells: what a recurrent run's cells hold (gate saturation, long-range cells, the page)
- ngram: the Kneser-Ney n-gram baseline, and where the recurrent model beats it (via cells)

The lab uses the product (models, training, checkpoints); the product never imports the lab
(tests/test_architecture.py enforces it). A new instrument is a new module here plus one
command module in charlm/cli/lab/.
"""
