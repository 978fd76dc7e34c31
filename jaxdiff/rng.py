"""nanoBragg's random numbers: the Numerical Recipes ``ran1`` shuffle generator.

Mosaic domains, random missets and Poisson noise must draw exactly the numbers the C program
draws for the same seed, so this is a literal port of its integer arithmetic (NumPy/Python only).
"""

from __future__ import annotations

import numpy as np

_IA, _IM, _IQ, _IR, _NTAB = 16807, 2147483647, 127773, 2836, 32
_NDIV = 1 + (_IM - 1) // _NTAB
_AM = 1.0 / _IM
_RNMX = np.float32(1.0 - 1.2e-7)


def _step(idum: int) -> int:
    k = int(idum / _IQ)  # C integer division truncates toward zero
    idum = _IA * (idum - k * _IQ) - _IR * k
    return idum + _IM if idum < 0 else idum


class Ran1:
    """Stateful uniform deviates in (0, 1), as float32 values, identical to nanoBragg's ``ran1``.

    ``seed`` is the value of the C variable (negative to initialise, as ``-seed N`` gives ``-N``).
    The shuffle table is shared by all seeds, as the C program's static state is.
    """

    def __init__(self, seed: int):
        self.idum = int(seed)
        self.iy = 0
        self.iv = [0] * _NTAB

    def __call__(self) -> np.float32:
        if self.idum <= 0 or not self.iy:
            self.idum = 1 if -self.idum < 1 else -self.idum
            for j in range(_NTAB + 7, -1, -1):
                self.idum = _step(self.idum)
                if j < _NTAB:
                    self.iv[j] = self.idum
            self.iy = self.iv[0]
        self.idum = _step(self.idum)
        j = self.iy // _NDIV
        self.iy = self.iv[j]
        self.iv[j] = self.idum
        temp = np.float32(_AM * self.iy)
        return _RNMX if temp > _RNMX else temp
