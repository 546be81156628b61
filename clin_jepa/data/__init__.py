"""MEDS input, validation, harmonization, federated statistics, hourly tokenization, tasks and batches."""
