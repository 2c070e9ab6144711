"""Publish to Microsoft Intune through Microsoft Graph."""
