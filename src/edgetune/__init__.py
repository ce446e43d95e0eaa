"""edgetune: quantize ONNX models on the PC, measure them on edge boards over mutual TLS.

One import package, four parts (each a folder at the top of the repository):
``edgetune.certs`` (the PKI, both sides), ``edgetune.protos`` (the wire code, both sides),
``edgetune.device`` (the board agent) and ``edgetune.host`` (the PC side). Importing this
package imports none of them.
"""

__version__ = "0.1.0"
