"""Credential providers for cloud registries: Amazon ECR and Google Artifact Registry/GCR.

Azure ACR needs no provider: its identity (refresh) tokens are exchanged at the
registry's ``/oauth2/token`` realm by :class:`imagesync.auth.BearerTokens`, like any
Docker ``identitytoken``.
"""
