"""Publish to Microsoft Intune through Microsoft Graph: per team one macOS profile and the Windows
platform script(s), assigned to the team's Entra group, proven before any write to give every
enrolled device exactly its compiled settings.

* :mod:`.graph`: the Graph client (azure-identity token, paging, ``$batch``, write pacing) on the
  shared HTTP layer (:mod:`mdmgen.http`).
* :mod:`.fleet`: what the output folder says per team; :mod:`.directory`: each team's group and
  what Entra and Intune know of each device (reads only).
* :mod:`.objects`: the objects' names, bodies and what counts as a change.
* :mod:`.proof`: the team profile with Intune's token variables, and the equivalence proof.
* :mod:`.scripts`: the Windows script generator (serial table -> managed-settings.json).
* :mod:`.publisher`: plan and apply.
"""

from .graph import DEFAULT_GRAPH_URL, ENV_VARIABLES, GraphClient, GraphError, check_url, credential_factory
from .objects import NAME_PREFIX, macos_name
from .publisher import IntunePublisher, make_publisher

__all__ = ["DEFAULT_GRAPH_URL", "ENV_VARIABLES", "NAME_PREFIX", "GraphClient", "GraphError", "IntunePublisher",
           "check_url", "credential_factory", "macos_name", "make_publisher"]
