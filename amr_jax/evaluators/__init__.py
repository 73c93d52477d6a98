"""Evaluators: what the training loop measures at its evaluation steps, one module per family.

``config.evals`` names the evaluators a run uses and how often each runs::

  config.evals.probe = dict(every=0)  # 0: every config.eval_every steps
  config.evals.disentanglement = dict(every=10_000, num_votes=800)

An entry's key is the name of a module in this package (``probe``, ``frozen_probe``,
``pictures``, ``disentanglement``, ``spiral``, ``reconstruction``), or any importable module
given as ``module='my_package.my_metric'``. The module defines a class ``Evaluator``
(see :class:`amr_jax.evaluators.common.Evaluator`); the entry's other fields are its options.
Every evaluator also runs at the last training step, and ``python -m amr_jax.evaluate`` runs
any of them on a run's newest checkpoint. :mod:`amr_jax.evaluators.common` holds the
interface, the registry and helpers shared by evaluators.
"""
