// Binary RBM on the GPU (thesis chapter 3): the element-wise parts of a PCD / FPCD
// update (3.2.4) and of an AIS step, fused; the matrix products are cuBLAS calls made
// by lab/undirected/gpu_update.py.
//
// Parameters are kept "augmented": P = [[W, c], [b^T, 0]] of shape (nh+1, nv+1), so
// [v, 1] P[:nh]^T = v W^T + c and [h, 1] P = [h W + b, .]: the biases ride along in the
// matrix products, and the gradient of all of W, b, c is one product
// [h_pos/n; -h_neg/m | 1/n; -1/m]^T [v_pos, 1; v_neg, 1] (thesis 3.2.4, steps 5-6).
// Random numbers: Philox (philox.cuh) keyed by the seed, counter (index, stream,
// *step), where *step is device memory advanced by rbm_update, so a captured CUDA graph
// of a whole update draws fresh numbers on every replay. A non-null `u` gives the
// uniforms explicitly instead (tests).
#include "common.cuh"
#include "philox.cuh"

// numpy's sigmoid_: 1 / (1 + exp(-x)) (exp overflowing to inf gives exactly 0)
__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float draw(const float* u, unsigned long long i, unsigned int stream,
                                      unsigned long long step, unsigned long long seed) {
    return u ? u[i] : philox_uniform(i, stream, step, seed);
}

// H (n+m, nh): pre-activations [v_pos, 1] P[:nh]^T over [v_neg, 1] Pn[:nh]^T.
// -> Hcat (n+m, nh+1): sigmoid scaled by 1/n (positive rows) or -1/m (particle rows),
//    last column the scale itself (the bias gradients' column);
// -> Hs (m, nh+1): a sample of the particles' hidden units (stream 0), last column 1.
extern "C" __global__ void rbm_hidden_f32(const float* __restrict__ H, float* __restrict__ Hcat,
                                          float* __restrict__ Hs, int n, int m, int nh,
                                          unsigned long long seed, const unsigned long long* step,
                                          const float* u) {
    const long long total = (long long)(n + m) * (nh + 1);
    const unsigned long long st = *step;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int row = (int)(idx / (nh + 1)), j = (int)(idx % (nh + 1));
        const bool neg = row >= n;
        const float scale = neg ? -1.0f / (float)m : 1.0f / (float)n;
        if (j == nh) {
            Hcat[idx] = scale;
            if (neg) Hs[(long long)(row - n) * (nh + 1) + nh] = 1.0f;
            continue;
        }
        const float p = sigmoid_f(H[(long long)row * nh + j]);
        Hcat[idx] = p * scale;
        if (neg) {
            const long long e = (long long)(row - n) * nh + j;
            Hs[(long long)(row - n) * (nh + 1) + j] = draw(u, e, 0u, st, seed) < p ? 1.0f : 0.0f;
        }
    }
}

// Vpre (m, nv+1): [h, 1] Pn. -> V (m, nv+1): a visible sample (stream 1), last column 1.
// V may be the particle rows of the stacked [v_pos, 1; v_neg, 1] array: the gradient
// product that reads the old particles must run before this kernel.
extern "C" __global__ void rbm_visible_f32(const float* __restrict__ Vpre, float* __restrict__ V,
                                           int m, int nv, unsigned long long seed,
                                           const unsigned long long* step, const float* u) {
    const long long total = (long long)m * (nv + 1);
    const unsigned long long st = *step;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int row = (int)(idx / (nv + 1)), i = (int)(idx % (nv + 1));
        if (i == nv) { V[idx] = 1.0f; continue; }
        const float p = sigmoid_f(Vpre[idx]);
        V[idx] = draw(u, (long long)row * nv + i, 1u, st, seed) < p ? 1.0f : 0.0f;
    }
}

// Steps 6-7 of 3.2.4 for every parameter at once, from G = the augmented gradient:
//   fast overlay  F = decay F + flr G                      (F null: PCD, no overlay)
//   slow          P = P + lr (G - wd P)   (weight decay on the weights only, not biases)
//   negative      Pn = P + F                               (the particles' parameters)
// hyper (device memory, so a graph sees new rates): lr, flr, decay, wd. The corner
// entry of the augmented arrays stays 0. Advances *step (one update done).
extern "C" __global__ void rbm_update_f32(float* __restrict__ P, float* __restrict__ F,
                                          float* __restrict__ Pn, const float* __restrict__ G,
                                          const float* __restrict__ hyper, int nh, int nv,
                                          unsigned long long* step) {
    const long long total = (long long)(nh + 1) * (nv + 1);
    const float lr = hyper[0], flr = hyper[1], decay = hyper[2], wd = hyper[3];
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        if (idx == 0) *step += 1ULL;   // read by this update's earlier kernels only
        const int j = (int)(idx / (nv + 1)), i = (int)(idx % (nv + 1));
        if (j == nh && i == nv) continue;
        const float g = G[idx];
        float p = P[idx];
        p += (j < nh && i < nv && wd != 0.0f) ? lr * (g - wd * p) : lr * g;
        P[idx] = p;
        if (F) {
            const float f = F[idx] * decay + flr * g;
            F[idx] = f;
            Pn[idx] = p + f;
        }
    }
}

// -- AIS (thesis 3.3.5; lab/undirected/ais.py) --------------------------------------
// One block per run. X (runs, nh): v W^T; x = X + c in float32. Adds to log_w[r]
//   (beta - prev) v.db + sum_j [softplus(beta x_j) - softplus(prev x_j)]   (float64)
// and samples h = [u < sigmoid(beta x)] (stream 0) into Hs (runs, nh).
// betas (device) and *t (device step index, advanced by counter_advance) pick beta_t.
__device__ __forceinline__ double softplus_d(double x) {
    return x > 0.0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

extern "C" __global__ void ais_hidden_f32(const float* __restrict__ X, const float* __restrict__ c,
                                          const float* __restrict__ V,
                                          const double* __restrict__ db, const double* __restrict__ betas,
                                          const unsigned long long* t, double* log_w, float* Hs,
                                          int runs, int nh, int nv, unsigned long long seed) {
    __shared__ double red[32];
    const unsigned long long st = *t;
    const double beta = betas[st], prev = betas[st - 1];
    const float beta_f = (float)beta;
    for (int r = blockIdx.x; r < runs; r += gridDim.x) {
        double acc[1] = {0.0};
        for (int j = threadIdx.x; j < nh; j += blockDim.x) {
            const float x = X[(long long)r * nh + j] + c[j];
            const double x64 = (double)x;
            acc[0] += softplus_d(beta * x64) - softplus_d(prev * x64);
            const float p = sigmoid_f(x * beta_f);
            Hs[(long long)r * nh + j] = philox_uniform((unsigned long long)r * nh + j, 0u, st, seed) < p ? 1.0f : 0.0f;
        }
        for (int i = threadIdx.x; i < nv; i += blockDim.x)
            acc[0] += (beta - prev) * (double)V[(long long)r * nv + i] * db[i];
        block_sum<double, 1>(acc, red);
        if (threadIdx.x == 0) log_w[r] += acc[0];
    }
}

// Vpre (runs, nv): h W. -> V = [u < sigmoid(beta Vpre + (1 - beta) bA + beta bB)]
// (stream 1).
extern "C" __global__ void ais_visible_f32(const float* __restrict__ Vpre, const float* __restrict__ bA,
                                           const float* __restrict__ bB, const double* __restrict__ betas,
                                           unsigned long long* t, float* V, int runs, int nv,
                                           unsigned long long seed) {
    const unsigned long long st = *t;
    const float beta = (float)betas[st], one_minus = (float)(1.0 - betas[st]);
    const long long total = (long long)runs * nv;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int i = (int)(idx % nv);
        const float pre = Vpre[idx] * beta + (one_minus * bA[i] + beta * bB[i]);
        V[idx] = philox_uniform((unsigned long long)idx, 1u, st, seed) < sigmoid_f(pre) ? 1.0f : 0.0f;
    }
}

// Advances a device-side step counter (its own launch: every block of the kernels
// before it has read the old value).
extern "C" __global__ void counter_advance(unsigned long long* t) { *t += 1ULL; }
