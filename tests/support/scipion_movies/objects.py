"""Movies and micrographs with pwem's attribute names."""

import os

import pyworkflow.object as pwobj


class EMObject(pwobj.Object):
    pass


class Movie(EMObject):
    def __init__(self, filename=None, **kwargs):
        EMObject.__init__(self, **kwargs)
        self._filename = pwobj.String(filename)
        self._micName = pwobj.String(os.path.basename(filename) if filename else None)

    def getFileName(self):
        return self._filename.get()

    def getMicName(self):
        return self._micName.get()


class Micrograph(Movie):
    pass


class EMSet(pwobj.Set, EMObject):
    def __init__(self, **kwargs):
        pwobj.Set.__init__(self, **kwargs)
        EMObject.__init__(self, **kwargs)

    def _loadClassesDict(self):
        # As pwem's EMSet: item classes are looked up in the domain, not in pyworkflow.object's globals.
        import pyworkflow as pw

        return pw.Config.getDomain().getMapperDict()


class SetOfMovies(EMSet):
    ITEM_TYPE = Movie


class SetOfMicrographs(EMSet):
    ITEM_TYPE = Micrograph
