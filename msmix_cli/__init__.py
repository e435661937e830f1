"""msmix: MS-Mix and its baselines for multimodal sentiment analysis, from the command line."""

__version__ = "0.1.0"
