"""The campaign as each of its providers sends it: its own provider with the campaign's settings, its fallback
(--fallback) with the fallback's own (flows/failover.py sends through it). Here rather than in the failover
flow so that the preflight, which must not import Prefect, checks the fallback as it checks the provider."""

from __future__ import annotations

from smscast.campaign import CampaignSpec
from smscast.providers.registry import provider_class

__all__ = ["PROVIDER_SETTINGS", "fallback_spec", "provider_spec"]

# The settings the campaign chose for its own provider; the fallback uses its own capabilities instead.
PROVIDER_SETTINGS = ("base_url", "batch_size", "rate", "concurrency", "request_timeout")


def fallback_spec(spec: CampaignSpec) -> CampaignSpec:
    """The campaign as its fallback sends it: the fallback's endpoint, key, rate, concurrency, timeout and batch
    size (its own settings and capabilities), its sender (--fallback-sender, else --sender where it needs
    one), and the text rather than the primary's provider template."""
    if spec.fallback is None:
        raise ValueError(f"campaign {spec.campaign_id} has no fallback")
    caps = provider_class(spec.fallback).caps
    sender = spec.fallback_sender or (spec.sender if caps.sender_required else None)
    changes = {"provider": spec.fallback, "sender": sender, "template": None}
    return spec.model_copy(update={**changes, **dict.fromkeys(PROVIDER_SETTINGS)})


def provider_spec(spec: CampaignSpec, name: str) -> CampaignSpec:
    """The spec an attempt through provider `name` runs with: the campaign's own for its provider, the
    fallback's for its fallback, and for another (one an earlier `smscast retry --provider` sent rows
    through) the campaign with that provider and its own settings."""
    if name == spec.provider:
        return spec
    if name == spec.fallback:
        return fallback_spec(spec)
    return spec.model_copy(update={"provider": name, **dict.fromkeys(PROVIDER_SETTINGS)})
