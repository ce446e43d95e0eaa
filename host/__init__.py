"""edgetune's PC side: the agent client, the CLI, quantization, analysis and reports."""


