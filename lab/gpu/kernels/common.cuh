// Shared device helpers for the lab's CUDA kernels (inlined by lab.gpu._source; nvcc
// finds them with -I). No system headers: the kernels compile under NVRTC as is.
#pragma once

// Exact IEEE arithmetic (never contracted into FMAs), used where the kernels must
// reproduce numpy's float rounding bit for bit: template coordinates decide the
// bilinear cell, and a coordinate rounded differently can land in the next cell.
#ifdef __CUDA_ARCH__
__host__ __device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__host__ __device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__host__ __device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__host__ __device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__host__ __device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__host__ __device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__host__ __device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__host__ __device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
#else
// host builds (the CPU test harness, compiled without FMA contraction): plain IEEE ops
__host__ __device__ __forceinline__ float mul_rn(float a, float b) { return a * b; }
__host__ __device__ __forceinline__ double mul_rn(double a, double b) { return a * b; }
__host__ __device__ __forceinline__ float add_rn(float a, float b) { return a + b; }
__host__ __device__ __forceinline__ double add_rn(double a, double b) { return a + b; }
__host__ __device__ __forceinline__ float sub_rn(float a, float b) { return a - b; }
__host__ __device__ __forceinline__ double sub_rn(double a, double b) { return a - b; }
__host__ __device__ __forceinline__ float div_rn(float a, float b) { return a / b; }
__host__ __device__ __forceinline__ double div_rn(double a, double b) { return a / b; }
#endif
#ifdef __CUDA_ARCH__
__host__ __device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__host__ __device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }
#else
__host__ __device__ __forceinline__ float sqrt_rn(float a) { return sqrtf(a); }
__host__ __device__ __forceinline__ double sqrt_rn(double a) { return ::sqrt(a); }
#endif
// numpy's maximum / minimum: a NaN on either side wins
template <typename T> __host__ __device__ __forceinline__ T max_nan(T a, T b) {
    return a != a ? a : (b != b ? b : (a > b ? a : b));
}
template <typename T> __host__ __device__ __forceinline__ T min_nan(T a, T b) {
    return a != a ? a : (b != b ? b : (a < b ? a : b));
}
__host__ __device__ __forceinline__ float floor_(float x) { return floorf(x); }
__host__ __device__ __forceinline__ double floor_(double x) { return ::floor(x); }
__host__ __device__ __forceinline__ float exp_(float x) { return expf(x); }
__host__ __device__ __forceinline__ double exp_(double x) { return ::exp(x); }
__host__ __device__ __forceinline__ float log_(float x) { return logf(x); }
__host__ __device__ __forceinline__ double log_(double x) { return ::log(x); }
__host__ __device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__host__ __device__ __forceinline__ double log1p_(double x) { return ::log1p(x); }
__host__ __device__ __forceinline__ bool finite_(float x) { return isfinite(x); }
__host__ __device__ __forceinline__ bool finite_(double x) { return isfinite(x); }

// atomicAdd on the device; a plain add in host builds (the harness runs serially)
template <typename T>
__host__ __device__ __forceinline__ void acc_add(T* p, T v) {
#ifdef __CUDA_ARCH__
    atomicAdd(p, v);
#else
    *p += v;
#endif
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

template <typename T> __host__ __device__ __forceinline__ T qnan_();
#ifdef __CUDA_ARCH__
template <> __host__ __device__ __forceinline__ float qnan_<float>() { return __int_as_float(0x7fc00000); }
template <> __host__ __device__ __forceinline__ double qnan_<double>() { return __longlong_as_double(0x7ff8000000000000ULL); }
#else
template <> __host__ __device__ __forceinline__ float qnan_<float>() { return __builtin_nanf(""); }
template <> __host__ __device__ __forceinline__ double qnan_<double>() { return __builtin_nan(""); }
#endif
template <typename T> __device__ __forceinline__ T inf_();
template <> __device__ __forceinline__ float inf_<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double inf_<double>() { return __longlong_as_double(0x7ff0000000000000ULL); }

// Sum NV values over the whole block; the totals are valid in thread 0. ``red`` is
// shared scratch of 32 * NV entries. Every thread of the block must call it.
template <typename T, int NV>
__device__ __forceinline__ void block_sum(T* v, T* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int j = 0; j < NV; ++j) v[j] = warp_sum(v[j]);
    if (lane == 0) {
#pragma unroll
        for (int j = 0; j < NV; ++j) red[warp * NV + j] = v[j];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int j = 0; j < NV; ++j) v[j] = warp_sum(lane < nwarps ? red[lane * NV + j] : (T)0);
    }
    __syncthreads();
}
