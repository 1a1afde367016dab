"""fly64_recon: pty-chi LSQML baseline reconstructions of the fly64 dose/overlap study."""

__version__ = "0.1.0"
