/*
 * Compiled twin of jaxdiff/deviates.py and jaxdiff.io.noise.noise_image_reference: nanoBragg's
 * Poisson noise image (Numerical Recipes ran1, gaussdev, gammln, poidev), bit for bit.
 *
 * The arithmetic below keeps the C program's types on purpose: each operation happens in
 * float or in double exactly where the C program's does, and the library's log, exp, tan
 * and sqrt are the ones the C program calls. It must be compiled without floating-point
 * contraction or fast-math (setup.py passes -ffp-contract=off), and for a target whose float
 * arithmetic is IEEE single precision (FLT_EVAL_METHOD 0: x86-64 SSE, aarch64).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "float arithmetic must round to float (FLT_EVAL_METHOD 0) to match the reference"
#endif

#define NTAB 32
#define LGAMMA_TABLE (1 << 20)

static const int64_t IA = 16807;
static const int64_t IM = 2147483647;
static const int64_t IQ = 127773;
static const int64_t IR = 2836;
static const int64_t NDIV = 1 + (2147483647 - 1) / NTAB;
static const double AM = 1.0 / 2147483647.0;
static const double RNMX = 1.0 - 1.2e-7;
static const double PI = 3.14159265358979323846;

static const double GAMMLN_COF[6] = {
    76.18009172947146,     -86.50532032941677,     24.01409824083091,
    -1.231739572450155,    0.1208650973866179e-2,  -0.5395239384953e-5,
};

/* The generator's state and the deviates' caches (static variables in the C program). */
typedef struct {
    int64_t idum;
    int64_t iy;
    int64_t iv[NTAB];
    int have_spare;
    float spare;
    float oldm, sq, alxm, g;
    float *lgamma_of; /* gammln(k + 1) for k < LGAMMA_TABLE once computed, 0 before; or NULL */
} state;

static void state_init(state *s, int64_t seed)
{
    int j;
    s->idum = seed;
    s->iy = 0;
    for (j = 0; j < NTAB; j++) s->iv[j] = 0;
    s->have_spare = 0;
    s->spare = 0.0f;
    s->oldm = -1.0f;
    s->sq = s->alxm = s->g = 0.0f;
    s->lgamma_of = NULL;
}

/* One Park-Miller step, idum <- 16807 idum mod (2^31 - 1), by Schrage's method. */
static int64_t schrage(int64_t idum)
{
    int64_t k = idum / IQ;
    idum = IA * (idum - k * IQ) - IR * k;
    if (idum < 0) idum += IM;
    return idum;
}

static float ran1(state *s)
{
    int64_t j;
    float temp;
    if (s->idum <= 0 || s->iy == 0) {
        int i;
        s->idum = (-s->idum < 1) ? 1 : -s->idum;
        for (i = NTAB + 7; i >= 0; i--) {
            s->idum = schrage(s->idum);
            if (i < NTAB) s->iv[i] = s->idum;
        }
        s->iy = s->iv[0];
    }
    s->idum = schrage(s->idum);
    j = s->iy / NDIV;
    s->iy = s->iv[j];
    s->iv[j] = s->idum;
    temp = (float)(AM * (double)s->iy);
    if ((double)temp > RNMX) return (float)RNMX;
    return temp;
}

static float gammln(float xx)
{
    double x, y, tmp, ser;
    int j;
    x = y = (double)xx;
    tmp = x + 5.5;
    tmp -= (x + 0.5) * log(tmp);
    ser = 1.000000000190015;
    for (j = 0; j < 6; j++) {
        y += 1.0;
        ser += GAMMLN_COF[j] / y;
    }
    return (float)(-tmp + log(2.5066282746310005 * ser / x));
}

/* gammln(em + 1) for an integral em >= 0, remembered: the rejection loop asks for the same few
 * thousand values millions of times. A value of 0 (not yet computed) is simply recomputed. */
static float gammln_of_count(state *s, float em)
{
    float value;
    int64_t k;
    if (s->lgamma_of == NULL || !(em >= 0.0f && em < (float)LGAMMA_TABLE)) {
        return gammln((float)((double)em + 1.0));
    }
    k = (int64_t)em;
    value = s->lgamma_of[k];
    if (value == 0.0f) {
        value = gammln((float)((double)em + 1.0));
        s->lgamma_of[k] = value;
    }
    return value;
}

static float gaussdev(state *s)
{
    float v1, v2, rsq, fac;
    if (s->have_spare) {
        s->have_spare = 0;
        return s->spare;
    }
    do {
        v1 = (float)(2.0 * (double)ran1(s) - 1.0);
        v2 = (float)(2.0 * (double)ran1(s) - 1.0);
        rsq = v1 * v1 + v2 * v2;
    } while (rsq >= 1.0f || rsq == 0.0f);
    fac = (float)sqrt(-2.0 * log((double)rsq) / (double)rsq);
    s->spare = v1 * fac;
    s->have_spare = 1;
    return v2 * fac;
}

static float poidev(state *s, float xm)
{
    float em, t, y;
    if ((double)xm > 1.0e6) {
        return (float)((double)xm + sqrt((double)xm) * (double)gaussdev(s));
    }
    if ((double)xm < 12.0) {
        if (xm != s->oldm) {
            s->oldm = xm;
            s->g = (float)exp(-(double)xm);
        }
        em = -1.0f;
        t = 1.0f;
        do {
            em += 1.0f;
            t = t * ran1(s);
        } while (t > s->g);
        return em;
    }
    if (xm != s->oldm) {
        s->oldm = xm;
        s->sq = (float)sqrt(2.0 * (double)xm);
        s->alxm = (float)log((double)xm);
        s->g = xm * s->alxm - gammln((float)((double)xm + 1.0));
    }
    do {
        do {
            y = (float)tan(PI * (double)ran1(s));
            em = s->sq * y + xm;
        } while (em < 0.0f);
        em = (float)floor((double)em);
        t = (float)(0.9 * (1.0 + (double)(y * y)) *
                    exp((double)(em * s->alxm - gammln_of_count(s, em) - s->g)));
    } while (ran1(s) > t);
    return em;
}

/* (unsigned short) of a double as x86-64 compilers emit it: truncate to a 32-bit int, where a
 * value that does not fit (NaN included) becomes INT_MIN, and keep the low 16 bits. */
static uint16_t to_ushort(double value)
{
    if (!(value > -2147483649.0)) return 0;
    return (uint16_t)((int64_t)value & 0xFFFF);
}

static PyObject *noise(PyObject *self, PyObject *args)
{
    Py_buffer values, counts, inside = {0}, deviates = {0};
    PyObject *inside_obj, *deviates_obj;
    long long seed;
    double adc, photons = 0.0;
    Py_ssize_t n, i, overloads = 0;
    const float *xm;
    const unsigned char *in = NULL;
    uint16_t *out;
    float *dev = NULL;
    state s;
    (void)self;

    if (!PyArg_ParseTuple(args, "y*OLdw*O", &values, &inside_obj, &seed, &adc, &counts,
                          &deviates_obj)) {
        return NULL;
    }
    n = values.len / (Py_ssize_t)sizeof(float);
    if (values.len != n * (Py_ssize_t)sizeof(float) ||
        counts.len != n * (Py_ssize_t)sizeof(uint16_t)) {
        PyErr_SetString(PyExc_ValueError, "values (float32) and counts (uint16) differ in size");
        goto fail;
    }
    if (seed <= -2147483648LL || seed >= 2147483648LL) {
        PyErr_SetString(PyExc_ValueError, "random seed does not fit a 32-bit C int");
        goto fail;
    }
    if (inside_obj != Py_None) {
        if (PyObject_GetBuffer(inside_obj, &inside, PyBUF_SIMPLE) < 0) goto fail;
        if (inside.len != n) {
            PyErr_SetString(PyExc_ValueError, "inside (uint8) and values differ in size");
            goto fail;
        }
        in = (const unsigned char *)inside.buf;
    }
    if (deviates_obj != Py_None) {
        if (PyObject_GetBuffer(deviates_obj, &deviates, PyBUF_WRITABLE) < 0) goto fail;
        if (deviates.len != n * (Py_ssize_t)sizeof(float)) {
            PyErr_SetString(PyExc_ValueError, "deviates (float32) and values differ in size");
            goto fail;
        }
        dev = (float *)deviates.buf;
    }
    xm = (const float *)values.buf;
    out = (uint16_t *)counts.buf;
    state_init(&s, (int64_t)seed);
    s.lgamma_of = (float *)PyMem_RawCalloc(LGAMMA_TABLE, sizeof(float));

    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < n; i++) {
        float draw;
        double test;
        if (in != NULL && !in[i]) continue;
        draw = poidev(&s, xm[i]);
        if (dev != NULL) dev[i] = draw;
        test = (double)draw;
        photons += test;
        test += adc;
        if (test > 65535.0) {
            test = 65535.0;
            overloads++;
        }
        out[i] = to_ushort(test);
    }
    Py_END_ALLOW_THREADS

    PyMem_RawFree(s.lgamma_of);
    PyBuffer_Release(&values);
    PyBuffer_Release(&counts);
    if (inside.obj != NULL) PyBuffer_Release(&inside);
    if (deviates.obj != NULL) PyBuffer_Release(&deviates);
    return Py_BuildValue("dn", photons, overloads);

fail:
    PyBuffer_Release(&values);
    PyBuffer_Release(&counts);
    if (inside.obj != NULL) PyBuffer_Release(&inside);
    if (deviates.obj != NULL) PyBuffer_Release(&deviates);
    return NULL;
}

static PyMethodDef methods[] = {
    {"noise", noise, METH_VARARGS,
     "noise(values, inside, seed, adc, counts, deviates) -> (photons, overloads)\n\n"
     "Poisson noise of float32 `values` in raster order with nanoBragg's deviates for `seed`,\n"
     "only where the uint8 `inside` is nonzero (None: everywhere). Writes `adc` + the deviate,\n"
     "clipped at 65535, as uint16 into `counts`, and the float32 deviates into `deviates`\n"
     "(None: not kept)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jaxdiff_noise",
    "nanoBragg's Poisson noise image, compiled (see jaxdiff.io.noise).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jaxdiff_noise(void)
{
    return PyModule_Create(&module);
}
