// Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"):
// a counter-based generator. A random number is a pure function of (key, counter), so
// kernels draw in place (no generator state in memory) and a captured CUDA graph draws
// new numbers on every replay when the counter lives in device memory.
// lab/gpu/philox.py is the numpy reference (same bits); __host__ __device__ so that a
// host-only harness compiled by nvcc checks this text against it without a GPU.
#pragma once

struct philox_u4 { unsigned int x, y, z, w; };

__host__ __device__ __forceinline__ unsigned int philox_mulhi(unsigned int a, unsigned int b) {
#ifdef __CUDA_ARCH__
    return __umulhi(a, b);
#else
    return (unsigned int)(((unsigned long long)a * (unsigned long long)b) >> 32);
#endif
}

__host__ __device__ __forceinline__ philox_u4 philox4x32_10(philox_u4 c, unsigned int k0, unsigned int k1) {
    const unsigned int M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r > 0) { k0 += W0; k1 += W1; }
        const unsigned int hi0 = philox_mulhi(M0, c.x), lo0 = M0 * c.x;
        const unsigned int hi1 = philox_mulhi(M1, c.z), lo1 = M1 * c.z;
        philox_u4 n;
        n.x = hi1 ^ c.y ^ k0;
        n.y = lo1;
        n.z = hi0 ^ c.w ^ k1;
        n.w = lo0;
        c = n;
    }
    return c;
}

// The lab's uniform for element `index` of draw `stream` at update `step`: the first
// Philox word's top 24 bits, times 2^-24 (exact in float32: values k / 2^24 in [0, 1)).
__host__ __device__ __forceinline__ float philox_uniform(unsigned long long index, unsigned int stream,
                                                         unsigned long long step, unsigned long long seed) {
    philox_u4 c;
    c.x = (unsigned int)index;
    c.y = (unsigned int)(index >> 32);
    c.z = (stream & 0xffffu) | ((unsigned int)(step >> 32) << 16);   // streams < 2^16
    c.w = (unsigned int)step;
    const philox_u4 r = philox4x32_10(c, (unsigned int)seed, (unsigned int)(seed >> 32));
    return (float)(r.x >> 8) * 5.9604644775390625e-08f;
}
