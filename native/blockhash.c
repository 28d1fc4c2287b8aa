/* The SHA-256 of every block of a buffer, in one call that releases the GIL.
 *
 * Cinder's format keeps a SHA-256 of every 32 KiB block. hashlib hashes one block per call
 * and takes the GIL back after each (~25 us of work), so a hashing thread waits up to the
 * interpreter's 5 ms switch interval for each block whenever another thread holds the GIL:
 * the mount's FUSE thread, during a backup written into incoming/ (measured in
 * bakfs/cinder/blockhash.py). Here the GIL is released once per buffer, and OpenSSL (the
 * same library hashlib uses) hashes every block. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>

#define DIGEST 32

static const EVP_MD *sha256;

static int hash_blocks(const unsigned char *data, Py_ssize_t length, Py_ssize_t block,
                       unsigned char *out)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL;
    for (Py_ssize_t at = 0; ok && at < length; at += block, out += DIGEST) {
        size_t take = (size_t)(length - at < block ? length - at : block);
        ok = EVP_DigestInit_ex(ctx, sha256, NULL) && EVP_DigestUpdate(ctx, data + at, take)
             && EVP_DigestFinal_ex(ctx, out, NULL);
    }
    EVP_MD_CTX_free(ctx);
    return ok;
}

static PyObject *sha256_blocks(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t block;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*n:sha256_blocks", &view, &block))
        return NULL;
    if (block <= 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the block size must be positive");
        return NULL;
    }
    Py_ssize_t count = view.len / block + (view.len % block != 0);
    PyObject *out = PyBytes_FromStringAndSize(NULL, count * DIGEST);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = hash_blocks(view.buf, view.len, block, (unsigned char *)PyBytes_AS_STRING(out));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (!ok) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not compute a SHA-256");
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"sha256_blocks", sha256_blocks, METH_VARARGS,
     "sha256_blocks(buffer, block_size) -> bytes: the packed 32-byte SHA-256 of each "
     "block_size block of the buffer (the last one at its short length), hashed without "
     "the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_blockhash", "SHA-256 of a buffer's blocks, without the GIL.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__blockhash(void)
{
#if OPENSSL_VERSION_MAJOR >= 3
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);  /* fetched once, not at every block */
#else
    sha256 = EVP_sha256();
#endif
    if (sha256 == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
        return NULL;
    }
    return PyModule_Create(&module);
}
