"""Deployment security: the federation's certificates and keys, and signed checkpoints.

Built on the ``cryptography`` package only; nothing here imports Flower. The file layout written by
:func:`clin_jepa.security.certs.generate_pki` is exactly what ``flower-superlink``,
``flower-supernode`` and ``flwr supernode register`` read (Flower 1.42); see ``deploy/README.md``.
"""

from clin_jepa.security.certs import PkiLayout, generate_pki
from clin_jepa.security.signing import sign_file, signature_path, verify_file

__all__ = ["PkiLayout", "generate_pki", "sign_file", "signature_path", "verify_file"]
