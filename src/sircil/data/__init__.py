"""Datasets, class orders and scenarios, exemplar memory, batched augmentation."""
