// The conservative optimizer's per-element step (thesis 2.5.3; lab/optim/conservative.py)
// in one kernel: the g^2 averages, their maximum, the four-rule factor, the clip and the
// parameter update. The arithmetic is numpy's, in numpy's order and rounding (no FMA
// contraction, NaN-propagating minimum/maximum), so the GPU optimizer equals the numpy
// one bit for bit; tests/test_gpu_kernels.py runs conservative_element on the host
// against the numpy optimizer.
#include "common.cuh"

#define MAX_AVERAGES 6

// One element. avg[k] points to this element's k-th average; plain_mask bit k: gamma_k
// is 1 (the average is just g^2); keep[k] = 1 - 1/gamma_k, w[k] = 1/gamma_k; alpha: the
// four alphas times the step scale. All already rounded to T, as numpy rounds Python
// floats against a T array.
template <typename T>
__host__ __device__ __forceinline__ void conservative_element(T g, T* data, T* const* avg, int n_avg,
                                                              int plain_mask, bool update_first,
                                                              const T* alpha, const T* keep, const T* w) {
    const T g2 = mul_rn(g, g);
    if (update_first)
        for (int k = 0; k < n_avg; ++k)
            *avg[k] = (plain_mask >> k) & 1 ? g2 : add_rn(mul_rn(*avg[k], keep[k]), mul_rn(g2, w[k]));
    T gh = *avg[0];
    for (int k = 1; k < n_avg; ++k) gh = max_nan(gh, *avg[k]);
    if (!update_first)
        for (int k = 0; k < n_avg; ++k)
            *avg[k] = (plain_mask >> k) & 1 ? g2 : add_rn(mul_rn(*avg[k], keep[k]), mul_rn(g2, w[k]));
    const T q3 = div_rn(alpha[2], sqrt_rn(gh));
    T f = div_rn(alpha[3], gh);
    f = min_nan(f, q3);
    f = min_nan(f, alpha[1]);
    T d = mul_rn(g, f);
    d = min_nan(max_nan(d, -alpha[0]), alpha[0]);
    *data = sub_rn(*data, d);
}

template <typename T>
__device__ __forceinline__ void conservative_update(const T* __restrict__ g, T* __restrict__ data,
                                                    T* a0, T* a1, T* a2, T* a3, T* a4, T* a5,
                                                    long long n, int n_avg, int plain_mask, int update_first,
                                                    const double* __restrict__ coef) {
    // coef (device, 16 doubles): alpha1..4, keep0..5, w0..5
    T alpha[4], keep[MAX_AVERAGES], w[MAX_AVERAGES];
    for (int j = 0; j < 4; ++j) alpha[j] = (T)coef[j];
    for (int k = 0; k < MAX_AVERAGES; ++k) { keep[k] = (T)coef[4 + k]; w[k] = (T)coef[10 + k]; }
    T* base[MAX_AVERAGES] = {a0, a1, a2, a3, a4, a5};
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        T* avg[MAX_AVERAGES];
        for (int k = 0; k < n_avg; ++k) avg[k] = base[k] + i;
        conservative_element(g[i], data + i, avg, n_avg, plain_mask, update_first != 0, alpha, keep, w);
    }
}

extern "C" __global__ void conservative_update_f32(const float* g, float* data, float* a0, float* a1,
                                                   float* a2, float* a3, float* a4, float* a5, long long n,
                                                   int n_avg, int plain_mask, int update_first,
                                                   const double* coef) {
    conservative_update(g, data, a0, a1, a2, a3, a4, a5, n, n_avg, plain_mask, update_first, coef);
}

extern "C" __global__ void conservative_update_f64(const double* g, double* data, double* a0, double* a1,
                                                   double* a2, double* a3, double* a4, double* a5, long long n,
                                                   int n_avg, int plain_mask, int update_first,
                                                   const double* coef) {
    conservative_update(g, data, a0, a1, a2, a3, a4, a5, n, n_avg, plain_mask, update_first, coef);
}
