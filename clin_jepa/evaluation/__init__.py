"""Evaluation of Clin-JEPA checkpoints: rollout drift, latent geometry, linear probes, baselines, report.

Pure metric functions (``drift``, ``geometry``, ``probes``, ``baselines``) work on numpy arrays; ``runner``
loads checkpoints and sites and feeds them; ``report`` writes ``metrics.json``, ``report.md`` and plots.
"""
