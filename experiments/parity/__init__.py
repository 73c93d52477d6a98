"""Scripts that record the authors' PyTorch code's outputs as the parity tests' fixtures."""
