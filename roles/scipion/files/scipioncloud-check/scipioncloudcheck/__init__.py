"""Scipion plugin with one protocol, ProtClusterCheck, used by `scipioncloud cluster check`."""

import pyworkflow.plugin


class Plugin(pyworkflow.plugin.Plugin):
    pass
