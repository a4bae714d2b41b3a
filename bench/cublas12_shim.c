/* libcublas.so.12 for faiss-gpu's CUDA 12 wheels on a machine that has only CUDA 13's cuBLAS.
 *
 * The faiss-gpu 1.15 (and faiss-gpu-cu12) wheels link libcublas.so.12 and libcublasLt.so.12
 * but call only the eight cuBLAS entry points below, whose C signatures are the same in
 * cuBLAS 12 and 13. This library answers to the soname libcublas.so.12 (symbols versioned as
 * cuBLAS 12 versions them) and forwards each call to libcublas.so.13; an empty library stands
 * for libcublasLt.so.12, of which faiss calls nothing. faiss-gpu 1.15 loads them from
 * `nvidia/cublas/lib/` beside it (where nvidia-cublas-cu12 would put them), with the CUDA 12
 * runtime (nvidia-cuda-runtime-cu12) in `nvidia/cuda_runtime/lib/`; cuBLAS 13's folder goes
 * on LD_LIBRARY_PATH. Build both:
 *
 *   printf 'libcublas.so.12 { global: cublas*; local: *; };\n' > v12.map
 *   gcc -O2 -shared -fPIC -o libcublas.so.12 -Wl,-soname,libcublas.so.12 \
 *       -Wl,--version-script=v12.map bench/cublas12_shim.c -ldl
 *   echo 'int unused;' | gcc -x c -shared -fPIC -o libcublasLt.so.12 -Wl,-soname,libcublasLt.so.12 -
 *
 * A check of the GPU path where CUDA 12's 400 MB cuBLAS cannot be installed; not for serving.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
static void *lib;
static void *sym(const char *name) {
  if (!lib) lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) { fprintf(stderr, "cublas12 shim: %s\n", dlerror()); abort(); }
  void *f = dlsym(lib, name);
  if (!f) { fprintf(stderr, "cublas12 shim: no %s\n", name); abort(); }
  return f;
}
typedef void *H;
#define FWD(ret, name, params, args) \
  ret name params { static ret (*f) params; if (!f) f = (ret (*) params)sym(#name); return f args; }
FWD(int, cublasCreate_v2, (H *h), (h))
FWD(int, cublasDestroy_v2, (H h), (h))
FWD(int, cublasSetStream_v2, (H h, void *s), (h, s))
FWD(int, cublasGetMathMode, (H h, int *m), (h, m))
FWD(int, cublasSetMathMode, (H h, int m), (h, m))
FWD(int, cublasSgemmEx,
    (H h, int ta, int tb, int m, int n, int k, const float *al, const void *A, int At, int lda,
     const void *B, int Bt, int ldb, const float *be, void *C, int Ct, int ldc),
    (h, ta, tb, m, n, k, al, A, At, lda, B, Bt, ldb, be, C, Ct, ldc))
FWD(int, cublasGemmEx,
    (H h, int ta, int tb, int m, int n, int k, const void *al, const void *A, int At, int lda,
     const void *B, int Bt, int ldb, const void *be, void *C, int Ct, int ldc, int ct, int algo),
    (h, ta, tb, m, n, k, al, A, At, lda, B, Bt, ldb, be, C, Ct, ldc, ct, algo))
FWD(int, cublasGemmStridedBatchedEx,
    (H h, int ta, int tb, int m, int n, int k, const void *al, const void *A, int At, int lda,
     long long sA, const void *B, int Bt, int ldb, long long sB, const void *be, void *C, int Ct,
     int ldc, long long sC, int bc, int ct, int algo),
    (h, ta, tb, m, n, k, al, A, At, lda, sA, B, Bt, ldb, sB, be, C, Ct, ldc, sC, bc, ct, algo))
