"""Degradation simulators HQ -> LQ for the paper's tasks, each seedable and batched.

All are :class:`Degradation` callables ``lq = op(hq, seed)``: ``seed`` an int or None,
``hq`` a torch tensor or numpy array, ``lq`` of the same kind, shape and floating dtype.

- ``KSpaceTruncation``: MRI super-resolution by keeping the centre of k-space.
- ``LowDoseCT``: CT low dose by projection-domain noise insertion (Poisson counts, FBP of the noise).
- ``LowCountPET``: PET low count by Poisson counts, binomial thinning and MLEM/OSEM
  (``simulate_pair`` gives HQ and LQ reconstructions of a phantom).
- ``default_degradation(task, **options)``: the paper-like one of each task.
"""

from restore_rwkv.physics._common import Degradation
from restore_rwkv.physics.ct import LowDoseCT, hu_to_mu, mu_to_hu
from restore_rwkv.physics.defaults import DEGRADATION_OPTIONS, default_degradation
from restore_rwkv.physics.mri import KSpaceTruncation, kspace_mask, zero_fill
from restore_rwkv.physics.pet import LowCountPET, gaussian_filter
from restore_rwkv.physics.projector import FootprintProjector, ParallelBeamProjector

__all__ = ["DEGRADATION_OPTIONS", "Degradation", "FootprintProjector", "KSpaceTruncation", "LowCountPET", "LowDoseCT",
           "ParallelBeamProjector", "default_degradation", "gaussian_filter", "hu_to_mu", "kspace_mask",
           "mu_to_hu", "zero_fill"]
