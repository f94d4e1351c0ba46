"""Structured pruning: remove whole heads, FFN channels, embedding channels and layers, giving a real
smaller (uniform) model. Importance scores (`activation`, `magnitude`, `taylor`, `depth`), the slicer
(`slicing`), target shapes (`shapes`), the driver (`driver.prune_to_shape`, `driver.rank_shapes`),
SliceGPT (`slicegpt`) and the prune-then-distill recipe (`shrink`)."""
