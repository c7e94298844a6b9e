"""Ed25519 signature checks without loading ``cryptography`` (issue 16, the agent's RSS).

A device checks signatures (root -> key set -> manifest) with public keys only. Loading
``cryptography`` for that maps its Rust extension: +7.6 MB of RSS for as long as the agent
runs (measured), 10 % of a device agent. The same check is one call into the OpenSSL
``libcrypto`` the process has already loaded for :mod:`hashlib`: ``EVP_DigestVerify`` on
an ``EVP_PKEY_ED25519`` key (OpenSSL >= 1.1.1; ``cryptography`` runs the same OpenSSL
code). Where that library cannot be found or lacks Ed25519, ``cryptography`` checks it.

:class:`PublicKey` is a raw 32-byte Ed25519 public key; ``verify`` says whether a 64-byte
signature over ``data`` is valid (it never raises for a bad signature). Signing and
key files stay with ``cryptography`` (the host side).
"""

from __future__ import annotations

import base64
import ctypes
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["PublicKey", "backend", "raw_from_pem"]

KEY_SIZE = 32
SIGNATURE_SIZE = 64
_NID_ED25519 = 1087  # OpenSSL's EVP_PKEY_ED25519
# DER of an Ed25519 SubjectPublicKeyInfo up to the 32 key bytes (RFC 8410)
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_lock = threading.Lock()
_LIBCRYPTO: Any = False  # not looked for yet; None: not usable


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (its raw 32 bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_SIZE:
            raise ValueError(f"an Ed25519 public key is {KEY_SIZE} bytes")

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's valid Ed25519 signature over ``data``."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        lib = _libcrypto()
        if lib is None:
            return _verify_with_cryptography(self.raw, signature, data)
        return _verify_with_libcrypto(lib, self.raw, signature, data)


def raw_from_pem(data: bytes) -> bytes | None:
    """The 32 key bytes of a PEM Ed25519 public key; None for anything else."""
    lines = data.strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != b"-----BEGIN PUBLIC KEY-----" \
            or lines[-1].strip() != b"-----END PUBLIC KEY-----":
        return None
    try:
        der = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
    except ValueError:
        return None
    if len(der) != len(_SPKI_PREFIX) + KEY_SIZE or not der.startswith(_SPKI_PREFIX):
        return None
    return der[len(_SPKI_PREFIX):]


def backend() -> str:
    """Which library checks signatures here: ``libcrypto`` or ``cryptography``."""
    return "cryptography" if _libcrypto() is None else "libcrypto"


def _verify_with_cryptography(raw: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _verify_with_libcrypto(lib: Any, raw: bytes, signature: bytes, data: bytes) -> bool:
    pkey = lib.EVP_PKEY_new_raw_public_key(_NID_ED25519, None, raw, len(raw))
    if not pkey:
        return False
    ctx = lib.EVP_MD_CTX_new()
    try:
        if not ctx or lib.EVP_DigestVerifyInit(ctx, None, None, None, pkey) != 1:
            return False
        # 1: valid; 0: invalid; < 0: an error (also invalid)
        return bool(lib.EVP_DigestVerify(ctx, signature, len(signature), data, len(data)) == 1)
    finally:
        if ctx:
            lib.EVP_MD_CTX_free(ctx)
        lib.EVP_PKEY_free(pkey)
        lib.ERR_clear_error()  # a failed check leaves its reason on this thread's queue


def _libcrypto() -> Any | None:
    """The process's libcrypto with the five Ed25519 calls typed; None when not usable."""
    global _LIBCRYPTO
    with _lock:
        if _LIBCRYPTO is False:
            _LIBCRYPTO = _load_libcrypto()
        return _LIBCRYPTO


def _load_libcrypto() -> Any | None:
    name = _mapped_libcrypto()
    if name is None:  # ctypes.util imports subprocess: only when the mapping has none
        from ctypes.util import find_library

        name = find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        p, size = ctypes.c_void_p, ctypes.c_size_t
        lib.EVP_PKEY_new_raw_public_key.argtypes = [ctypes.c_int, p, ctypes.c_char_p, size]
        lib.EVP_PKEY_new_raw_public_key.restype = p
        lib.EVP_PKEY_free.argtypes = [p]
        lib.EVP_PKEY_free.restype = None
        lib.EVP_MD_CTX_new.argtypes = []
        lib.EVP_MD_CTX_new.restype = p
        lib.EVP_MD_CTX_free.argtypes = [p]
        lib.EVP_MD_CTX_free.restype = None
        lib.EVP_DigestVerifyInit.argtypes = [p, p, p, p, p]
        lib.EVP_DigestVerifyInit.restype = ctypes.c_int
        lib.EVP_DigestVerify.argtypes = [p, ctypes.c_char_p, size, ctypes.c_char_p, size]
        lib.EVP_DigestVerify.restype = ctypes.c_int
        lib.ERR_clear_error.argtypes = []
        lib.ERR_clear_error.restype = None
    except (OSError, AttributeError):  # no such library, or older than OpenSSL 1.1.1
        return None
    return lib if _self_test(lib) else None


def _mapped_libcrypto() -> str | None:
    """The path of the libcrypto this process has loaded for hashlib (Linux), so no second
    copy is mapped (and no ldconfig is run to find one)."""
    try:
        import _hashlib  # noqa: F401  (links libcrypto)
    except ImportError:
        return None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if path.startswith("/") and path.rsplit("/", 1)[-1].startswith("libcrypto.so"):
                    return path
    except OSError:
        pass
    return None


# RFC 8032, section 7.1, TEST 2: a known key, message and signature
_TEST_KEY = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
_TEST_MESSAGE = bytes.fromhex("72")
_TEST_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")


def _self_test(lib: Any) -> bool:
    """The library accepts RFC 8032's test signature and refuses it altered."""
    bad = _TEST_SIGNATURE[:-1] + bytes([_TEST_SIGNATURE[-1] ^ 1])
    return _verify_with_libcrypto(lib, _TEST_KEY, _TEST_SIGNATURE, _TEST_MESSAGE) and \
        not _verify_with_libcrypto(lib, _TEST_KEY, bad, _TEST_MESSAGE)
