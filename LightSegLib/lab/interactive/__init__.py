"""Workshop side of click refinement: data, click simulation, training."""
