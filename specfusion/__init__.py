"""specfusion: audio classification by cross-modal transfer learning and decision-level fusion.

Implements Amiriparian et al., "Towards cross-modal pre-training and learning tempo-spatial
characteristics for audio recognition with convolutional and recurrent neural networks",
EURASIP Journal on Audio, Speech, and Music Processing 2020:19.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``specfusion.load_system`` imported on first use (no work at import time)."""
    if name == "load_system":
        from specfusion.pipeline.systems import load_system

        return load_system
    raise AttributeError(f"module 'specfusion' has no attribute {name!r}")
