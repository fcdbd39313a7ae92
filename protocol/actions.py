"""The protocol's actions: what a coordinator may ask a silo, and which role answers each.

Both sides import this package: a silo depends on the wire format, never on the coordinator.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    DESCRIBE = "describe"  # any silo: role, model, public digest; a provider its tasks and classes
    PREPARE = "prepare"  # querier: embed its texts, keys; provider: a head per task (stored or new)
    RESTORE = "restore"  # querier: reuse the stored map of a pair if its provenance is unchanged
    UPLOAD = "upload"  # querier: public context + Enc(X̃) of the public texts
    CROSS_PRODUCTS = "cross_products"  # provider: Enc(X̃)ᵀY on the fit and held-out texts
    SELECT = "select"  # querier: decrypt, choose ridge alpha, send Enc(D·X̃) for the cosine
    COSINE_PRODUCTS = "cosine_products"  # provider: Enc(D·X̃)ᵀ Ŷ (row-normalised Y)
    FINISH = "finish"  # querier: mean cosine, final map on all public texts
    PLAN = "plan"  # querier: the batches of a serving still to answer (resumes an interrupted one)
    ENCRYPT = "encrypt"  # querier: map + encrypt a batch of private queries
    EVALUATE = "evaluate"  # provider: head on ciphertexts → encrypted logits
    DECRYPT = "decrypt"  # querier: decrypt logits of a batch
    REPORT = "report"  # querier: write the predictions of a (provider, task); scores if labelled
    ENSEMBLE = "ensemble"  # querier: mean probabilities of the providers of one task


QUERIER_ACTIONS = frozenset(
    {Action.DESCRIBE, Action.PREPARE, Action.RESTORE, Action.UPLOAD, Action.SELECT,
     Action.FINISH, Action.PLAN, Action.ENCRYPT, Action.DECRYPT, Action.REPORT, Action.ENSEMBLE}
)
PROVIDER_ACTIONS = frozenset(
    {Action.DESCRIBE, Action.PREPARE, Action.CROSS_PRODUCTS, Action.COSINE_PRODUCTS,
     Action.EVALUATE}
)
ROLES = ("querier", "provider")
# A reply any provider may use: Enc(X̃) depends only on the provider's dimension (``d_out``), so a
# querier aligning with several providers of one dimension encrypts its public texts once.
SHAREABLE_ACTIONS = frozenset({Action.UPLOAD})
BUNDLE = "bundle"  # the message type (query.bundle) of several requests for one silo


def message_type(action: Action | str) -> str:
    return f"query.{action if isinstance(action, str) else action.value}"


def actions_of(message_type_: str, content) -> list[Action]:
    """The actions a message asks for: its type's, or a bundle's listed ones (for a mod that acts
    per action, e.g. fault injection)."""
    name = message_type_.removeprefix("query.")
    if name == BUNDLE:
        return [Action(a) for a in content["bundle"]["actions"]] if "bundle" in content else []
    return [Action(name)]
