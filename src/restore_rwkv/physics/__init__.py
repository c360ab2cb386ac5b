"""Degradation simulators HQ -> LQ for the paper's tasks, each seedable and batched.

- ``KSpaceTruncation``: MRI super-resolution by keeping the centre of k-space.
- ``LowDoseCT``: CT low dose by Poisson noise on parallel-beam projections and FBP.
- ``LowCountPET``: PET low count by Poisson counts, binomial thinning and MLEM/OSEM.
"""

from restore_rwkv.physics.ct import LowDoseCT, hu_to_mu, mu_to_hu
from restore_rwkv.physics.mri import KSpaceTruncation, kspace_mask
from restore_rwkv.physics.pet import LowCountPET, gaussian_filter
from restore_rwkv.physics.projector import ParallelBeamProjector

__all__ = ["KSpaceTruncation", "LowCountPET", "LowDoseCT", "ParallelBeamProjector", "gaussian_filter",
           "hu_to_mu", "kspace_mask", "mu_to_hu"]
