"""edgetune's PC side: the agent client, the CLI, quantization, analysis and reports."""

__version__ = "0.1.0"
