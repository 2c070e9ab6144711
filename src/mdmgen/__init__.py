"""mdmgen: compile an HR/team inventory and a policy into per-device Claude Code managed settings."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mdmgen")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
