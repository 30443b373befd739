//! The CUDA backend's kernels, as CUDA C compiled by NVRTC at start-up.
//!
//! Header-free on purpose: NVRTC 13 ships no `cuda_fp16.h`/`cuda_bf16.h`,
//! so bf16 is widened by a shift and f16 by a PTX `cvt`; all arithmetic is
//! f32. Two modules:
//!
//! - [`COMMON`]: every element-wise, norm, GEMV and copy kernel, with one
//!   entry point per weight dtype where a kernel reads weights (`_f32`,
//!   `_f16`, `_bf16` suffixes), compiled once per process;
//! - [`ATTENTION`]: paged attention and the split-KV reduce, specialised by
//!   `#define`s to the model's head dimension ([`attention_defines`]), so
//!   each lane's share of a head lives in registers.
//!
//! Entry points are `extern "C"` (no name lowering); [`COMMON_ENTRIES`] and
//! [`ATTENTION_ENTRIES`] list them, and a test checks each is defined
//! exactly once in its source.

/// Threads per block of the row kernels (norms, element-wise ops).
pub const ROW_THREADS: u32 = 256;
/// Output rows of a GEMV per block: one warp each.
pub const GEMV_ROWS_PER_BLOCK: u32 = 8;
/// The largest number of input rows the GEMV kernel takes in one launch
/// (each lane keeps one accumulator per input row). Bigger batches go to
/// cuBLAS.
pub const GEMV_MAX_M: usize = 16;

const PRELUDE: &str = r#"
typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ float bf16_to_f32(u16 b) {
    return __uint_as_float(((u32)b) << 16);
}
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
/* Round to nearest even; NaN stays NaN. */
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}
__device__ __forceinline__ float load_f32(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load_f16(const u16* p, long i) { return f16_to_f32(p[i]); }
__device__ __forceinline__ float load_bf16(const u16* p, long i) { return bf16_to_f32(p[i]); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Sum over a block of blockDim.x threads (a multiple of 32, at most 1024). */
__device__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    v = lane < warps ? part[lane] : 0.0f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}
"#;

const COMMON_BODY: &str = r#"
#define GEMV_MAX_M 16

/* out[r, :] = table[ids[r], :] widened to f32. grid: rows. */
#define EMBEDDING(NAME, T, LOAD)                                                  \
extern "C" __global__ void NAME(const T* table, const u32* ids, float* out,       \
                                int rows, int cols) {                             \
    int r = blockIdx.x;                                                           \
    if (r >= rows) return;                                                        \
    const T* src = table + (long)ids[r] * cols;                                   \
    for (int c = threadIdx.x; c < cols; c += blockDim.x)                          \
        out[(long)r * cols + c] = LOAD(src, c);                                   \
}
EMBEDDING(embedding_f32, float, load_f32)
EMBEDDING(embedding_f16, u16, load_f16)
EMBEDDING(embedding_bf16, u16, load_bf16)

/* out = x * rsqrt(mean(x^2) + eps) * w, per row. grid: rows. */
extern "C" __global__ void rms_norm(const float* x, int xs, const float* w, float* out,
                                    int os, int cols, float eps) {
    const float* row = x + (long)blockIdx.x * xs;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += row[c] * row[c];
    ss = block_sum(ss);
    float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    float* o = out + (long)blockIdx.x * os;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = row[c] * inv * w[c];
}

/* RMSNorm of each head_dim slice, in place. One warp per (row, head):
   grid (rows, heads), 32 threads. */
extern "C" __global__ void rms_norm_heads(float* x, int xs, const float* w, int head_dim,
                                          float eps) {
    float* h = x + (long)blockIdx.x * xs + (long)blockIdx.y * head_dim;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < head_dim; c += 32) ss += h[c] * h[c];
    ss = warp_sum(ss);
    float inv = 1.0f / sqrtf(ss / (float)head_dim + eps);
    __syncwarp();
    for (int c = threadIdx.x; c < head_dim; c += 32) h[c] = h[c] * inv * w[c];
}

/* Unpacks one 16-byte load of weights to f32: 8 bf16/f16 or 4 f32. */
#define UNPACK16(NAME, WIDEN)                                                     \
__device__ __forceinline__ void NAME(uint4 u, float* o) {                         \
    u32 w[4] = {u.x, u.y, u.z, u.w};                                              \
    _Pragma("unroll")                                                             \
    for (int i = 0; i < 4; i++) {                                                 \
        o[2 * i] = WIDEN((u16)(w[i] & 0xffffu));                                  \
        o[2 * i + 1] = WIDEN((u16)(w[i] >> 16));                                  \
    }                                                                             \
}
UNPACK16(unpack_bf16, bf16_to_f32)
UNPACK16(unpack_f16, f16_to_f32)
__device__ __forceinline__ void unpack_f32(uint4 u, float* o) {
    o[0] = __uint_as_float(u.x);
    o[1] = __uint_as_float(u.y);
    o[2] = __uint_as_float(u.z);
    o[3] = __uint_as_float(u.w);
}

/* out[i, j] = sum_k x[i, k] w[j, k] (+ bias[j]) for m <= GEMV_MAX_M input
   rows. One warp per output feature j (8 per block): the weight row is
   read once, in 16-byte loads of VEC values per lane when k allows (the
   row then starts 16-byte aligned), for all m inputs; f32 accumulation.
   grid: ceil(n / 8), 256 threads. */
#define GEMV(NAME, T, LOAD, VEC, UNPACK)                                          \
extern "C" __global__ void NAME(const T* w, const float* x, int xs,               \
                                const float* bias, float* out, int os,            \
                                int m, int n, int k) {                            \
    int lane = threadIdx.x & 31;                                                  \
    int j = blockIdx.x * 8 + (threadIdx.x >> 5);                                  \
    if (j >= n) return;                                                           \
    const T* wr = w + (long)j * k;                                                \
    float acc[GEMV_MAX_M];                                                        \
    _Pragma("unroll")                                                             \
    for (int i = 0; i < GEMV_MAX_M; i++) acc[i] = 0.0f;                           \
    int done = 0;                                                                 \
    if (k % VEC == 0) {                                                           \
        const uint4* w16 = (const uint4*)wr;                                      \
        int chunks = k / VEC;                                                     \
        for (int c = lane; c < chunks; c += 32) {                                 \
            float wv[VEC];                                                        \
            UNPACK(w16[c], wv);                                                   \
            _Pragma("unroll")                                                     \
            for (int i = 0; i < GEMV_MAX_M; i++) {                                \
                if (i < m) {                                                      \
                    const float* xr = x + (long)i * xs + (long)c * VEC;           \
                    float a = acc[i];                                             \
                    _Pragma("unroll")                                             \
                    for (int v = 0; v < VEC; v++) a = fmaf(wv[v], xr[v], a);      \
                    acc[i] = a;                                                   \
                }                                                                 \
            }                                                                     \
        }                                                                         \
        done = k;                                                                 \
    }                                                                             \
    for (int c = done + lane; c < k; c += 32) {                                   \
        float wv = LOAD(wr, c);                                                   \
        _Pragma("unroll")                                                         \
        for (int i = 0; i < GEMV_MAX_M; i++)                                      \
            if (i < m) acc[i] = fmaf(wv, x[(long)i * xs + c], acc[i]);            \
    }                                                                             \
    float b = bias ? bias[j] : 0.0f;                                              \
    _Pragma("unroll")                                                             \
    for (int i = 0; i < GEMV_MAX_M; i++) {                                        \
        if (i < m) {                                                              \
            float s = warp_sum(acc[i]);                                           \
            if (lane == 0) out[(long)i * os + j] = s + b;                         \
        }                                                                         \
    }                                                                             \
}
GEMV(gemv_f32, float, load_f32, 4, unpack_f32)
GEMV(gemv_f16, u16, load_f16, 8, unpack_f16)
GEMV(gemv_bf16, u16, load_bf16, 8, unpack_bf16)

/* A 16-bit copy of f32 activations, as cuBLAS's B operand: dense
   [rows, cols] out. grid: rows. */
extern "C" __global__ void cast_bf16(const float* x, int xs, u16* out, int cols) {
    const float* row = x + (long)blockIdx.x * xs;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(long)blockIdx.x * cols + c] = f32_to_bf16(row[c]);
}
extern "C" __global__ void cast_f16(const float* x, int xs, u16* out, int cols) {
    const float* row = x + (long)blockIdx.x * xs;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(long)blockIdx.x * cols + c] = f32_to_f16(row[c]);
}
/* A dense f32 copy of a strided view. grid: rows. */
extern "C" __global__ void copy_rows(const float* x, int xs, float* out, int cols) {
    const float* row = x + (long)blockIdx.x * xs;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(long)blockIdx.x * cols + c] = row[c];
}

/* out[r, :] += bias. grid: rows. */
extern "C" __global__ void add_bias(float* out, int os, const float* bias, int cols) {
    float* row = out + (long)blockIdx.x * os;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) row[c] += bias[c];
}

/* Rotary embedding in place. table row p: cos in [0, half), sin in
   [half, head_dim). Pair i is (i, i + half), or (2i, 2i + 1) when
   interleaved. grid: rows, one thread per (head, pair). */
extern "C" __global__ void rope(float* x, int xs, const float* table, const u32* positions,
                                int heads, int head_dim, int interleaved) {
    int half = head_dim / 2;
    const float* t = table + (long)positions[blockIdx.x] * head_dim;
    float* row = x + (long)blockIdx.x * xs;
    for (int p = threadIdx.x; p < heads * half; p += blockDim.x) {
        int h = p / half, i = p % half;
        float* hp = row + (long)h * head_dim;
        int ia = interleaved ? 2 * i : i;
        int ib = interleaved ? 2 * i + 1 : i + half;
        float a = hp[ia], b = hp[ib], c = t[i], s = t[half + i];
        hp[ia] = a * c - b * s;
        hp[ib] = b * c + a * s;
    }
}

/* out = silu(gate) * up for gate_up = [gate | up]. grid: rows. */
extern "C" __global__ void silu_mul(const float* gu, int gs, float* out, int inter) {
    const float* row = gu + (long)blockIdx.x * gs;
    for (int c = threadIdx.x; c < inter; c += blockDim.x) {
        float g = row[c];
        out[(long)blockIdx.x * inter + c] = g / (1.0f + expf(-g)) * row[inter + c];
    }
}

/* x += y. grid: rows. */
extern "C" __global__ void add_assign(float* x, int xs, const float* y, int ys, int cols) {
    float* xr = x + (long)blockIdx.x * xs;
    const float* yr = y + (long)blockIdx.x * ys;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) xr[c] += yr[c];
}

/* Each token's K and V rows to its slot; slot 0xffffffff is skipped
   (padding). grid: rows. */
extern "C" __global__ void write_kv(float* kc, float* vc, const float* k, int ks,
                                    const float* v, int vs, const u32* slots, int width) {
    u32 slot = slots[blockIdx.x];
    if (slot == 0xffffffffu) return;
    const float* kr = k + (long)blockIdx.x * ks;
    const float* vr = v + (long)blockIdx.x * vs;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        kc[(long)slot * width + c] = kr[c];
        vc[(long)slot * width + c] = vr[c];
    }
}

/* out[i, :] = x[rows[i], :]. grid: output rows. */
extern "C" __global__ void select_rows(const float* x, int xs, const u32* rows, float* out,
                                       int cols) {
    const float* src = x + (long)rows[blockIdx.x] * xs;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(long)blockIdx.x * cols + c] = src[c];
}

/* Whether (v, i) beats (bv, bi) for argmax: larger, or equal with a
   lower index; NaN never beats and is beaten by anything. */
__device__ __forceinline__ bool beats(float v, int i, float bv, int bi) {
    return v == v && (bv != bv || v > bv || (v == bv && i < bi));
}
__device__ __forceinline__ void argmax_warp(float* bv, int* bi) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, *bi, o);
        if (beats(ov, oi, *bv, *bi)) { *bv = ov; *bi = oi; }
    }
}

/* out[r] = the index of row r's largest value, the first of equal ones;
   0 when the row's first value is NaN or every value is (the sampler's
   scan from index 0 gives the same). grid: rows, blockDim a multiple of
   32. */
extern "C" __global__ void argmax_rows(const float* x, int xs, int cols, u32* out) {
    const float* row = x + (long)blockIdx.x * xs;
    float bv = __int_as_float(0x7fc00000);
    int bi = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = row[c];
        if (beats(v, c, bv, bi)) { bv = v; bi = c; }
    }
    argmax_warp(&bv, &bi);
    __shared__ float sv[32];
    __shared__ int si[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        bv = lane < warps ? sv[lane] : __int_as_float(0x7fc00000);
        bi = lane < warps ? si[lane] : 0x7fffffff;
        argmax_warp(&bv, &bi);
        if (lane == 0) {
            float first = row[0];
            out[blockIdx.x] = (first != first || bi == 0x7fffffff) ? 0u : (u32)bi;
        }
    }
}

/* Reads n float4s and keeps the sum, for the read-bandwidth measurement. */
extern "C" __global__ void read_bandwidth(const float4* p, long n, float* sink) {
    float acc = 0.0f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        float4 v = p[i];
        acc += v.x + v.y + v.z + v.w;
    }
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0 && acc == 1234.5f) sink[0] = acc;
}
"#;

const ATTENTION_BODY: &str = r#"
/* HEAD_DIM is defined by the host; each lane owns DIMS_PER_LANE of a head. */
#define DIMS_PER_LANE ((HEAD_DIM + 31) / 32)
#define NEG_INF (-__int_as_float(0x7f800000))

/* Per-sequence record, as packed by the host (5 u32 each). */
#define SEQ_TOKEN_START 0
#define SEQ_NUM_TOKENS 1
#define SEQ_CONTEXT_LEN 2
#define SEQ_TABLE_START 3
#define SEQ_NUM_BLOCKS 4

/* One head's output row: the lane's dims of acc / l (0 when l is 0). */
__device__ __forceinline__ void store_head(float* orow, const float* acc, float l, int lane) {
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    #pragma unroll
    for (int i = 0; i < DIMS_PER_LANE; i++) {
        int d = lane + 32 * i;
        if (d < HEAD_DIM) orow[d] = acc[i] * inv;
    }
}

/* Causal paged attention, one warp per (query token, query head), warps of
   one block sharing a kv head: grid (tokens, kv_heads, segments), block
   32 * group threads. A query at position p sees keys 0..=p of its
   sequence, read through the block table. With segments > 1 the keys are
   split into equal ranges ("flash decoding"): each segment writes its
   running max, sum and unnormalised output to `part_*`, and
   `attention_reduce` merges them. Online softmax in f32; each lane scores
   one key of a chunk of 32, then every lane adds its dims of the chunk's
   values. */
extern "C" __global__ void __launch_bounds__(1024) paged_attention(
        const float* q, int qs, const float* kc, const float* vc, int kv_width,
        const u32* positions, const u32* token_seq, const u32* seqs,
        const u32* block_tables, int block_size, int group, float scale,
        float* out, int os, float* part_out, float* part_ml) {
    int t = blockIdx.x, g = blockIdx.y, seg = blockIdx.z, nseg = gridDim.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int h = g * group + warp;
    const u32* seq = seqs + 5 * token_seq[t];
    const u32* table = block_tables + seq[SEQ_TABLE_START];
    int num_keys = (int)positions[t] + 1;
    int per_seg = (num_keys + nseg - 1) / nseg;
    int k0 = seg * per_seg;
    int k1 = min(num_keys, k0 + per_seg);

    float qv[DIMS_PER_LANE], acc[DIMS_PER_LANE];
    const float* qrow = q + (long)t * qs + (long)h * HEAD_DIM;
    #pragma unroll
    for (int i = 0; i < DIMS_PER_LANE; i++) {
        int d = lane + 32 * i;
        qv[i] = d < HEAD_DIM ? qrow[d] : 0.0f;
        acc[i] = 0.0f;
    }
    __shared__ float qsh[32][HEAD_DIM];
    #pragma unroll
    for (int i = 0; i < DIMS_PER_LANE; i++) {
        int d = lane + 32 * i;
        if (d < HEAD_DIM) qsh[warp][d] = qv[i];
    }
    __syncwarp();

    float m = NEG_INF, l = 0.0f;
    long head_off = (long)g * HEAD_DIM;
    for (int c0 = k0; c0 < k1; c0 += 32) {
        int key = c0 + lane;
        float s = NEG_INF;
        long slot = 0;
        if (key < k1) {
            slot = (long)table[key / block_size] * block_size + key % block_size;
            const float* kr = kc + slot * kv_width + head_off;
            float dot = 0.0f;
#if HEAD_DIM % 4 == 0
            /* 16-byte loads of the key row (its start is 16-byte aligned:
               kv_width and the head offset are multiples of HEAD_DIM);
               the same products in the same order as the scalar loop. */
            const float4* kr4 = (const float4*)kr;
            #pragma unroll 4
            for (int d4 = 0; d4 < HEAD_DIM / 4; d4++) {
                float4 kv = kr4[d4];
                const float* qd = &qsh[warp][4 * d4];
                dot = fmaf(qd[0], kv.x, dot);
                dot = fmaf(qd[1], kv.y, dot);
                dot = fmaf(qd[2], kv.z, dot);
                dot = fmaf(qd[3], kv.w, dot);
            }
#else
            #pragma unroll 8
            for (int d = 0; d < HEAD_DIM; d++) dot = fmaf(qsh[warp][d], kr[d], dot);
#endif
            s = dot * scale;
        }
        float cm = warp_max(s);
        float m_new = fmaxf(m, cm);
        float p = key < k1 ? expf(s - m_new) : 0.0f;
        float corr = expf(m - m_new);
        l = l * corr + warp_sum(p);
        #pragma unroll
        for (int i = 0; i < DIMS_PER_LANE; i++) acc[i] *= corr;
        int n = min(32, k1 - c0);
        for (int j = 0; j < n; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
            long sj = __shfl_sync(0xffffffffu, slot, j);
            const float* vr = vc + sj * kv_width + head_off;
            #pragma unroll
            for (int i = 0; i < DIMS_PER_LANE; i++) {
                int d = lane + 32 * i;
                if (d < HEAD_DIM) acc[i] = fmaf(pj, vr[d], acc[i]);
            }
        }
        m = m_new;
    }
    if (nseg == 1) {
        store_head(out + (long)t * os + (long)h * HEAD_DIM, acc, l, lane);
    } else {
        int heads = gridDim.y * group;
        long pi = ((long)t * heads + h) * nseg + seg;
        float* po = part_out + pi * HEAD_DIM;
        #pragma unroll
        for (int i = 0; i < DIMS_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < HEAD_DIM) po[d] = acc[i];
        }
        if (lane == 0) {
            part_ml[2 * pi] = m;
            part_ml[2 * pi + 1] = l;
        }
    }
}

/* Merges the segments of paged_attention. grid (tokens, heads), 32 threads. */
extern "C" __global__ void attention_reduce(const float* part_out, const float* part_ml,
                                            int nseg, float* out, int os) {
    int t = blockIdx.x, h = blockIdx.y, heads = gridDim.y, lane = threadIdx.x;
    long base = ((long)t * heads + h) * nseg;
    float m = NEG_INF;
    for (int s = 0; s < nseg; s++)
        if (part_ml[2 * (base + s) + 1] > 0.0f) m = fmaxf(m, part_ml[2 * (base + s)]);
    float l = 0.0f;
    float acc[DIMS_PER_LANE];
    #pragma unroll
    for (int i = 0; i < DIMS_PER_LANE; i++) acc[i] = 0.0f;
    for (int s = 0; s < nseg; s++) {
        float ls = part_ml[2 * (base + s) + 1];
        if (ls <= 0.0f) continue;
        float w = expf(part_ml[2 * (base + s)] - m);
        l += ls * w;
        const float* po = part_out + (base + s) * HEAD_DIM;
        #pragma unroll
        for (int i = 0; i < DIMS_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < HEAD_DIM) acc[i] += po[d] * w;
        }
    }
    store_head(out + (long)t * os + (long)h * HEAD_DIM, acc, l, lane);
}
"#;

/// Entry points of [`common_source`].
pub const COMMON_ENTRIES: &[&str] = &[
    "embedding_f32",
    "embedding_f16",
    "embedding_bf16",
    "rms_norm",
    "rms_norm_heads",
    "gemv_f32",
    "gemv_f16",
    "gemv_bf16",
    "cast_bf16",
    "cast_f16",
    "copy_rows",
    "add_bias",
    "rope",
    "silu_mul",
    "add_assign",
    "write_kv",
    "select_rows",
    "argmax_rows",
    "read_bandwidth",
];

/// Entry points of [`attention_source`].
pub const ATTENTION_ENTRIES: &[&str] = &["paged_attention", "attention_reduce"];

/// The source of the module every model uses.
pub fn common_source() -> String {
    format!("{PRELUDE}{COMMON_BODY}")
}

/// The `#define`s that specialise the attention module.
pub fn attention_defines(head_dim: usize) -> Vec<(String, String)> {
    vec![("HEAD_DIM".into(), head_dim.to_string())]
}

/// The attention module's source for one head dimension.
pub fn attention_source(head_dim: usize) -> String {
    let defines: String =
        attention_defines(head_dim).iter().map(|(k, v)| format!("#define {k} {v}\n")).collect();
    format!("{defines}{PRELUDE}{ATTENTION_BODY}")
}

/// The largest query-head group one attention block serves (one warp per
/// head of the group, at most 32 warps).
pub const MAX_GROUP: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    fn defined_entries(src: &str) -> Vec<String> {
        // `extern "C" __global__ void NAME(` directly, or through a
        // generator macro invoked as `MACRO(NAME, ...)`.
        let mut out = Vec::new();
        for line in src.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("extern \"C\" __global__ void ") {
                let rest = rest.strip_prefix("__launch_bounds__(1024) ").unwrap_or(rest);
                let name = rest.split('(').next().unwrap_or_default();
                if name != "NAME" {
                    out.push(name.to_owned());
                }
            } else if let Some((mac, args)) = line.split_once('(') {
                if ["EMBEDDING", "GEMV"].contains(&mac) {
                    out.push(args.split(',').next().unwrap_or_default().to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn every_entry_point_is_defined_once() {
        for (src, entries) in
            [(common_source(), COMMON_ENTRIES), (attention_source(64), ATTENTION_ENTRIES)]
        {
            let mut defined = defined_entries(&src);
            defined.sort();
            let mut listed: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
            listed.sort();
            assert_eq!(defined, listed);
        }
    }

    #[test]
    fn sources_include_nothing() {
        assert!(!common_source().contains("#include"));
        assert!(!attention_source(128).contains("#include"));
    }

    #[test]
    fn attention_source_is_specialised() {
        assert!(attention_source(128).starts_with("#define HEAD_DIM 128\n"));
        assert_ne!(attention_source(64), attention_source(128));
    }

    #[test]
    fn the_gemv_bound_matches_the_source() {
        assert!(COMMON_BODY.contains(&format!("#define GEMV_MAX_M {GEMV_MAX_M}\n")));
    }
}
