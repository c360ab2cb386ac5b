"""Building blocks of Restore-RWKV."""

from restore_rwkv.layers.block import Downsample, RRWKVBlock, Upsample
from restore_rwkv.layers.mixing import ChannelMix, SpatialMix
from restore_rwkv.layers.omni_shift import OmniShift

__all__ = ["ChannelMix", "Downsample", "OmniShift", "RRWKVBlock", "SpatialMix", "Upsample"]
