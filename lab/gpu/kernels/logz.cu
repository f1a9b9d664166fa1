// Exact log Z of a binary RBM on the GPU (thesis 3.3.2): enumerate the smaller layer,
// sum the other out analytically. With the enumerated units split into low and high
// bits, s = (l, h), every other-layer input is x_i = Xl[l, i] + Xh[h, i] (Xl includes
// the other layer's biases), and
//     L[l, h] = el[l] + eh[h] + sum_i softplus(Xl[l, i] + Xh[h, i])
// is a matrix-product-shaped computation (a "softplus-sum product"): tiles of Xl and Xh
// in shared memory, each thread 4 x 4 (l, h) pairs, softplus in T, sums in float64.
// lab/undirected/gpu_update.py takes the stable logsumexp over L (float64).
#include "common.cuh"

#define LZ_TILE 64     // (l, h) pairs per block: LZ_TILE x LZ_TILE
#define LZ_KT 32       // other-layer units per shared-memory tile

template <typename T>
__device__ __forceinline__ T softplus_(T x) {
    return x > (T)0 ? x + log1p_(exp_(-x)) : log1p_(exp_(x));
}

template <typename T>
__device__ void logz_pairs(const T* __restrict__ Xl, const T* __restrict__ Xh,
                           const double* __restrict__ el, const double* __restrict__ eh,
                           double* __restrict__ L, int Nl, int Nh, int m, int ldL) {
    __shared__ T sl[LZ_KT][LZ_TILE + 1];
    __shared__ T sh[LZ_KT][LZ_TILE + 1];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;   // 256 threads
    const int l0 = blockIdx.y * LZ_TILE, h0 = blockIdx.x * LZ_TILE;
    double acc[4][4];
#pragma unroll
    for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[p][q] = 0.0;
    for (int i0 = 0; i0 < m; i0 += LZ_KT) {
        for (int e = threadIdx.x; e < LZ_TILE * LZ_KT; e += blockDim.x) {
            const int r = e / LZ_KT, i = e % LZ_KT, ii = i0 + i;
            const int l = l0 + r, h = h0 + r;
            sl[i][r] = (l < Nl && ii < m) ? Xl[(long long)l * m + ii] : (T)0;
            sh[i][r] = (h < Nh && ii < m) ? Xh[(long long)h * m + ii] : (T)0;
        }
        __syncthreads();
        const int kmax = min(LZ_KT, m - i0);
        for (int i = 0; i < kmax; ++i) {
            T a[4], b[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) { a[q] = sl[i][ty + 16 * q]; b[q] = sh[i][tx + 16 * q]; }
#pragma unroll
            for (int p = 0; p < 4; ++p)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[p][q] += (double)softplus_(a[p] + b[q]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        const int l = l0 + ty + 16 * p;
        if (l >= Nl) continue;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int h = h0 + tx + 16 * q;
            if (h < Nh) L[(long long)l * ldL + h] = el[l] + eh[h] + acc[p][q];
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) logz_pairs_f32(
        const float* Xl, const float* Xh, const double* el, const double* eh, double* L,
        int Nl, int Nh, int m, int ldL) {
    logz_pairs<float>(Xl, Xh, el, eh, L, Nl, Nh, m, ldL);
}

extern "C" __global__ void __launch_bounds__(256) logz_pairs_f64(
        const double* Xl, const double* Xh, const double* el, const double* eh, double* L,
        int Nl, int Nh, int m, int ldL) {
    logz_pairs<double>(Xl, Xh, el, eh, L, Nl, Nh, m, ldL);
}
