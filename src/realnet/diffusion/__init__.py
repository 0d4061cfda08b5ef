"""SDAS (paper Sec. 3.1, Appendix B): Gaussian diffusion math, the ADM-like network, strength-controllable
samplers, training and SIA bank generation. Submodules are imported where needed (diffusers is heavy)."""
