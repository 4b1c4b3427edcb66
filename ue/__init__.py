"""ueray's core library: heads, metrics, losses, config, features and artifacts.

Importing ``ue`` is cheap and never imports Ray; the submodules are imported on use.
"""

__version__ = "0.1.0"
