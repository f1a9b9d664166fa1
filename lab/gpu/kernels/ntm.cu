// NTM (thesis fig. 2.4; lab/graphics/ntm.py): nice poses (t0, t1, s0, s1, z, theta) ->
// world -> template matrices, forward and backward, one thread per pose. The arithmetic
// is the numpy op's, in its order and rounding (no FMA contraction); only cos/sin may
// differ from numpy's in the last bit. tests/test_gpu_kernels.py runs ntm_forward_one
// and ntm_backward_one on the host against the numpy op.
#include "common.cuh"

__host__ __device__ __forceinline__ float cos_(float x) { return cosf(x); }
__host__ __device__ __forceinline__ double cos_(double x) { return ::cos(x); }
__host__ __device__ __forceinline__ float sin_(float x) { return sinf(x); }
__host__ __device__ __forceinline__ double sin_(double x) { return ::sin(x); }

// nice (6) -> m (9, row-major 3x3)
template <typename T>
__host__ __device__ __forceinline__ void ntm_forward_one(const T* nice, T* m) {
    const T t0 = nice[0], t1 = nice[1], s0 = nice[2], s1 = nice[3], z = nice[4], th = nice[5];
    const T c = cos_(th), s = sin_(th);
    const T a00 = mul_rn(c, s0), a01 = mul_rn(s1, sub_rn(mul_rn(c, z), s));
    const T a10 = mul_rn(s, s0), a11 = mul_rn(s1, add_rn(mul_rn(s, z), c));
    const T u0 = sub_rn(t0, (T)0.5), u1 = sub_rn(t1, (T)0.5);
    m[0] = a00; m[1] = a01; m[2] = add_rn(add_rn(mul_rn(a00, u0), mul_rn(a01, u1)), (T)0.5);
    m[3] = a10; m[4] = a11; m[5] = add_rn(add_rn(mul_rn(a10, u0), mul_rn(a11, u1)), (T)0.5);
    m[6] = 0; m[7] = 0; m[8] = 1;
}

// nice (6), gy (9) -> g (6)
template <typename T>
__host__ __device__ __forceinline__ void ntm_backward_one(const T* nice, const T* gy, T* g) {
    const T t0 = nice[0], t1 = nice[1], s0 = nice[2], s1 = nice[3], z = nice[4], th = nice[5];
    const T c = cos_(th), s = sin_(th);
    const T czs = sub_rn(mul_rn(c, z), s), szc = add_rn(mul_rn(s, z), c);
    const T a00 = mul_rn(c, s0), a01 = mul_rn(s1, czs), a10 = mul_rn(s, s0), a11 = mul_rn(s1, szc);
    const T u0 = sub_rn(t0, (T)0.5), u1 = sub_rn(t1, (T)0.5);
    const T gb0 = gy[2], gb1 = gy[5];
    const T g00 = add_rn(gy[0], mul_rn(gb0, u0)), g01 = add_rn(gy[1], mul_rn(gb0, u1));
    const T g10 = add_rn(gy[3], mul_rn(gb1, u0)), g11 = add_rn(gy[4], mul_rn(gb1, u1));
    g[0] = add_rn(mul_rn(a00, gb0), mul_rn(a10, gb1));
    g[1] = add_rn(mul_rn(a01, gb0), mul_rn(a11, gb1));
    g[2] = add_rn(mul_rn(g00, c), mul_rn(g10, s));
    g[3] = add_rn(mul_rn(g01, czs), mul_rn(g11, szc));
    g[4] = mul_rn(add_rn(mul_rn(g01, c), mul_rn(g11, s)), s1);
    T r = sub_rn(mul_rn(mul_rn(-g00, s), s0), mul_rn(mul_rn(g01, s1), szc));
    r = add_rn(r, mul_rn(mul_rn(g10, c), s0));
    g[5] = add_rn(r, mul_rn(mul_rn(g11, s1), czs));
}

template <typename T>
__device__ __forceinline__ void ntm_forward(const T* __restrict__ nice, T* __restrict__ m, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        ntm_forward_one(nice + 6 * i, m + 9 * i);
}

template <typename T>
__device__ __forceinline__ void ntm_backward(const T* __restrict__ nice, const T* __restrict__ gy,
                                             T* __restrict__ g, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        ntm_backward_one(nice + 6 * i, gy + 9 * i, g + 6 * i);
}

extern "C" __global__ void ntm_forward_f32(const float* nice, float* m, long long n) { ntm_forward(nice, m, n); }
extern "C" __global__ void ntm_forward_f64(const double* nice, double* m, long long n) { ntm_forward(nice, m, n); }
extern "C" __global__ void ntm_backward_f32(const float* nice, const float* gy, float* g, long long n) {
    ntm_backward(nice, gy, g, n);
}
extern "C" __global__ void ntm_backward_f64(const double* nice, const double* gy, double* g, long long n) {
    ntm_backward(nice, gy, g, n);
}
