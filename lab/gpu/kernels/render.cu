// ACR rendering (thesis fig. 2.3, 2.5.2) on the GPU: the same function as the numpy
// path of lab.graphics.acr (read its docstring): output pixel p of canvas (b, k) shows
// intensity[b, k] * template_k(M[b, k] p), template pixels are points, bilinear in
// between, zero outside (-1 < u < T0, -1 < v < T1 in template pixel units). Coordinates
// are computed with numpy's roundings (see common.cuh) so both paths pick the same
// bilinear cell; a canvas whose pose is not finite renders as NaN.
#include "common.cuh"

#define PAD 2          // lab.graphics.acr._PAD: coordinates are shifted by it
#define RENDER_PPT 4   // most pixels one thread keeps in registers (fused kernel)

template <typename T>
struct Pose {
    T cu0, cu1, cu2, cv0, cv1, cv2;   // padded coordinates u' = cu0 p0 + cu1 p1 + cu2
    bool finite;
};

// numpy: coef = m[:2] * (T0, T1); coef[:, 2] += PAD - 0.5
template <typename T>
__host__ __device__ __forceinline__ Pose<T> load_pose(const T* m, int T0, int T1) {
    Pose<T> P;
    const T m00 = m[0], m01 = m[1], m02 = m[2], m10 = m[3], m11 = m[4], m12 = m[5];
    P.finite = finite_(m00) && finite_(m01) && finite_(m02) && finite_(m10) && finite_(m11) && finite_(m12);
    const T t0 = (T)T0, t1 = (T)T1, shift = (T)(PAD - 0.5);
    P.cu0 = mul_rn(m00, t0); P.cu1 = mul_rn(m01, t0); P.cu2 = add_rn(mul_rn(m02, t0), shift);
    P.cv0 = mul_rn(m10, t1); P.cv1 = mul_rn(m11, t1); P.cv2 = add_rn(mul_rn(m12, t1), shift);
    return P;
}

// lab.graphics.frames.pixel_centres: (i + 0.5) / n
template <typename T>
__host__ __device__ __forceinline__ T centre(int i, int n) { return div_rn(add_rn((T)i, (T)0.5), (T)n); }

// numpy's einsum order: (c0 p0 + c1 p1) + c2
template <typename T>
__host__ __device__ __forceinline__ T coord(T c0, T c1, T c2, T p0, T p1) {
    return add_rn(add_rn(mul_rn(c0, p0), mul_rn(c1, p1)), c2);
}

template <typename T>
struct Sample {
    bool inside;
    int r, c;        // top-left corner of the cell, template pixel indices (>= -1)
    T wu, wv;        // fractions within the cell
    T val, du, dv;   // value, d value / d u, d value / d v
};

template <typename T>
__host__ __device__ __forceinline__ T tpix(const T* t, int T0, int T1, int r, int c) {
    return (r >= 0 && r < T0 && c >= 0 && c < T1) ? t[r * T1 + c] : (T)0;
}

// The bilinear sample at padded coordinates (up, vp), with numpy's cell polynomial
// c0 + c1 wv + c2 wu + c3 wu wv evaluated in its order.
template <typename T>
__host__ __device__ __forceinline__ Sample<T> bilinear(const T* t, int T0, int T1, T up, T vp) {
    Sample<T> s;
    s.inside = up > (T)(PAD - 1) && up < (T)(T0 + PAD) && vp > (T)(PAD - 1) && vp < (T)(T1 + PAD);
    s.r = s.c = 0;
    s.wu = s.wv = s.val = s.du = s.dv = (T)0;
    if (!s.inside) return s;
    const T fu = floor_(up), fv = floor_(vp);
    s.wu = sub_rn(up, fu);
    s.wv = sub_rn(vp, fv);
    s.r = (int)fu - PAD;
    s.c = (int)fv - PAD;
    const T p00 = tpix(t, T0, T1, s.r, s.c), p01 = tpix(t, T0, T1, s.r, s.c + 1);
    const T p10 = tpix(t, T0, T1, s.r + 1, s.c), p11 = tpix(t, T0, T1, s.r + 1, s.c + 1);
    const T c1 = sub_rn(p01, p00), c2 = sub_rn(p10, p00);
    const T c3 = add_rn(sub_rn(sub_rn(p11, p10), p01), p00);
    s.du = add_rn(mul_rn(c3, s.wv), c2);
    s.dv = add_rn(mul_rn(c3, s.wu), c1);
    s.val = add_rn(add_rn(mul_rn(s.wu, s.du), p00), mul_rn(c1, s.wv));
    return s;
}

// The four corner weights of d value / d template, added to acc (a T0 x T1 array).
template <typename T>
__host__ __device__ __forceinline__ void scatter_template(T* acc, int T0, int T1, const Sample<T>& s, T g) {
    const T a11 = g * s.wu * s.wv;
    const T a01 = g * s.wv - a11;
    const T a10 = g * s.wu - a11;
    const T a00 = g - a01 - a10 - a11;
    const int r = s.r, c = s.c;
    if (r >= 0) {
        if (c >= 0) acc_add(&acc[r * T1 + c], a00);
        if (c + 1 < T1) acc_add(&acc[r * T1 + c + 1], a01);
    }
    if (r + 1 < T0) {
        if (c >= 0) acc_add(&acc[(r + 1) * T1 + c], a10);
        if (c + 1 < T1) acc_add(&acc[(r + 1) * T1 + c + 1], a11);
    }
}

// -- forward: one thread per output pixel of every canvas -------------------------
// Output element idx of the (B, K, H, W) array (host builds: the CPU test harness).
template <typename T>
__host__ __device__ __forceinline__ T forward_pixel(const T* tmpl, const T* m, const T* inten,
                                                   long long idx, int K, int T0, int T1, int H, int W) {
    const int N = H * W;
    const int pix = (int)(idx % N);
    const long long bk = idx / N;
    const int k = (int)(bk % K);
    const Pose<T> P = load_pose(m + bk * 9, T0, T1);
    if (!P.finite) return qnan_<T>();
    const T p0 = centre<T>(pix / W, H), p1 = centre<T>(pix % W, W);
    const Sample<T> s = bilinear(tmpl + (long long)k * T0 * T1, T0, T1,
                                 coord(P.cu0, P.cu1, P.cu2, p0, p1), coord(P.cv0, P.cv1, P.cv2, p0, p1));
    return mul_rn(s.val, inten[bk]);
}

template <typename T>
__device__ void render_forward(const T* __restrict__ tmpl, const T* __restrict__ m,
                               const T* __restrict__ inten, T* __restrict__ y,
                               int B, int K, int T0, int T1, int H, int W) {
    const int N = H * W;
    const long long total = (long long)B * K * N;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        y[idx] = forward_pixel(tmpl, m, inten, idx, K, T0, T1, H, W);
    }
}

// -- backward: grid (K, blocks); one warp per canvas (b, k) ------------------------
// One pixel's share: matrix sums s[0..5] (before the T0/T1 factors), intensity s[6],
// template gradients into acc (null: not wanted).
template <typename T>
__host__ __device__ __forceinline__ void backward_pixel(const T* t, const Pose<T>& P, T a, T gin, int pix,
                                                       int T0, int T1, int H, int W, bool need_m,
                                                       bool need_i, T* acc, T* s) {
    const T p0 = centre<T>(pix / W, H), p1 = centre<T>(pix % W, W);
    const Sample<T> sm = bilinear(t, T0, T1, coord(P.cu0, P.cu1, P.cu2, p0, p1),
                                  coord(P.cv0, P.cv1, P.cv2, p0, p1));
    if (!sm.inside) return;
    const T g = gin * a;
    if (need_m) {
        const T gu = sm.du * g, gv = sm.dv * g;
        s[0] += gu * p0; s[1] += gu * p1; s[2] += gu;
        s[3] += gv * p0; s[4] += gv * p1; s[5] += gv;
    }
    if (need_i) s[6] += gin * sm.val;
    if (acc) scatter_template(acc, T0, T1, sm, g);
}

// Matrix (top two rows) and intensity gradients: warp sums, written without atomics.
// Template gradients: per-block shared-memory sums (all the block's canvases show the
// same template), then one global atomic per template pixel and block.
// g_t must be zeroed by the caller; any of g_t, g_m, g_i may be null (not needed).
template <typename T>
__device__ void render_backward(const T* __restrict__ tmpl, const T* __restrict__ m,
                                const T* __restrict__ inten, const T* __restrict__ gy,
                                T* g_t, T* g_m, T* g_i,
                                int B, int K, int T0, int T1, int H, int W, int use_shared) {
    extern __shared__ unsigned char smem_raw[];
    T* acc_s = reinterpret_cast<T*>(smem_raw);
    const int k = blockIdx.x;
    const int TT = T0 * T1, N = H * W;
    const bool need_t = g_t != nullptr, need_m = g_m != nullptr, need_i = g_i != nullptr;
    T* acc = (need_t && use_shared) ? acc_s : (need_t ? g_t + (long long)k * TT : nullptr);
    if (need_t && use_shared)
        for (int i = threadIdx.x; i < TT; i += blockDim.x) acc_s[i] = (T)0;
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const T* t = tmpl + (long long)k * TT;
    const T t0 = (T)T0, t1 = (T)T1;
    for (int b = blockIdx.y * nwarps + warp; b < B; b += gridDim.y * nwarps) {
        const long long bk = (long long)b * K + k;
        const Pose<T> P = load_pose(m + bk * 9, T0, T1);
        const T a = inten[bk];
        T s[7] = {0, 0, 0, 0, 0, 0, 0};
        if (P.finite) {
            for (int pix = lane; pix < N; pix += 32)
                backward_pixel(t, P, a, gy[bk * N + pix], pix, T0, T1, H, W, need_m, need_i, acc, s);
        }
#pragma unroll
        for (int j = 0; j < 7; ++j) s[j] = warp_sum(s[j]);
        if (lane == 0) {
            const T bad = qnan_<T>();   // a non-finite pose: NaN gradients, like its NaN image
            if (need_m) {
                T* gm = g_m + bk * 9;
                gm[0] = P.finite ? t0 * s[0] : bad; gm[1] = P.finite ? t0 * s[1] : bad;
                gm[2] = P.finite ? t0 * s[2] : bad;
                gm[3] = P.finite ? t1 * s[3] : bad; gm[4] = P.finite ? t1 * s[4] : bad;
                gm[5] = P.finite ? t1 * s[5] : bad;
                gm[6] = gm[7] = gm[8] = (T)0;   // the third row is ignored by the op
            }
            if (need_i) g_i[bk] = P.finite ? s[6] : bad;
        }
    }
    if (need_t && use_shared) {
        __syncthreads();
        for (int i = threadIdx.x; i < TT; i += blockDim.x)
            if (acc_s[i] != (T)0) atomicAdd(&g_t[(long long)k * TT + i], acc_s[i]);
    }
}

// -- fused: render -> maxSemiSoft over k -> squared error against a target ----------
// One block per image (grid-stride), each thread up to RENDER_PPT pixels. Pass 1 keeps,
// per pixel, the running max and sum of maxSemiSoft (online softmax) and the loss slope
// 2 (y - target); pass 2 re-renders each capsule and sends the slope through the
// softmax weight into templates (shared sums), matrices and intensities (block sums).
// Shared memory: templates, template gradients (K T0 T1 each) and 32 x 8 scratch.
// loss_b gets each image's squared error; image (may be null) the maxSemiSoft image.
template <typename T>
__device__ void render_mss_se(const T* __restrict__ tmpl, const T* __restrict__ m,
                              const T* __restrict__ inten, const T* __restrict__ target, T beta,
                              T* image, T* loss_b, T* g_t, T* g_m, T* g_i,
                              int B, int K, int T0, int T1, int H, int W) {
    extern __shared__ unsigned char smem_raw[];
    T* s_t = reinterpret_cast<T*>(smem_raw);
    const int TT = T0 * T1, N = H * W;
    T* s_g = s_t + K * TT;
    T* red = s_g + K * TT;
    for (int i = threadIdx.x; i < K * TT; i += blockDim.x) { s_t[i] = tmpl[i]; s_g[i] = (T)0; }
    __syncthreads();
    const T t0 = (T)T0, t1 = (T)T1;
    for (int b = blockIdx.x; b < B; b += gridDim.x) {
        T mx[RENDER_PPT], sm[RENDER_PPT], gyv[RENDER_PPT];
        T lsum[1] = {0};
#pragma unroll
        for (int q = 0; q < RENDER_PPT; ++q) {
            const int pix = threadIdx.x + q * blockDim.x;
            mx[q] = (T)0; sm[q] = (T)1; gyv[q] = (T)0;
            if (pix >= N) continue;
            const T p0 = centre<T>(pix / W, H), p1 = centre<T>(pix % W, W);
            T mq = -inf_<T>(), sq = (T)0;
            for (int k = 0; k < K; ++k) {
                const long long bk = (long long)b * K + k;
                const Pose<T> P = load_pose(m + bk * 9, T0, T1);
                T a;
                if (P.finite) {
                    const Sample<T> s = bilinear(s_t + k * TT, T0, T1, coord(P.cu0, P.cu1, P.cu2, p0, p1),
                                                 coord(P.cv0, P.cv1, P.cv2, p0, p1));
                    a = s.val * inten[bk];
                } else {
                    a = qnan_<T>();
                }
                if (a > mq) { sq = sq * exp_(beta * (mq - a)) + (T)1; mq = a; }
                else sq += exp_(beta * (a - mq));     // NaN falls through here and spreads
            }
            const T y = mq + log_(sq / (T)K) / beta;
            const T r = y - target[(long long)b * N + pix];
            if (image) image[(long long)b * N + pix] = y;
            lsum[0] += r * r;
            mx[q] = mq; sm[q] = sq; gyv[q] = (T)2 * r;
        }
        block_sum<T, 1>(lsum, red);
        if (threadIdx.x == 0) loss_b[b] = lsum[0];
        for (int k = 0; k < K; ++k) {
            const long long bk = (long long)b * K + k;
            const Pose<T> P = load_pose(m + bk * 9, T0, T1);
            const T a = inten[bk];
            T s[7] = {0, 0, 0, 0, 0, 0, 0};
            if (P.finite) {
#pragma unroll
                for (int q = 0; q < RENDER_PPT; ++q) {
                    const int pix = threadIdx.x + q * blockDim.x;
                    if (pix >= N) continue;
                    const T p0 = centre<T>(pix / W, H), p1 = centre<T>(pix % W, W);
                    const Sample<T> sp = bilinear(s_t + k * TT, T0, T1, coord(P.cu0, P.cu1, P.cu2, p0, p1),
                                                  coord(P.cv0, P.cv1, P.cv2, p0, p1));
                    if (!sp.inside) continue;
                    const T w = exp_(beta * (sp.val * a - mx[q])) / sm[q];   // softmax weight
                    const T ga = gyv[q] * w;            // d loss / d contribution
                    const T g = ga * a;                 // d loss / d template value
                    const T gu = sp.du * g, gv = sp.dv * g;
                    s[0] += gu * p0; s[1] += gu * p1; s[2] += gu;
                    s[3] += gv * p0; s[4] += gv * p1; s[5] += gv;
                    s[6] += ga * sp.val;
                    scatter_template(s_g + k * TT, T0, T1, sp, g);
                }
            }
            block_sum<T, 7>(s, red);
            if (threadIdx.x == 0) {
                const T bad = qnan_<T>();
                T* gm = g_m + bk * 9;
                gm[0] = P.finite ? t0 * s[0] : bad; gm[1] = P.finite ? t0 * s[1] : bad;
                gm[2] = P.finite ? t0 * s[2] : bad;
                gm[3] = P.finite ? t1 * s[3] : bad; gm[4] = P.finite ? t1 * s[4] : bad;
                gm[5] = P.finite ? t1 * s[5] : bad;
                gm[6] = gm[7] = gm[8] = (T)0;
                g_i[bk] = P.finite ? s[6] : bad;
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < K * TT; i += blockDim.x)
        if (s_g[i] != (T)0) atomicAdd(&g_t[i], s_g[i]);
}

#define RENDER_KERNELS(SUFFIX, T)                                                          \
extern "C" __global__ void render_forward_##SUFFIX(const T* tmpl, const T* m, const T* inten, \
        T* y, int B, int K, int T0, int T1, int H, int W) {                                 \
    render_forward<T>(tmpl, m, inten, y, B, K, T0, T1, H, W);                               \
}                                                                                           \
extern "C" __global__ void render_backward_##SUFFIX(const T* tmpl, const T* m, const T* inten, \
        const T* gy, T* g_t, T* g_m, T* g_i, int B, int K, int T0, int T1, int H, int W,    \
        int use_shared) {                                                                   \
    render_backward<T>(tmpl, m, inten, gy, g_t, g_m, g_i, B, K, T0, T1, H, W, use_shared);  \
}                                                                                           \
extern "C" __global__ void render_mss_se_##SUFFIX(const T* tmpl, const T* m, const T* inten, \
        const T* target, T beta, T* image, T* loss_b, T* g_t, T* g_m, T* g_i,               \
        int B, int K, int T0, int T1, int H, int W) {                                       \
    render_mss_se<T>(tmpl, m, inten, target, beta, image, loss_b, g_t, g_m, g_i,            \
                     B, K, T0, T1, H, W);                                                   \
}

RENDER_KERNELS(f32, float)
RENDER_KERNELS(f64, double)
