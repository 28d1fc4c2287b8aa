/* MD5 of many buffers at once, one buffer per SIMD lane (AVX-512: 16 lanes, AVX2: 8).
 *
 * MD5 is serial within one buffer, so one core hashes one stream at ~0.9 GB/s whatever it
 * is given. Cinder's format asks for the md5 of every object, and a restore or a backup has
 * many objects in flight: hashed side by side in vector lanes, they cost a fraction of the
 * CPU. Python's hashlib (OpenSSL) stays the reference and the fallback: the tests compare
 * every digest made here with it.
 *
 * Python API (module bakfs.cinder._md5lanes):
 *   lanes() -> int           16, 8, or 0 when the CPU has neither AVX-512F nor AVX2
 *   digests(buffers, lanes=0) -> list[bytes]   raw 16-byte digests, in order; the GIL is released
 *                                     while hashing, and each buffer is held until done.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

struct job {
    const uint8_t *data;
    uint64_t length;
};

struct lane {
    const uint8_t *data;
    uint64_t full_blocks; /* whole 64-byte blocks read from the buffer itself */
    uint64_t blocks;      /* full_blocks + the one or two padded blocks of the tail */
    uint64_t done;
    size_t job;
    uint8_t tail[128];
};

static const uint32_t K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
    0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
    0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
    0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
    0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
    0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
    0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
    0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
    0xeb86d391};

/* The lane helpers take the state as a flat array: row r of lane l is state[r * width + l]. */
static void lane_init(struct lane *lane, const struct job *job, size_t index, uint32_t *state,
                      int width, int l)
{
    uint64_t rest = job->length % 64;
    lane->data = job->data;
    lane->full_blocks = job->length / 64;
    lane->done = 0;
    lane->job = index;
    memset(lane->tail, 0, sizeof lane->tail);
    memcpy(lane->tail, job->data + lane->full_blocks * 64, rest);
    lane->tail[rest] = 0x80;
    uint64_t tail_blocks = rest < 56 ? 1 : 2;
    uint64_t bits = job->length * 8;
    memcpy(lane->tail + tail_blocks * 64 - 8, &bits, 8); /* little-endian, as x86 is */
    lane->blocks = lane->full_blocks + tail_blocks;
    state[0 * width + l] = 0x67452301;
    state[1 * width + l] = 0xefcdab89;
    state[2 * width + l] = 0x98badcfe;
    state[3 * width + l] = 0x10325476;
}

static inline const uint8_t *lane_block(const struct lane *lane)
{
    if (lane->done < lane->full_blocks)
        return lane->data + lane->done * 64;
    return lane->tail + (lane->done - lane->full_blocks) * 64;
}

/* One block consumed; true when that was the lane's last. */
static inline int lane_advance(struct lane *lane)
{
    return ++lane->done == lane->blocks;
}

static void lane_write(const struct lane *lane, const uint32_t *state, int width, int l,
                       uint8_t *digests)
{
    for (int r = 0; r < 4; r++)
        memcpy(digests + lane->job * 16 + 4 * r, &state[r * width + l], 4);
}

/* Word w of every lane's 64-byte block, as one vector: each block loaded whole, then the
 * 16 x 16 (AVX-512) or two 8 x 8 (AVX2) matrices of words transposed in registers. Gathers
 * cost twice the hashing itself on AMD Zen 4. */
/* Rows g..g+3 of r, transposed within each 128-bit lane: u[g + j] lane k = word 4k + j.
 * The first stage of both transposes; P is the intrinsics' prefix (_mm512 or _mm256). */
#define TRANSPOSE_4X4(P, r, t, u, g)                                                         \
    do {                                                                                     \
        t[0] = P##_unpacklo_epi32(r[g], r[g + 1]);                                           \
        t[1] = P##_unpackhi_epi32(r[g], r[g + 1]);                                           \
        t[2] = P##_unpacklo_epi32(r[g + 2], r[g + 3]);                                       \
        t[3] = P##_unpackhi_epi32(r[g + 2], r[g + 3]);                                       \
        u[g] = P##_unpacklo_epi64(t[0], t[2]);                                               \
        u[g + 1] = P##_unpackhi_epi64(t[0], t[2]);                                           \
        u[g + 2] = P##_unpacklo_epi64(t[1], t[3]);                                           \
        u[g + 3] = P##_unpackhi_epi64(t[1], t[3]);                                           \
    } while (0)

__attribute__((target("avx512f"))) static inline void
transpose16(__m512i words[16], const uint8_t *const blocks[16])
{
    __m512i r[16], t[16], u[16];
    for (int l = 0; l < 16; l++)
        r[l] = _mm512_loadu_si512((const void *)blocks[l]);
    for (int g = 0; g < 16; g += 4)
        TRANSPOSE_4X4(_mm512, r, t, u, g);
    for (int j = 0; j < 4; j++) {
        __m512i va = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);
        __m512i vb = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xdd);
        __m512i xa = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
        __m512i xb = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xdd);
        words[j] = _mm512_shuffle_i32x4(va, xa, 0x88);
        words[8 + j] = _mm512_shuffle_i32x4(va, xa, 0xdd);
        words[4 + j] = _mm512_shuffle_i32x4(vb, xb, 0x88);
        words[12 + j] = _mm512_shuffle_i32x4(vb, xb, 0xdd);
    }
}

__attribute__((target("avx2"))) static inline void
transpose8x8(__m256i out[8], const __m256i r[8])
{
    __m256i t[4], u[8];
    for (int g = 0; g < 8; g += 4)
        TRANSPOSE_4X4(_mm256, r, t, u, g);
    for (int j = 0; j < 4; j++) {
        out[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
        out[4 + j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
    }
}

__attribute__((target("avx2"))) static inline void
transpose8(__m256i words[16], const uint8_t *const blocks[8])
{
    __m256i lo[8], hi[8];
    for (int l = 0; l < 8; l++) {
        lo[l] = _mm256_loadu_si256((const __m256i *)blocks[l]);
        hi[l] = _mm256_loadu_si256((const __m256i *)(blocks[l] + 32));
    }
    transpose8x8(words, lo);
    transpose8x8(words + 8, hi);
}

#define GATHER16(words, blocks) transpose16((__m512i *)(words), (blocks))
#define GATHER8(words, blocks) transpose8((__m256i *)(words), (blocks))

#define LANES 16
#define GATHER GATHER16
#define TARGET "avx512f"
#define ENGINE md5_lanes16
#define VEC vec16
#include "md5lanes_body.h"
#undef LANES
#undef GATHER
#undef TARGET
#undef ENGINE
#undef VEC

#define LANES 8
#define GATHER GATHER8
#define TARGET "avx2"
#define ENGINE md5_lanes8
#define VEC vec8
#include "md5lanes_body.h"
#undef LANES
#undef GATHER
#undef TARGET
#undef ENGINE
#undef VEC

typedef void engine_fn(size_t, const struct job *, uint8_t *);

static int lane_count(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 16;
    if (__builtin_cpu_supports("avx2"))
        return 8;
    return 0;
}

static PyObject *py_lanes(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(lane_count());
}

static PyObject *py_digests(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *arg;
    int width = 0, best = lane_count();
    if (!PyArg_ParseTuple(args, "O|i:digests", &arg, &width))
        return NULL;
    if (!width)
        width = best;
    if (!best || (width != 8 && width != 16) || width > best) {
        PyErr_Format(PyExc_ValueError, "%d lanes asked, this CPU has %d (AVX-512F: 16, AVX2: 8)",
                     width, best);
        return NULL;
    }
    engine_fn *engine = width == 16 ? md5_lanes16 : md5_lanes8;
    PyObject *seq = PySequence_Fast(arg, "digests() takes a sequence of buffers");
    if (!seq)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    Py_buffer *views = PyMem_Calloc(count ? count : 1, sizeof *views);
    struct job *jobs = PyMem_Calloc(count ? count : 1, sizeof *jobs);
    PyObject *out = PyBytes_FromStringAndSize(NULL, count * 16);
    PyObject *result = NULL;
    Py_ssize_t held = 0;
    if (!views || !jobs || !out) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < count; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, held), &views[held],
                               PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        jobs[held].data = views[held].buf;
        jobs[held].length = (uint64_t)views[held].len;
    }
    uint8_t *digests = (uint8_t *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    engine((size_t)count, jobs, digests);
    Py_END_ALLOW_THREADS
    result = PyList_New(count);
    if (!result)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *one = PyBytes_FromStringAndSize((const char *)digests + 16 * i, 16);
        if (!one) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, one);
    }
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(jobs);
    Py_XDECREF(out);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"lanes", py_lanes, METH_NOARGS, "How many buffers one core hashes at once (0: none)."},
    {"digests", py_digests, METH_VARARGS,
     "digests(buffers, lanes=0): raw MD5 digests of the buffers, in order."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_md5lanes",
                                    "MD5 of many buffers at once, one per SIMD lane.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__md5lanes(void)
{
    return PyModule_Create(&module);
}
