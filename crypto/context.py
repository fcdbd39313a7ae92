"""TenSEAL contexts: created with the secret key at the querier; only public copies ever leave it."""

from __future__ import annotations

import tenseal as ts

from crypto.params import CKKSParams


class ContextError(ValueError):
    """Bytes that are not a TenSEAL context, or a context of the wrong kind for its receiver."""


def make_context(params: CKKSParams, *, galois_keys: bool = False) -> ts.Context:
    """A fresh CKKS context holding a new secret key (the querier's).

    Galois keys are only needed for rotations (the one-query ``dot`` path); without them the public
    context is ~20x smaller, so they are generated on request only.
    """
    params.check()
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    context.global_scale = 2.0**params.global_scale_bits
    if galois_keys:
        context.generate_galois_keys()
    return context


def context_slots(context: ts.Context) -> int:
    """Slots per ciphertext (N/2) of a context, whoever made it."""
    return context.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2


def public_context_bytes(context: ts.Context) -> bytes:
    """Serialise ``context`` without its secret key: what the querier may send to a provider."""
    public = context.copy()
    public.make_context_public()
    return public.serialize(save_public_key=True, save_secret_key=False)


def secret_context_bytes(context: ts.Context) -> bytes:
    """Serialise ``context`` with its secret key, for the querier's own node state only."""
    if not context.is_private():
        raise ContextError("this context holds no secret key")
    return context.serialize(save_secret_key=True)


def context_from_bytes(data: bytes, *, expect_public: bool) -> ts.Context:
    """Load a context and check its kind.

    A provider passes ``expect_public=True`` and refuses a context that carries a secret key (a
    querier bug that would hand it the power to decrypt); the querier loads its own private one.
    """
    if not isinstance(data, bytes | bytearray) or not data:
        raise ContextError("expected non-empty context bytes")
    try:
        context = ts.context_from(bytes(data))
    except Exception as err:  # TenSEAL raises bare ValueError/RuntimeError on bad protobufs
        raise ContextError(f"not a TenSEAL context ({err})") from None
    if expect_public and context.is_private():
        raise ContextError("refusing a context that carries a secret key")
    if not expect_public and not context.is_private():
        raise ContextError("expected a private context with a secret key")
    return context
