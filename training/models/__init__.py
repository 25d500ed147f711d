"""Model building for training: tiny models of real architectures, built offline."""
