"""nanoBragg's random deviates (Numerical Recipes), bit for bit, in plain Python.

The C program draws mosaic domains, a random misset and the Poisson noise image with ``ran1``,
``gaussdev``, ``gammln`` and ``poidev`` from Numerical Recipes, with hidden ``static`` state and
a mix of ``float`` and ``double`` arithmetic. Reproducing its draws bit for bit needs the same
state and the same rounding, so this module works with plain Python numbers: a Python ``float``
is a C ``double``, and :func:`_f32` rounds a double to the nearest ``float``. For ``+ - * /``
and ``sqrt`` of two floats, computing in double and then rounding once to float gives the
correctly rounded float result, so ``_f32(a * b)`` is exactly C's ``a * b`` on two ``float``
operands. ``math.log``, ``math.exp`` and ``math.tan`` are the C library's, as in the C program.

This is the readable reference. The noise image, which needs about two draws per pixel, runs
the same algorithm compiled (:func:`jaxdiff.io.noise.noise_image`), checked against this one.
"""

from __future__ import annotations

import math
import struct

_F32 = struct.Struct("<f")

# Park & Miller minimal standard generator with Bays-Durham shuffle (ran1 constants).
_IA = 16807
_IM = 2147483647
_AM = 1.0 / _IM
_IQ = 127773
_IR = 2836
_NTAB = 32
_NDIV = 1 + (_IM - 1) // _NTAB
_RNMX = 1.0 - 1.2e-7

_GAMMLN_COF = (
    76.18009172947146,
    -86.50532032941677,
    24.01409824083091,
    -1.231739572450155,
    0.1208650973866179e-2,
    -0.5395239384953e-5,
)


def _f32(x: float) -> float:
    """Round a double to the nearest float32 (C's implicit ``double`` -> ``float``)."""
    try:
        return _F32.unpack(_F32.pack(x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def _exp(x: float) -> float:
    """C's ``exp``: +inf where the result overflows a double (Python raises instead)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def check_seed(seed: int) -> int:
    """Return ``seed`` as an int if a C ``int`` holds it (nanoBragg parses seeds with ``atoi``).

    Within this range the generator's state stays in ``[0, 2**31 - 1]``; beyond it the C
    routine would index its shuffle table out of bounds.
    """
    value = int(seed)
    if not -(2**31) < value < 2**31:
        raise ValueError(f"random seed {value} does not fit a 32-bit C int")
    return value


class Ran1:
    """Uniform deviates in (0, 1) from nanoBragg's ``ran1`` (Numerical Recipes).

    ``idum`` plays the role of the caller's ``long`` seed variable, and ``iy``/``iv`` the
    routine's ``static`` shuffle table. A zero or negative ``idum`` (re)initialises the table,
    as in C: nanoBragg's ``-seed N`` sets ``idum = -N``. In C the table is shared by every seed
    variable (noise, mosaic, misset), so a positive seed continues the table another seed left;
    to model that, keep one instance and assign a new ``idum`` to it.
    """

    __slots__ = ("idum", "iy", "iv")

    def __init__(self, idum: int) -> None:
        self.idum = check_seed(idum)
        self.iy = 0
        self.iv = [0] * _NTAB

    def _step(self, idum: int) -> int:
        # Schrage's method; every intermediate fits a C long, and idum >= 0 here, so Python's
        # floor division equals C's truncating division.
        k = idum // _IQ
        idum = _IA * (idum - k * _IQ) - _IR * k
        if idum < 0:
            idum += _IM
        return idum

    def __call__(self) -> float:
        """Return the next deviate: a float32 value (as a Python float) in (0, 1)."""
        idum = self.idum
        if idum <= 0 or not self.iy:
            idum = 1 if -idum < 1 else -idum
            iv = self.iv
            for j in range(_NTAB + 7, -1, -1):
                idum = self._step(idum)
                if j < _NTAB:
                    iv[j] = idum
            self.iy = iv[0]
        idum = self._step(idum)
        self.idum = idum
        j = self.iy // _NDIV
        self.iy = self.iv[j]
        self.iv[j] = idum
        temp = _f32(_AM * self.iy)
        if temp > _RNMX:
            return _f32(_RNMX)
        return temp


def gammln(xx: float) -> float:
    """ln Γ(xx) by Lanczos' series, as nanoBragg's ``gammln`` (float in and out, double inside)."""
    x = y = _f32(xx)
    tmp = x + 5.5
    tmp -= (x + 0.5) * math.log(tmp)
    ser = 1.000000000190015
    for cof in _GAMMLN_COF:
        y += 1.0
        ser += cof / y
    return _f32(-tmp + math.log(2.5066282746310005 * ser / x))


class Deviates:
    """nanoBragg's random deviates with all of their hidden state.

    Holds the ``ran1`` generator, ``gaussdev``'s spare deviate and ``poidev``'s cache of the
    last mean (``oldm``) and the values derived from it, so a sequence of calls returns exactly
    what the C program's sequence of calls returns.
    """

    def __init__(self, idum: int) -> None:
        self.ran1 = Ran1(idum)
        self._gauss_spare: float | None = None
        self._oldm = -1.0
        self._sq = 0.0
        self._alxm = 0.0
        self._g = 0.0

    def gaussdev(self) -> float:
        """Gaussian deviate with unit rms (Box-Muller, polar form), float32 valued."""
        if self._gauss_spare is not None:
            spare, self._gauss_spare = self._gauss_spare, None
            return spare
        ran1 = self.ran1
        while True:
            v1 = _f32(2.0 * ran1() - 1.0)
            v2 = _f32(2.0 * ran1() - 1.0)
            rsq = _f32(_f32(v1 * v1) + _f32(v2 * v2))
            if rsq < 1.0 and rsq != 0.0:
                break
        fac = _f32(math.sqrt(-2.0 * math.log(rsq) / rsq))
        self._gauss_spare = _f32(v1 * fac)
        return _f32(v2 * fac)

    def poidev(self, xm: float) -> float:
        """Poisson deviate with mean ``xm`` (photons), float32 valued, as nanoBragg's ``poidev``."""
        xm = _f32(xm)
        if xm > 1.0e6:
            return _f32(xm + math.sqrt(xm) * self.gaussdev())
        ran1 = self.ran1
        if xm < 12.0:
            if xm != self._oldm:
                self._oldm = xm
                self._g = _f32(_exp(-xm))
            g = self._g
            em = -1.0
            t = 1.0
            while True:
                em += 1.0
                t = _f32(t * ran1())
                if not t > g:
                    return em
        if xm != self._oldm:
            self._oldm = xm
            self._sq = _f32(math.sqrt(2.0 * xm))
            self._alxm = _f32(math.log(xm))
            self._g = _f32(_f32(xm * self._alxm) - gammln(xm + 1.0))
        sq, alxm, g = self._sq, self._alxm, self._g
        while True:
            while True:
                y = _f32(math.tan(math.pi * ran1()))
                em = _f32(_f32(sq * y) + xm)
                if not em < 0.0:
                    break
            if math.isfinite(em):
                em = float(math.floor(em))
            expo = _f32(_f32(_f32(em * alxm) - gammln(em + 1.0)) - g)
            t = _f32(0.9 * (1.0 + _f32(y * y)) * _exp(expo))
            if not ran1() > t:
                return em
