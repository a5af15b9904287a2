"""Our own GPU kernels (Triton), each with a pure-torch path it is tested against.

- `group_norm.py`: GroupNorm and GroupNorm + SiLU over channels-last tensors, forward and backward
  (the normalisation of every ResNet block in the Stable Diffusion UNet and VAE encoder).

Triton ships with PyTorch's CUDA wheels; where it is missing, or off CUDA, the modules here fall
back to PyTorch's own operators (same values). On a CPU, `TRITON_INTERPRET=1` runs the Triton
kernels in Triton's interpreter: the test suite does that to check the kernels themselves.
"""
