"""cryonb.io: read and write every file a cryo-EM user brings (MRC, RELION STAR, cryoSPARC .cs, cryoDRGN .pkl,
the YAML configs of the methods).

A facade over one module per format (see `nbs/03_io.ipynb`); written by hand, it only re-exports.
"""
from .errors import *
from .mrc import *
from .star import *
from .cryosparc import *
from .pkl import *
from .particles import *
from .config import *
