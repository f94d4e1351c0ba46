"""Pretraining (AdamW, cosine/WSD, µP, two-stage data mixture), distillation and DDP."""
