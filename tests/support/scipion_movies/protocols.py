"""Import and "align" protocols for the data tests."""

import os
import time

import pyworkflow.protocol as pwprot
from pyworkflow.protocol import Protocol

from .objects import Micrograph, Movie, SetOfMicrographs, SetOfMovies


class ProtImportMoviesTest(Protocol):
    """Lists the movies in a folder (as pwem's ProtImportMovies does, without reading their headers)."""

    _label = "import movies (test)"

    def _defineParams(self, form):
        form.addSection("Input")
        form.addParam("filesPath", pwprot.StringParam, label="folder")

    def _insertAllSteps(self):
        self._insertFunctionStep(self.importStep)

    def importStep(self):
        movies = SetOfMovies(filename=self._getPath("movies.sqlite"))
        for name in sorted(os.listdir(self.filesPath.get())):
            movies.append(Movie(os.path.join(self.filesPath.get(), name)))
        movies.write()
        self._defineOutputs(outputMovies=movies)


class ProtAlignMoviesTest(Protocol):
    """One micrograph per movie: the first 4 KiB of the movie, written to the protocol's extra folder. A
    `holdFile` keeps it running (as a streaming aligner waits for more movies) until the file is gone."""

    _label = "align movies (test)"

    def _defineParams(self, form):
        form.addSection("Input")
        form.addParam("inputMovies", pwprot.PointerParam, pointerClass="SetOfMovies", label="movies")
        form.addParam("holdFile", pwprot.StringParam, default="", label="hold while this file exists")
        form.addParam("produce", pwprot.BooleanParam, default=True, label="write micrographs")

    def _insertAllSteps(self):
        self._insertFunctionStep(self.alignStep)

    def alignStep(self):
        if self.produce.get():
            mics = SetOfMicrographs(filename=self._getPath("micrographs.sqlite"))
            for movie in self.inputMovies.get():
                out = self._getExtraPath(movie.getMicName() + ".mrc")
                with open(movie.getFileName(), "rb") as src, open(out, "wb") as dst:
                    dst.write(src.read(4096))
                mic = Micrograph(out)
                mic.setObjId(movie.getObjId())
                mic._micName.set(movie.getMicName())
                mics.append(mic)
            mics.write()
            self._defineOutputs(outputMicrographs=mics)
        hold = self.holdFile.get()
        while hold and os.path.exists(hold):
            time.sleep(0.2)
