"""A tiny pyworkflow domain for the data tests: movies, micrographs, an import protocol and an "align"
protocol that turns each movie into a micrograph (the real aligners need a GPU). The attribute names are
pwem's (`_filename`, `_micName`; outputs `outputMovies`/`outputMicrographs`), so the agent reads these
projects exactly as it reads real Scipion ones. pyworkflow finds it as a plugin (entry point group
"pyworkflow.plugin", see tests/support/scipion_project.py) and uses it as the domain (SCIPION_DOMAIN)."""

from pyworkflow.plugin import Domain as PwDomain
from pyworkflow.plugin import Plugin as PwPlugin
from pyworkflow.protocol import Protocol
from pyworkflow.utils import getSubclasses
from pyworkflow.viewer import Viewer
from pyworkflow.wizard import Wizard

from . import objects
from .objects import EMObject


class MoviesDomain(PwDomain):
    _name = __name__
    _objectClass = EMObject
    _protocolClass = Protocol
    _viewerClass = Viewer
    _wizardClass = Wizard
    _baseClasses = getSubclasses(EMObject, vars(objects))


Domain = MoviesDomain


class Plugin(PwPlugin):
    pass
