// Fused 2D multi-head attention with relative logits, forward and backward, for CPU.
//
// For one (batch, head) pair of an H x W grid, N = H * W positions, queries q (N, dk), keys k
// (N, dk), values v (N, dv) and the relative embedding tables e_h (2 H_max - 1, dk) and e_w
// (2 W_max - 1, dk), with query i at grid row y_i, column x_i (i = y_i * W + x_i):
//
//   s[i, j] = q_i . k_j + q_i . e_h[y_j - y_i + H_max - 1] + q_i . e_w[x_j - x_i + W_max - 1]
//   p[i, :] = softmax(s[i, :]),  out_i = sum_j p[i, j] v_j
//
// The (N, N) logits are never stored: a few query rows are processed at a time, and their
// logits, weights and gradients live in row buffers that stay in cache. The relative logits of a
// query are H + W dot products with the tables, added by broadcasting. The backward pass
// recomputes the weights from each row's max and 1 / sum of exp (the `stats` output). Each
// (batch, head) pair is one unit of work for TensorFlow's CPU thread pool.
//
// Tensors are position-major, as a channels-last feature map splits into heads without a
// transpose: q, k (B, H, W, Nh, dk), v and out (B, H, W, Nh, dv).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#if defined(__clang__) && defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace aa_keras {
namespace {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using Status = absl::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Query rows processed together: they share every load of a key or value row.
constexpr int kRows = 4;
// Where the keys are deeper than one chunk (kChunk channels), query rows processed together by
// the wide path: their logits in register tiles over the whole depth (ProductTile) of kWideRows
// rows x 2 vectors of keys, each loaded key vector used 8 times, not 4 (tiles of 4 rows x 2 with
// 16 vector registers: AddTileProducts), the rest of their work in two groups of kRows. Each
// path has its own copy of the ops' unit loops (WithGroupRows).
constexpr int kWideRows = 2 * kRows;
// Query rows whose weights P and logit gradients dS the backward pass keeps before it adds
// their products into the key and value gradients: dK^T += Q^T dS, dV^T += dO^T P, as
// register-tiled matrix products over the block, each dK^T / dV^T tile loaded and stored once
// per block instead of once per kRows queries. As many rows (a multiple of the row group, kRows
// or kWideRows, at most kMaxBlock) as fit the two buffers in kBlockBytes, to stay in L2 at large
// grids; the backward pass then groups the queries, and recomputes their logits, as the forward
// pass did. (The wide path adds dV^T += dO^T P as it computes P, row group by row group: see
// BackwardRows.)
constexpr int kMaxBlock = 64;
#ifndef AA_BLOCK_BYTES
#define AA_BLOCK_BYTES (1024 * 1024)
#endif
constexpr int64_t kBlockBytes = AA_BLOCK_BYTES;
// Floats per vector: a register's with AVX-512 (32 of them), else 8, an AVX2 register's (16 of
// them; other targets split a vector into their own registers). Rows are padded to a multiple of
// it; padded logits are set to kPad, whose weight is negligible (see Exp), and padded key and
// value columns are 0. The register tiles below are sized by kVectorRegisters: tiles made for
// 32 registers spill on a 16-register target, where 16-float vectors made the kernel 4-12x
// slower than these (see benchmarks/results/NOTES_backward.md, eleventh pass).
#if defined(__AVX512F__)
#define AA_LANES 16
constexpr int kVectorRegisters = 32;
#else
#define AA_LANES 8
constexpr int kVectorRegisters = 16;
#endif
constexpr int kLanes = AA_LANES;
// Whether a multiply-add can broadcast a float from memory itself (AVX-512's embedded broadcast);
// with AVX2 a broadcast is an instruction of its own.
#if defined(__AVX512F__)
constexpr bool kBroadcastOperands = true;
#else
constexpr bool kBroadcastOperands = false;
#endif
constexpr float kPad = -1e30f;

// GCC/Clang vector extensions: the compiler maps them to the widest registers it has. Loads
// and stores go through float buffers: unaligned, and a vector type aliases its element type. Loads and
// stores go through float buffers, hence the unaligned and may-alias attributes.
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float))));
typedef uint32_t UVec __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float))));

inline Vec Load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void Store(float* p, Vec x) { *reinterpret_cast<Vec*>(p) = x; }
inline Vec Splat(float x) { return Vec{} + x; }

// Keeps a loaded vector in a register. GCC 12 folds a vector's load into each multiply-add that
// uses it, as a memory operand: a vector used by T rows is then loaded T times. An empty asm
// that takes x in a register makes it load x once; the arithmetic is unchanged. Where it pays
// was measured per loop with AVX-512 (see its callers); AVX2 builds apply it at the same loops
// (forward and gradient ops, three runs: 0.94-1.25x at dk = dv = 4 and 6 on 28x28 to 56x56
// grids, 17 of 18 figures at or above 1; 0.90-1.18x at the other shapes: NOTES_backward.md,
// twelfth pass). Other compilers and targets: nothing.
__attribute__((always_inline)) inline void LoadOnce(Vec& x) {
#if defined(__GNUC__) && defined(__AVX512F__)
  asm("" : "+v"(x));
#elif defined(__GNUC__) && defined(__AVX2__)
  asm("" : "+x"(x));
#else
  (void)x;
#endif
}

// The sum of the lanes: the upper half added onto the lower half until one lane is left (a
// fixed order, so results do not depend on the compiler). With __builtin_shufflevector (Clang,
// GCC 12+) the halves are register shuffles: GCC compiles the plain loop over a lane array to a
// loop through the stack. Compilers without it (GCC before 12) build the plain loop.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define AA_SHUFFLES 1
typedef float Eight __attribute__((vector_size(8 * sizeof(float))));
typedef float Four __attribute__((vector_size(4 * sizeof(float))));
// The sum's first step down to 8 lanes (none with 8-lane vectors).
inline Eight EightLanes(Vec x) {
#if AA_LANES == 16
  return __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  return x;
#endif
}
inline float Sum(Vec x) {
  const Eight h = EightLanes(x);
  const Four q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}
#else
inline float Sum(Vec x) {
  float lanes[kLanes];
  std::memcpy(lanes, &x, sizeof(lanes));
  for (int half = kLanes / 2; half > 0; half /= 2)
    for (int i = 0; i < half; ++i) lanes[i] += lanes[i + half];
  return lanes[0];
}
#endif

// out[r] = Sum(x[r]) for r < R, with Sum's additions in Sum's order (bit-identical). For R = 8
// with shuffles: the 8 sums together, in whole vectors (after EightLanes, each of Sum's three
// steps for all rows in 2 shuffles and an addition per pair of vectors: 21 operations and a
// store with 8-float vectors, where 8 Sums take 64 and 8 stores).
template <int R>
__attribute__((always_inline)) inline void Sums(const Vec* x, float* out) {
#if defined(AA_SHUFFLES)
  if constexpr (R == 8) {
    // Rows r and r + 4 share a vector: [lanes 0-3 of row r's halves summed | row r + 4's].
    Eight pairs[4];
    for (int r = 0; r < 4; ++r) {
      const Eight a = EightLanes(x[r]), b = EightLanes(x[r + 4]);
      pairs[r] = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11) +
                 __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
    }
    // Each 4-lane group's q[0] + q[2] and q[1] + q[3], for rows (0, 1 | 4, 5) and (2, 3 | 6, 7).
    Eight quads[2];
    for (int i = 0; i < 2; ++i) {
      const Eight a = pairs[2 * i], b = pairs[2 * i + 1];
      quads[i] = __builtin_shufflevector(a, b, 0, 1, 8, 9, 4, 5, 12, 13) +
                 __builtin_shufflevector(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
    }
    // (q[0] + q[2]) + (q[1] + q[3]): rows 0-7 in order.
    const Eight sums = __builtin_shufflevector(quads[0], quads[1], 0, 2, 8, 10, 4, 6, 12, 14) +
                       __builtin_shufflevector(quads[0], quads[1], 1, 3, 9, 11, 5, 7, 13, 15);
    std::memcpy(out, &sums, sizeof(sums));
    return;
  }
#endif
  for (int r = 0; r < R; ++r) out[r] = Sum(x[r]);
}

// Lanes 0..count-1 of x, the others 0.
inline Vec FirstLanes(Vec x, int64_t count) {
#if AA_LANES == 16
  const IVec lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#else
  const IVec lane = {0, 1, 2, 3, 4, 5, 6, 7};
#endif
  return lane < static_cast<int32_t>(count) ? x : Vec{};
}

inline int64_t Padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// The slack invariant. Several loops work in whole kLanes-float vectors past the logical end
// of what they compute, and read or write up to kLanes - 1 floats beyond it:
//   - Logits writes each grid row of W logits as Padded(W) floats, so the last grid row of a
//     query reaches n - W + Padded(W) <= stride + kLanes - 1;
//   - RelativeLogitGradients reads the dS row the same way;
//   - RelativeLogits / RelativeGradients read (and write) Padded(L) entries of a window of a
//     transposed table (depth, length_t) that starts at offset <= length_t - L, so the last
//     depth row reaches past the table's end by up to kLanes - 1;
//   - the relative rows of a query are read as Padded(H) and Padded(W) floats.
// Every such buffer is allocated with that slack: rows with RowCapacity(stride), the transposed
// tables with kLanes floats after them, their gradients with TableGradientStride floats per
// channel, the relative rows padded. The lanes past the logical end hold garbage that is
// overwritten (the next grid row), masked (FirstLanes, the kPad padding) or never read back.
// scripts/kernel_asan.sh runs the kernel's tests under AddressSanitizer, which would report any
// access outside these allocations.
inline int64_t RowCapacity(int64_t stride) { return stride + kLanes; }

// 2^(i / 16) for i = 0..15, rounded to float.
alignas(64) constexpr float kExp2Sixteenths[16] = {
    0x1.000000p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fe0p+0f, 0x1.3dea64p+0f,
    0x1.4bfdaep+0f, 0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
    0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};

// kExp2Sixteenths[i & 15] for each lane: one register permute (vpermps) with AVX-512, two and
// a blend with AVX2 (GCC).
inline Vec Exp2Sixteenths(IVec i) {
#if defined(__clang__) && defined(__AVX512F__)
  return (Vec)_mm512_permutexvar_ps((__m512i)i, (__m512)Load(kExp2Sixteenths));
#elif defined(__clang__)
  Vec out;
  for (int lane = 0; lane < kLanes; ++lane) out[lane] = kExp2Sixteenths[i[lane] & 15];
  return out;
#elif AA_LANES == 16
  return __builtin_shuffle(Load(kExp2Sixteenths), i);  // GCC: indices modulo 16
#else
  // GCC: indices modulo 16 into the two 8-float halves of the table.
  return __builtin_shuffle(Load(kExp2Sixteenths), Load(kExp2Sixteenths + kLanes), i);
#endif
}

// exp(x) for x <= 0 (the weights' exp(logit - max)): x = (16 e + i) ln2 / 16 + r with
// |r| <= ln2 / 32, exp(x) = s (1 + expm1(r)) with s = 2^e 2^(i / 16): expm1(r) by its Taylor
// polynomial of degree 3 (truncation error below 1e-8 relative), 2^(i / 16) from a 16-entry
// table (a register permute), 2^e added to the table entry's exponent bits (exact: entry and
// result are normal floats). Relative error at most 1.2e-7 (1 to 2 ulp; mean 3e-8). It takes
// 7 operations on the multiply-add pipes where a degree-7 polynomial over |r| <= ln2 / 2 takes
// 11: with small heads the exponentials are about half of the kernel's arithmetic. Inputs
// below -87 give 0 (exp(-87) ~ 1.6e-38: the float32 softmax loses such weights too, and an
// exact 0 keeps 0 * inf = NaN where TensorFlow's softmax has it). NaN gives NaN (the
// polynomial is NaN, whatever the scale) and +inf gives NaN (inf - inf), as they do in the
// softmax of the TensorFlow-op path: the comparisons are written so that NaN lanes fail them
// and keep their value.
inline Vec Exp(Vec x) {
  const auto underflow = x < -87.0f;
  x = underflow ? Splat(-87.0f) : x;
  // Adding 1.5 * 2^23 rounds to the nearest integer m = 16 e + i, which ends up in the low
  // mantissa bits.
  const float kRound = 12582912.0f;
  const Vec shifted = x * 23.0831203460693359375f + kRound;  // 16 / ln2
  const Vec m = shifted - kRound;
  // ln2 / 16 split in two so that m * hi is exact (|m| <= 2009, hi has 12 significant bits).
  const Vec r = (x - m * 0.0433197021484375f) - m * 1.99663645616965e-6f;
  Vec p = Splat(1.0f / 6.0f);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  const Vec expm1_r = p * r;
  const IVec m_int = (IVec)shifted - (IVec)Splat(kRound);
  const Vec scale = (Vec)((UVec)Exp2Sixteenths(m_int) + ((UVec)(m_int >> 4) << 23));
  // scale * exp(r) as scale + scale * (exp(r) - 1): one rounding, in the multiply-add.
  return underflow ? Vec{} : scale * expm1_r + scale;
}

// The depth loops below run over chunks of at most kChunk channels whose size is a compile-time
// constant, so that a chunk's T x D coefficients or accumulators stay in vector registers.
constexpr int kChunk = 6;

// Calls fn(integral_constant<int, D>, first) for each chunk [first, first + D) of depth.
//
// This, RowDots and the chunk bodies of RowDots and SoftmaxTimesValues are always inlined: the
// wide path calls them as well, and GCC, which inlines a function called once whatever its size,
// then outlined them (by its size limits) in the kRows path too, which made the depths <= kChunk
// 2-8% slower (f6a6efd).
template <typename Fn>
__attribute__((always_inline)) inline void ForEachDepthChunk(int64_t depth, Fn fn) {
  for (int64_t first = 0; first < depth; first += kChunk) {
    switch (std::min<int64_t>(kChunk, depth - first)) {
      case 1: fn(std::integral_constant<int, 1>(), first); break;
      case 2: fn(std::integral_constant<int, 2>(), first); break;
      case 3: fn(std::integral_constant<int, 3>(), first); break;
      case 4: fn(std::integral_constant<int, 4>(), first); break;
      case 5: fn(std::integral_constant<int, 5>(), first); break;
      default: fn(std::integral_constant<int, 6>(), first); break;
    }
  }
}

// rows[t][j] += sum_d a[t][d] * bt[d * stride + j] for t < T, j < stride: the logits of T
// queries against the transposed keys bt (depth, stride), or dO v^T against the values.
template <int T>
void AddProducts(float* const* rows, const float* const* a, const float* bt, int64_t depth, int64_t stride) {
  ForEachDepthChunk(depth, [&](auto chunk, int64_t first) {
    constexpr int D = decltype(chunk)::value;
    float coef[T][D];
    for (int t = 0; t < T; ++t)
      for (int d = 0; d < D; ++d) coef[t][d] = a[t][first + d];
    const float* b = bt + first * stride;
    for (int64_t j = 0; j < stride; j += kLanes) {
      // The products are summed before they are added to rows (the relative logits), which may
      // be large: one rounding at that magnitude instead of one per product.
      Vec acc[T] = {};
      for (int d = 0; d < D; ++d) {
        Vec bd = Load(b + d * stride + j);
        LoadOnce(bd);  // forward and gradient ops 1.04-1.12x at dk = 6
        for (int t = 0; t < T; ++t) acc[t] += coef[t][d] * bd;
      }
      for (int t = 0; t < T; ++t) Store(rows[t] + j, Load(rows[t] + j) + acc[t]);
    }
  });
}

// AddProducts for depth > kChunk: register tiles of T rows x J vectors of columns accumulate
// over the whole depth (each loaded key vector used T times, each coefficient, a broadcast from
// memory, J times), then are added to rows once.
template <int T, int J>
__attribute__((always_inline)) inline void ProductTile(float* const* rows, const float* const* a, const float* bt,
                                                       int64_t depth, int64_t stride, int64_t j) {
  // The products are summed before they are added to rows, as in AddProducts.
  Vec acc[T][J] = {};
  for (int64_t d = 0; d < depth; ++d) {
    Vec bd[J];
    for (int jj = 0; jj < J; ++jj) bd[jj] = Load(bt + d * stride + j + jj * kLanes);
    // With AVX2, GCC folds a key vector's load into every multiply-add that uses it (a load per
    // row): kept in a register. AVX-512's tiles, whose multiply-adds take the coefficient as a
    // broadcast memory operand, are left as they were.
    if constexpr (!kBroadcastOperands && J > 1)
      for (int jj = 0; jj < J; ++jj) LoadOnce(bd[jj]);
    for (int t = 0; t < T; ++t) {
      const float c = a[t][d];
      for (int jj = 0; jj < J; ++jj) acc[t][jj] += c * bd[jj];
    }
  }
  for (int t = 0; t < T; ++t)
    for (int jj = 0; jj < J; ++jj) {
      float* r = rows[t] + j + jj * kLanes;
      Store(r, Load(r) + acc[t][jj]);
    }
}

// Tiles of kTileRows rows x 2 vectors of columns, 2 kTileRows accumulators in half the vector
// registers: 8 rows with 32 registers, 4 with 16. (With 16, tiles of 8 rows x 1 vector loaded 9
// vectors, a key vector and 8 broadcasts, per 8 multiply-adds, where 4 x 2 load 6: forward op
// 1.04-1.07x at 20 channels per head on AVX2, gradient op 1.01-1.03x; the same sums in the same
// order.)
template <int T>
void AddTileProducts(float* const* rows, const float* const* a, const float* bt, int64_t depth, int64_t stride) {
  constexpr int kTileRows = std::min(T, kVectorRegisters / 4);
  static_assert(T % kTileRows == 0, "whole tiles of rows");
  for (int t0 = 0; t0 < T; t0 += kTileRows) {
    int64_t j = 0;
    for (; j + 2 * kLanes <= stride; j += 2 * kLanes)
      ProductTile<kTileRows, 2>(rows + t0, a + t0, bt, depth, stride, j);
    for (; j < stride; j += kLanes) ProductTile<kTileRows, 1>(rows + t0, a + t0, bt, depth, stride, j);
  }
}

// out[t][d] = sum_j rows[t][j] * bt[d * stride + j]: dLogits times keys.
template <int T>
__attribute__((always_inline)) inline void RowDots(const float* const* rows, const float* bt, int64_t depth,
                                                   int64_t stride, float* const* out) {
  ForEachDepthChunk(depth, [&](auto chunk, int64_t first) __attribute__((always_inline)) {
    constexpr int D = decltype(chunk)::value;
    const float* b = bt + first * stride;
    Vec acc[T][D] = {};
    for (int64_t j = 0; j < stride; j += kLanes) {
      Vec r[T];
      for (int t = 0; t < T; ++t) r[t] = Load(rows[t] + j);
      for (int d = 0; d < D; ++d) {
        Vec bd = Load(b + d * stride + j);
        LoadOnce(bd);  // gradient op 1.02-1.09x
        for (int t = 0; t < T; ++t) acc[t][d] += r[t] * bd;
      }
    }
    for (int t = 0; t < T; ++t)
      for (int d = 0; d < D; ++d) out[t][first + d] = Sum(acc[t][d]);
  });
}

// bt[d * stride + j] += sum_{t < count} a[t * a_step + d] * rows[t * row_step + j] for the
// D channels from `first` and the J * kLanes columns from j: one register tile of the block
// product, the tile of bt loaded and stored once.
template <int D, int J>
__attribute__((always_inline)) inline void BlockTile(float* bt, const float* a, int64_t a_step, const float* rows,
                                                     int64_t row_step, int count, int64_t stride) {
  // count >= 1: the first query sets the accumulators (no zeroing, which the compiler would do
  // in memory for the case of no iterations, and spill the accumulators to merge with it).
  Vec acc[D][J];
  {
    Vec r[J];
    for (int jj = 0; jj < J; ++jj) r[jj] = Load(rows + jj * kLanes);
    for (int d = 0; d < D; ++d)
      for (int jj = 0; jj < J; ++jj) acc[d][jj] = a[d] * r[jj];
  }
  for (int t = 1; t < count; ++t) {
    Vec r[J];
    for (int jj = 0; jj < J; ++jj) r[jj] = Load(rows + t * row_step + jj * kLanes);
    // Without LoadOnce, at D = 4, 20 loads per 16 multiply-adds (BlockUpdate at depth 4 took
    // 12.0 us, at depth 5 7.4 us; 6.8 us at depth 4 with it; depth 2 5.7-6.5 -> 3.9-5.2 us,
    // depth 3 7.5-8.6 -> 4.5 us). Not at D = 1, where it is slower (3.2-3.9 -> 4.1-5.7 us); from
    // D = 5 on GCC loads each row vector once by itself.
    if constexpr (D >= 2 && D <= 4)
      for (int jj = 0; jj < J; ++jj) LoadOnce(r[jj]);
    for (int d = 0; d < D; ++d) {
      const float c = a[t * a_step + d];
      for (int jj = 0; jj < J; ++jj) acc[d][jj] += c * r[jj];
    }
  }
  for (int d = 0; d < D; ++d)
    for (int jj = 0; jj < J; ++jj) {
      float* b = bt + d * stride + jj * kLanes;
      Store(b, Load(b) + acc[d][jj]);
    }
}

// bt[d * stride + j] += sum_{t < count} a[t * a_step + d] * rows[t * row_step + j], j < stride, count >= 1:
// the key (value) gradients of a block of queries from their dS (P) rows and q (dO) rows.
void BlockUpdate(float* bt, const float* a, int64_t a_step, const float* rows, int64_t row_step, int count,
                 int64_t depth, int64_t stride) {
  // Vectors of columns per tile: up to 6 x 4 accumulators in registers (6 x 2 with 16 registers).
  constexpr int kTile = kVectorRegisters / 8;
  // Column tiles outside, depth chunks inside: a tile's count x kTile vectors of the block stay
  // in L1 across the depth chunks.
  auto tile = [&](auto vectors, int64_t j) {
    constexpr int J = decltype(vectors)::value;
    ForEachDepthChunk(depth, [&](auto chunk, int64_t first) {
      constexpr int D = decltype(chunk)::value;
      BlockTile<D, J>(bt + first * stride + j, a + first, a_step, rows + j, row_step, count, stride);
    });
  };
  int64_t j = 0;
  for (; j + kTile * kLanes <= stride; j += kTile * kLanes) tile(std::integral_constant<int, kTile>(), j);
  for (; j < stride; j += kLanes) tile(std::integral_constant<int, 1>(), j);
}

// x (n rows `step` floats apart, depth used) -> xt (depth, stride), columns n..stride-1 zero.
void Transpose(const float* x, int64_t n, int64_t depth, int64_t step, int64_t stride, float* xt) {
  std::fill(xt, xt + depth * stride, 0.0f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < depth; ++d) xt[d * stride + j] = x[j * step + d];
}

// xt (depth, stride) -> x (n rows `step` floats apart).
void TransposeBack(const float* xt, int64_t n, int64_t depth, int64_t stride, int64_t step, float* x) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < depth; ++d) x[j * step + d] = xt[d * stride + j];
}

// out[t][y] = sum_d q[t][d] * table_t[d * length_t + offset[t] + y] for t < T, y < length: T
// queries' relative logits against every grid row (or column), from the transposed table
// (depth, length_t). Computed in whole vectors: out[t] holds Padded(length) floats, whose lanes
// past length are garbage, and table_t has kLanes floats of slack. The T queries' sums are
// independent chains of multiply-adds: one query's chain alone waits on each multiply-add's
// latency (at 14x14 and 20 channels, 70% of Logits' time went to that).
template <int T>
void RelativeLogits(const float* const* q, const float* table_t, int64_t depth, int64_t length_t,
                    const int64_t* offset, int64_t length, float* const* out) {
  for (int64_t y = 0; y < length; y += kLanes) {
    Vec acc[T] = {};
    for (int64_t d = 0; d < depth; ++d)
      for (int t = 0; t < T; ++t) acc[t] += q[t][d] * Load(table_t + d * length_t + offset[t] + y);
    for (int t = 0; t < T; ++t) Store(out[t] + y, acc[t]);
  }
}

// Floats between the channels of a relative table's gradient in the workspace: more than a
// window of Padded(L) offsets can reach past the table's length_t entries, so that a channel's
// window never overlaps the next channel's (a load of a vector that a store has just written in
// part waits for that store to reach the cache: at 8x8, the gradient op was 1.3x slower).
inline int64_t TableGradientStride(int64_t length_t) { return Padded(length_t) + kLanes; }

// The gradients of RelativeLogits given g = dL/d(out), Padded(length) floats with zeros past
// length: d_q[d] += sum_y g[y] * table_t[...], d_table_t[d * TableGradientStride(length_t) +
// offset + y] += q[d] * g[y].
void RelativeGradients(const float* q, const float* g, const float* table_t, int64_t depth, int64_t length_t,
                       int64_t offset, int64_t length, float* d_q, float* d_table_t) {
  for (int64_t d = 0; d < depth; ++d) {
    const float* e = table_t + d * length_t + offset;
    float* de = d_table_t + d * TableGradientStride(length_t) + offset;
    Vec sum = {};
    for (int64_t y = 0; y < length; y += kLanes) {
      const Vec gy = Load(g + y);
      sum += gy * Load(e + y);
      Store(de + y, Load(de + y) + q[d] * gy);
    }
    d_q[d] += Sum(sum);
  }
}

// Floats between the rows of the transposed keys and values, and of the logit rows, for n
// positions and dk key channels per head: n padded to a multiple of kLanes. The wide path's
// logit tiles read all dk rows of the transposed keys at once: a row pitch of a multiple of 512
// floats (2 KB) would put them in the same few L1 sets (4 KB aliasing at 32 x 32), so such a
// pitch gets one more vector of padding there.
inline int64_t RowStride(int64_t n, int64_t dk) {
  return Padded(n) % 512 == 0 && dk > kChunk ? Padded(n) + kLanes : Padded(n);
}

struct Sizes {
  int64_t batch;
  int64_t heads;
  int64_t height;
  int64_t width;
  int64_t n;       // positions, height * width
  int64_t stride;  // RowStride(n, dk)
  int64_t dk;
  int64_t dv;
  bool relative;
  int64_t table_h;  // rows of the relative tables, 2 H_max - 1 and 2 W_max - 1
  int64_t table_w;

  int64_t units() const { return batch * heads; }
  // Floats of both relative tables' gradients, transposed, TableGradientStride floats per channel
  // (none without relative logits).
  int64_t table_gradient_size() const {
    return relative ? dk * (TableGradientStride(table_h) + TableGradientStride(table_w)) : 0;
  }
  // Offsets of (batch, head) unit u's first row in q or k, and in v or out; rows are
  // heads * dk (heads * dv) floats apart.
  int64_t KeyOffset(int64_t u) const { return (u / heads) * n * heads * dk + (u % heads) * dk; }
  int64_t ValueOffset(int64_t u) const { return (u / heads) * n * heads * dv + (u % heads) * dv; }
};

// One unit's inputs, and the transposed relative tables shared by all units.
struct Unit {
  const float* q;
  const float* k;
  const float* v;
  const float* table_h_t;  // (dk, table_h)
  const float* table_w_t;  // (dk, table_w)
};

// Query rows processed together at most: kWideRows where the keys are deeper than one chunk.
inline int GroupRows(const Sizes& s) { return s.dk > kChunk ? kWideRows : kRows; }

// A thread's buffers. Rows hold RowCapacity(stride) floats; the relative rows hold the
// Padded(H) and Padded(W) relative logits (or their gradients) of a query.
struct Workspace {
  Workspace(const Sizes& s, bool backward)
      : row_capacity(RowCapacity(s.stride)),
        rel_capacity(Padded(s.height) + Padded(s.width)),
        block_rows(static_cast<int>(
            std::clamp<int64_t>(kBlockBytes / (2 * sizeof(float) * row_capacity) / GroupRows(s) * GroupRows(s),
                                GroupRows(s), kMaxBlock))),
        kt(s.dk * s.stride),
        vt(s.dv * s.stride),
        rows(GroupRows(s) * row_capacity),
        rel((backward ? 2 : 1) * GroupRows(s) * rel_capacity),
        d_kt(backward ? s.dk * s.stride : 0),
        d_vt(backward ? s.dv * s.stride : 0),
        d_tables_t(backward ? s.table_gradient_size() : 0),
        block_p(backward ? block_rows * row_capacity : 0),
        block_ds(backward ? block_rows * row_capacity : 0),
        d_out_splat(backward && !kBroadcastOperands ? kRows * s.dv * kLanes : 0) {}

  float* Row(int r) { return rows.data() + r * row_capacity; }
  // Row r of the backward block's weights P and logit gradients dS.
  float* BlockP(int r) { return block_p.data() + r * row_capacity; }
  float* BlockDS(int r) { return block_ds.data() + r * row_capacity; }
  float* RelH(int r) { return rel.data() + r * rel_capacity; }
  float* RelW(int r, const Sizes& s) { return RelH(r) + Padded(s.height); }

  int64_t row_capacity;
  int64_t rel_capacity;
  int block_rows;  // of block_p and block_ds
  // d_out_splat: the backward pass's dO coefficients of T <= kRows rows, each in a whole
  // vector, kLanes floats from (e * T + t) * kLanes.
  std::vector<float> kt, vt, rows, rel, d_kt, d_vt, d_tables_t, block_p, block_ds, d_out_splat;
};

// Logits of queries first..first+T-1 into ws.Row(0..T-1): relative terms, then q k^T; padding
// kPad. The relative logits of query t are left in ws.RelH(t) and ws.RelW(t).
template <int T>
void Logits(const Sizes& s, const Unit& unit, int64_t first, Workspace& ws) {
  float* rows[T];
  const float* a[T];
  float* rel_h[T];
  float* rel_w[T];
  int64_t offset_h[T], offset_w[T];
  for (int t = 0; t < T; ++t) {
    const int64_t i = first + t;
    rows[t] = ws.Row(t);
    a[t] = unit.q + i * s.heads * s.dk;
    rel_h[t] = ws.RelH(t);
    rel_w[t] = ws.RelW(t, s);
    offset_h[t] = s.table_h / 2 - i / s.width;
    offset_w[t] = s.table_w / 2 - i % s.width;
  }
  if (!s.relative) {
    for (int t = 0; t < T; ++t) std::fill(rows[t], rows[t] + s.n, 0.0f);
  } else {
    RelativeLogits<T>(a, unit.table_h_t, s.dk, s.table_h, offset_h, s.height, rel_h);
    RelativeLogits<T>(a, unit.table_w_t, s.dk, s.table_w, offset_w, s.width, rel_w);
    // Whole vectors per grid row: the lanes past the row's end are overwritten by the next
    // grid row, or land in the padding and the buffer's slack.
    for (int t = 0; t < T; ++t)
      for (int64_t y = 0; y < s.height; ++y) {
        const float bias = rel_h[t][y];
        float* r = rows[t] + y * s.width;
        for (int64_t x = 0; x < s.width; x += kLanes) Store(r + x, bias + Load(rel_w[t] + x));
      }
  }
  if constexpr (T > kRows)
    AddTileProducts<T>(rows, a, ws.kt.data(), s.dk, s.stride);
  else
    AddProducts<T>(rows, a, ws.kt.data(), s.dk, s.stride);
  for (int t = 0; t < T; ++t) std::fill(rows[t] + s.n, rows[t] + s.stride, kPad);
}

float RowMax(const float* row, int64_t stride) {
  Vec m = Load(row);
  for (int64_t j = kLanes; j < stride; j += kLanes) {
    const Vec x = Load(row + j);
    m = m > x ? m : x;
  }
  float result = m[0];
  for (int i = 1; i < kLanes; ++i) result = std::max(result, m[i]);
  return result;
}

// Value depths up to which SoftmaxTimesValues computes the weights in its product loop. Deeper,
// the T x D accumulators and the exponential's constants exceed the 32 vector registers (at
// T = 4, D = 6 GCC spilled accumulators and loaded each value vector T times): the weights are
// then computed in a pass of their own first, in place (forward op 1.03-1.17x at dv = 6,
// benchmarks/results/NOTES_backward.md).
constexpr int kWeightsInProductLoop = 4;

// out[t][d] = sum_j p[t][j] v[j][d] with p[t] = softmax of rows[t], given its max; returns
// 1 / the sum of exp in inv_sum. Where depth <= kWeightsInProductLoop the depth chunk's loop
// computes the weights; deeper, a first pass stores them in rows and every chunk loads them.
template <int T>
void SoftmaxTimesValues(float* const* rows, const float* row_max, const float* vt, int64_t depth, int64_t stride,
                        float* inv_sum, float* const* out) {
  // The chunk loop is compiled once per case (compute_weights: std::true_type or false_type).
  // With the case a runtime flag, the loop where the weights are loaded was allocated registers
  // beside the exponential's constants, and GCC kept accumulators on the stack at D = 6: 6 of 12
  // with 16 vector registers (T = 2), 2 of 24 with 32 (T = 4). Forward op on AVX2: 1.12-1.17x
  // at 28x28, 56x56 and the 160-channel layer's shape, 0.92-1.09x at the others (two runs;
  // NOTES_backward.md, thirteenth pass).
  auto chunks = [&](auto compute_weights) __attribute__((always_inline)) {
    ForEachDepthChunk(depth, [&](auto chunk, int64_t first) __attribute__((always_inline)) {
      constexpr int D = decltype(chunk)::value;
      constexpr bool kComputeWeights = decltype(compute_weights)::value;
      const float* b = vt + first * stride;
      Vec acc[T][D] = {};
      Vec sum[T] = {};
      for (int64_t j = 0; j < stride; j += kLanes) {
        Vec p[T];
        for (int t = 0; t < T; ++t) {
          p[t] = Load(rows[t] + j);
          if constexpr (kComputeWeights) {
            p[t] = Exp(p[t] - row_max[t]);
            sum[t] += p[t];
          }
        }
        for (int d = 0; d < D; ++d) {
          Vec bd = Load(b + d * stride + j);
          // Where the weights are loaded: forward op 5-7% faster at dv = 6; beside the
          // exponentials it was slower (0.87x at dv = 4).
          if constexpr (!kComputeWeights) LoadOnce(bd);
          for (int t = 0; t < T; ++t) acc[t][d] += p[t] * bd;
        }
      }
      if constexpr (kComputeWeights)
        for (int t = 0; t < T; ++t) inv_sum[t] = 1.0f / Sum(sum[t]);
      for (int t = 0; t < T; ++t)
        for (int d = 0; d < D; ++d) out[t][first + d] = Sum(acc[t][d]) * inv_sum[t];
    });
  };
  if (depth <= kWeightsInProductLoop) {
    chunks(std::true_type());  // one chunk: first == 0
    return;
  }
  Vec sum[T] = {};
  for (int64_t j = 0; j < stride; j += kLanes)
    for (int t = 0; t < T; ++t) {
      const Vec p = Exp(Load(rows[t] + j) - row_max[t]);
      sum[t] += p;
      Store(rows[t] + j, p);
    }
  for (int t = 0; t < T; ++t) inv_sum[t] = 1.0f / Sum(sum[t]);
  chunks(std::false_type());
}

template <int T>
void ForwardRows(const Sizes& s, const Unit& unit, int64_t first, Workspace& ws, float* out, float* stats) {
  Logits<T>(s, unit, first, ws);
  float* rows[T];
  float row_max[T], inv_sum[T];
  float* out_rows[T];
  for (int t = 0; t < T; ++t) {
    rows[t] = ws.Row(t);
    row_max[t] = RowMax(rows[t], s.stride);
    out_rows[t] = out + (first + t) * s.heads * s.dv;
  }
  // With 16 vector registers the weights-first product loop's 4 x 6 accumulators spill: there
  // the rows go in pairs (forward op 1.1-1.2x at dv = 6 and 8 on AVX2; where the loop computes
  // the weights, dv <= 4, pairs were slower).
  const bool pairs = kVectorRegisters == 16 && T % 2 == 0 && s.dv > kWeightsInProductLoop;
  if (pairs) {
    for (int t0 = 0; t0 + 2 <= T; t0 += 2)
      SoftmaxTimesValues<2>(rows + t0, row_max + t0, ws.vt.data(), s.dv, s.stride, inv_sum + t0, out_rows + t0);
  } else if constexpr (T > kRows) {
    static_assert(T == 2 * kRows, "the wide path's rows in two groups of kRows");
    for (int t0 = 0; t0 < T; t0 += kRows)
      SoftmaxTimesValues<kRows>(rows + t0, row_max + t0, ws.vt.data(), s.dv, s.stride, inv_sum + t0, out_rows + t0);
  } else {
    SoftmaxTimesValues<T>(rows, row_max, ws.vt.data(), s.dv, s.stride, inv_sum, out_rows);
  }
  // The backward pass recomputes the weights as exp(logit - max) / sum, which (unlike
  // exp(logit - log-sum-exp)) keeps them exact to rounding however large the logits.
  for (int t = 0; t < T; ++t) {
    stats[2 * (first + t)] = row_max[t];
    stats[2 * (first + t) + 1] = inv_sum[t];
  }
}

// The relative-logit gradients of one query from its dS row: sums over each grid row into
// d_rel_h, over each grid column into d_rel_w (Padded(H) and Padded(W) floats, zeros past H
// and W). The last vector of a grid row is cut to the row's end. One pass, in blocks of 8 grid
// rows (then 4, 2, 1): each vector of the row is added to its grid row's sum (in a register; a
// block's sums reduced together by Sums) and to its column's sum, which is read and written
// once per block (a sum kept in memory and updated every row would wait on its own last
// store). The additions are those of one pass per sum, in the same order.
void RelativeLogitGradients(const Sizes& s, const float* ds, float* d_rel_h, float* d_rel_w) {
  const int64_t last = (s.width - 1) / kLanes * kLanes;
  auto rows = [&](auto count, int64_t y0) __attribute__((always_inline)) {
    constexpr int R = decltype(count)::value;
    Vec row_sum[R] = {};
    for (int64_t x = 0; x < s.width; x += kLanes) {
      Vec column_sum = y0 == 0 ? Vec{} : Load(d_rel_w + x);
      for (int r = 0; r < R; ++r) {
        Vec v = Load(ds + (y0 + r) * s.width + x);
        if (x == last) v = FirstLanes(v, s.width - last);
        row_sum[r] += v;
        column_sum += v;
      }
      Store(d_rel_w + x, column_sum);
    }
    Sums<R>(row_sum, d_rel_h + y0);
  };
  int64_t y = 0;
  for (; y + 8 <= s.height; y += 8) rows(std::integral_constant<int, 8>(), y);
  if (y + 4 <= s.height) rows(std::integral_constant<int, 4>(), y), y += 4;
  if (y + 2 <= s.height) rows(std::integral_constant<int, 2>(), y), y += 2;
  if (y < s.height) rows(std::integral_constant<int, 1>(), y);
  std::fill(d_rel_h + s.height, d_rel_h + Padded(s.height), 0.0f);
}

template <int T>
void BackwardRows(const Sizes& s, const Unit& unit, const float* out, const float* stats, const float* d_out,
                  int64_t first, int slot, Workspace& ws, float* d_q) {
  Logits<T>(s, unit, first, ws);
  float* logits[T];
  float* probs[T];
  float* d_logits[T];
  const float* q_rows[T];
  const float* d_out_rows[T];
  float* d_q_rows[T];
  float row_max[T], inv_sum[T], row_dot[T];
  for (int t = 0; t < T; ++t) {
    const int64_t i = first + t;
    logits[t] = ws.Row(t);
    probs[t] = ws.BlockP(slot + t);
    d_logits[t] = ws.BlockDS(slot + t);
    row_max[t] = stats[2 * i];
    inv_sum[t] = stats[2 * i + 1];
    q_rows[t] = unit.q + i * s.heads * s.dk;
    d_out_rows[t] = d_out + i * s.heads * s.dv;
    d_q_rows[t] = d_q + i * s.heads * s.dk;
    const float* o = out + i * s.heads * s.dv;
    row_dot[t] = 0.0f;
    for (int64_t e = 0; e < s.dv; ++e) row_dot[t] += d_out_rows[t][e] * o[e];
  }
  // In one pass: P = exp(logits - max) / sum, dP = dO v^T and dS = P * (dP - rowsum(dO * O)).
  // The wide path also adds these rows' value gradients, dV^T += dO^T P, with the same dO
  // coefficients: P is not stored, nor read again by BlockUpdate (at dvh 2, a pass over the
  // block for 2 products per loaded vector). Without broadcast operands and with kRows rows, the
  // coefficients are splatted into whole vectors once, for the multiply-adds to take from
  // memory, and the value channels run in depth chunks of compile-time size (before: a
  // broadcast instruction per multiply-add and a loop per channel; gradient op on AVX2, two
  // runs: 1.02-1.07x at 28x28 and 56x56; identical results in groups of 4 rows, within 1-2
  // units in the last place in a group of 1 row, whose old loop GCC's tuning for AMD Zen
  // compiled as a multiply and an add per channel, not a multiply-add). The wide path uses each
  // broadcast twice (dP and dV): there coefficients from memory were slower (0.89-0.98x).
  constexpr bool kSplat = T <= kRows && !kBroadcastOperands;
  const float* vt = ws.vt.data();
  float* d_vt = ws.d_vt.data();
  float* d_out_splat = ws.d_out_splat.data();
  if constexpr (kSplat)
    for (int64_t e = 0; e < s.dv; ++e)
      for (int t = 0; t < T; ++t) Store(d_out_splat + (e * T + t) * kLanes, Splat(d_out_rows[t][e]));
  for (int64_t j = 0; j < s.stride; j += kLanes) {
    Vec p[T], dp[T] = {};
    for (int t = 0; t < T; ++t) {
      p[t] = Exp(Load(logits[t] + j) - row_max[t]) * inv_sum[t];
      if constexpr (T <= kRows) Store(probs[t] + j, p[t]);
    }
    if constexpr (!kSplat) {
      for (int64_t e = 0; e < s.dv; ++e) {
        const Vec ve = Load(vt + e * s.stride + j);
        for (int t = 0; t < T; ++t) dp[t] += d_out_rows[t][e] * ve;
        if constexpr (T > kRows) {
          Vec d_ve = d_out_rows[0][e] * p[0];
          for (int t = 1; t < T; ++t) d_ve += d_out_rows[t][e] * p[t];
          float* d = d_vt + e * s.stride + j;
          Store(d, Load(d) + d_ve);
        }
      }
    } else {
      ForEachDepthChunk(s.dv, [&](auto chunk, int64_t first) __attribute__((always_inline)) {
        constexpr int D = decltype(chunk)::value;
        for (int d = 0; d < D; ++d) {
          const float* c = d_out_splat + (first + d) * T * kLanes;
          Vec ve = Load(vt + (first + d) * s.stride + j);
          LoadOnce(ve);
          for (int t = 0; t < T; ++t) dp[t] += Load(c + t * kLanes) * ve;
        }
      });
    }
    for (int t = 0; t < T; ++t) Store(d_logits[t] + j, p[t] * (dp[t] - row_dot[t]));
  }
  // With 16 vector registers RowDots' 4 x D accumulators, 4 row vectors and a key vector do not
  // fit from D = 3 on: there the rows go in pairs (bit-identical; gradient op on AVX2, two runs:
  // 0.95-1.31x, 15 of 18 figures 1.04 or more: NOTES_backward.md, twelfth pass).
  if (kVectorRegisters == 16 && T % 2 == 0 && s.dk > 2) {
    for (int t0 = 0; t0 < T; t0 += 2) RowDots<2>(d_logits + t0, ws.kt.data(), s.dk, s.stride, d_q_rows + t0);
  } else if constexpr (T > kRows) {
    static_assert(T == 2 * kRows, "the wide path's rows in two groups of kRows");
    for (int t0 = 0; t0 < T; t0 += kRows) RowDots<kRows>(d_logits + t0, ws.kt.data(), s.dk, s.stride, d_q_rows + t0);
  } else {
    RowDots<T>(d_logits, ws.kt.data(), s.dk, s.stride, d_q_rows);
  }
  if (!s.relative) return;
  float* d_table_h_t = ws.d_tables_t.data();
  float* d_table_w_t = d_table_h_t + s.dk * TableGradientStride(s.table_h);
  for (int t = 0; t < T; ++t) {
    const int64_t i = first + t;
    // After the rows of Logits' relative logits (kRows of them, or T of the wide path's).
    float* d_rel_h = ws.RelH(std::max(T, kRows) + t);
    float* d_rel_w = ws.RelW(std::max(T, kRows) + t, s);
    RelativeLogitGradients(s, d_logits[t], d_rel_h, d_rel_w);
    RelativeGradients(q_rows[t], d_rel_h, unit.table_h_t, s.dk, s.table_h, s.table_h / 2 - i / s.width, s.height,
                      d_q_rows[t], d_table_h_t);
    RelativeGradients(q_rows[t], d_rel_w, unit.table_w_t, s.dk, s.table_w, s.table_w / 2 - i % s.width, s.width,
                      d_q_rows[t], d_table_w_t);
  }
}

// Calls fn<T>(first) for blocks of G queries (kRows, or kWideRows), then of kRows, and the
// remainder.
template <int G, typename Fn>
void ForEachRowBlock(int64_t n, Fn fn) {
  int64_t first = 0;
  for (; first + G <= n; first += G) fn(std::integral_constant<int, G>(), first);
  if constexpr (G > kRows)
    for (; first + kRows <= n; first += kRows) fn(std::integral_constant<int, kRows>(), first);
  switch (n - first) {
    case 3: fn(std::integral_constant<int, 3>(), first); break;
    case 2: fn(std::integral_constant<int, 2>(), first); break;
    case 1: fn(std::integral_constant<int, 1>(), first); break;
    default: break;
  }
}

// Calls fn(integral_constant<int, GroupRows(s)>()): each row group size G instantiates its own
// copy of an op's unit loop, with the row blocks of ForEachRowBlock<G>.
template <typename Fn>
void WithGroupRows(const Sizes& s, Fn fn) {
  if (GroupRows(s) == kWideRows)
    fn(std::integral_constant<int, kWideRows>());
  else
    fn(std::integral_constant<int, kRows>());
}

// An InvalidArgument status whose message is the pieces concatenated.
template <typename... Pieces>
Status InvalidArgument(const Pieces&... pieces) {
  return absl::InvalidArgumentError(absl::StrCat(pieces...));
}

// Checks the shapes shared by both ops and reads the sizes.
Status ReadSizes(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rel_height,
                 const Tensor& rel_width, bool relative, Sizes* s) {
  if (q.dims() != 5 || k.dims() != 5 || v.dims() != 5)
    return InvalidArgument("q, k and v must be (batch, height, width, heads, depth)");
  for (int i = 0; i < 4; ++i) {
    if (k.dim_size(i) != q.dim_size(i) || v.dim_size(i) != q.dim_size(i))
      return InvalidArgument("q, k and v must agree in batch, height, width and heads");
  }
  if (k.dim_size(4) != q.dim_size(4)) return InvalidArgument("q and k must have the same depth");
  s->batch = q.dim_size(0);
  s->height = q.dim_size(1);
  s->width = q.dim_size(2);
  s->heads = q.dim_size(3);
  s->dk = q.dim_size(4);
  s->dv = v.dim_size(4);
  s->n = s->height * s->width;
  s->stride = RowStride(s->n, s->dk);
  s->relative = relative;
  s->table_h = s->table_w = 0;
  if (!relative) return absl::OkStatus();
  if (rel_height.dims() != 2 || rel_width.dims() != 2 || rel_height.dim_size(1) != s->dk ||
      rel_width.dim_size(1) != s->dk)
    return InvalidArgument("rel_height and rel_width must be (2 * max_length - 1, depth of q)");
  s->table_h = rel_height.dim_size(0);
  s->table_w = rel_width.dim_size(0);
  if (s->table_h % 2 == 0 || s->table_w % 2 == 0)
    return InvalidArgument("rel_height and rel_width must have an odd number of rows, 2 * max_length - 1");
  if (s->height > (s->table_h + 1) / 2 || s->width > (s->table_w + 1) / 2)
    return InvalidArgument("The attention grid (", s->height, " x ", s->width, ") is larger than the ",
                           (s->table_h + 1) / 2, " x ", (s->table_w + 1) / 2,
                           " positions its relative embeddings were built for: build the layer with a larger "
                           "max_size.");
  return absl::OkStatus();
}

// The relative tables rel_height (table_h, dk) and rel_width (table_w, dk) transposed to
// (depth, rows), for contiguous windows of offsets, and kLanes floats of slack.
std::vector<float> TransposedTables(const Sizes& s, const float* rel_height, const float* rel_width) {
  std::vector<float> tables(s.dk * (s.table_h + s.table_w) + kLanes);
  if (!s.relative) return tables;
  Transpose(rel_height, s.table_h, s.dk, s.dk, s.table_h, tables.data());
  Transpose(rel_width, s.table_w, s.dk, s.dk, s.table_w, tables.data() + s.dk * s.table_h);
  return tables;
}

// Unit u's view of q, k and v (the whole tensors) and of the transposed tables.
Unit UnitInputs(const Sizes& s, int64_t u, const float* q, const float* k, const float* v,
                const std::vector<float>& tables_t) {
  return Unit{q + s.KeyOffset(u), k + s.KeyOffset(u), v + s.ValueOffset(u), tables_t.data(),
              tables_t.data() + s.dk * s.table_h};
}

// Input i of an op, as floats.
const float* InputData(OpKernelContext* context, int i) { return context->input(i).flat<float>().data(); }

// The unit's keys and values, transposed into the workspace.
void LoadKeysAndValues(const Sizes& s, const Unit& unit, Workspace& ws) {
  Transpose(unit.k, s.n, s.dk, s.heads * s.dk, s.stride, ws.kt.data());
  Transpose(unit.v, s.n, s.dv, s.heads * s.dv, s.stride, ws.vt.data());
}

// The forward op for one unit, its rows in groups of G: out and stats point at the unit's first
// output row and its (n, 2) statistics.
template <int G>
void ForwardUnit(const Sizes& s, const Unit& unit, Workspace& ws, float* out, float* stats) {
  LoadKeysAndValues(s, unit, ws);
  ForEachRowBlock<G>(s.n, [&](auto rows_in_block, int64_t first) {
    ForwardRows<decltype(rows_in_block)::value>(s, unit, first, ws, out, stats);
  });
}

// The gradient op for one unit, its rows in groups of G: out, d_out, d_q, d_k and d_v point at
// the unit's first row, stats at its (n, 2) statistics; d_tables_t receives the unit's
// table_gradient_size() floats of transposed table gradients.
template <int G>
void BackwardUnit(const Sizes& s, const Unit& unit, const float* out, const float* stats, const float* d_out,
                  Workspace& ws, float* d_q, float* d_k, float* d_v, float* d_tables_t) {
  LoadKeysAndValues(s, unit, ws);
  std::fill(ws.d_kt.begin(), ws.d_kt.end(), 0.0f);
  std::fill(ws.d_vt.begin(), ws.d_vt.end(), 0.0f);
  std::fill(ws.d_tables_t.begin(), ws.d_tables_t.end(), 0.0f);
  for (int64_t block = 0; block < s.n; block += ws.block_rows) {
    const int count = static_cast<int>(std::min<int64_t>(ws.block_rows, s.n - block));
    ForEachRowBlock<G>(count, [&](auto rows_in_block, int64_t slot) {
      BackwardRows<decltype(rows_in_block)::value>(s, unit, out, stats, d_out, block + slot, static_cast<int>(slot),
                                                   ws, d_q);
    });
    BlockUpdate(ws.d_kt.data(), unit.q + block * s.heads * s.dk, s.heads * s.dk, ws.block_ds.data(),
                ws.row_capacity, count, s.dk, s.stride);
    // Groups of kWideRows rows have added their value gradients (BackwardRows).
    const int summed = G > kRows ? count / G * G : 0;
    if (G == kRows || summed < count)
      BlockUpdate(ws.d_vt.data(), d_out + (block + summed) * s.heads * s.dv, s.heads * s.dv, ws.BlockP(summed),
                  ws.row_capacity, count - summed, s.dv, s.stride);
  }
  TransposeBack(ws.d_kt.data(), s.n, s.dk, s.stride, s.heads * s.dk, d_k);
  TransposeBack(ws.d_vt.data(), s.n, s.dv, s.stride, s.heads * s.dv, d_v);
  std::copy_n(ws.d_tables_t.begin(), s.table_gradient_size(), d_tables_t);
}

void ShardUnits(OpKernelContext* context, const Sizes& s, const std::function<void(int64_t, int64_t)>& work) {
  const auto& pool = *context->device()->tensorflow_cpu_worker_threads();
  const int64_t cost = s.n * s.n * (s.dk + s.dv + 8);
  tensorflow::Shard(pool.num_threads, pool.workers, s.units(), cost, work);
}

// What both ops share: the `relative` attribute and inputs 0-4 (q, k, v and the tables).
class AttentionOpBase : public OpKernel {
 public:
  explicit AttentionOpBase(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("relative", &relative_));
  }

 protected:
  // The sizes of inputs 0-4, or their error.
  Status ReadInputSizes(OpKernelContext* context, Sizes* s) const {
    return ReadSizes(context->input(0), context->input(1), context->input(2), context->input(3), context->input(4),
                     relative_, s);
  }

 private:
  bool relative_;
};

class FusedAttentionOp : public AttentionOpBase {
 public:
  using AttentionOpBase::AttentionOpBase;

  void Compute(OpKernelContext* context) override {
    Sizes s;
    OP_REQUIRES_OK(context, ReadInputSizes(context, &s));
    Tensor* out = nullptr;
    Tensor* stats = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, context->input(2).shape(), &out));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({s.batch, s.heads, s.n, 2}), &stats));
    if (s.n == 0 || s.units() == 0) return;
    const std::vector<float> tables_t = TransposedTables(s, InputData(context, 3), InputData(context, 4));
    float* out_data = out->flat<float>().data();
    float* stats_data = stats->flat<float>().data();
    WithGroupRows(s, [&](auto group) {
      ShardUnits(context, s, [&](int64_t begin, int64_t end) {
        Workspace ws(s, /*backward=*/false);
        for (int64_t u = begin; u < end; ++u) {
          const Unit unit =
              UnitInputs(s, u, InputData(context, 0), InputData(context, 1), InputData(context, 2), tables_t);
          ForwardUnit<decltype(group)::value>(s, unit, ws, out_data + s.ValueOffset(u), stats_data + u * s.n * 2);
        }
      });
    });
  }
};

class FusedAttentionGradOp : public AttentionOpBase {
 public:
  using AttentionOpBase::AttentionOpBase;

  void Compute(OpKernelContext* context) override {
    const Tensor& out = context->input(5);
    const Tensor& stats = context->input(6);
    const Tensor& d_out = context->input(7);
    Sizes s;
    OP_REQUIRES_OK(context, ReadInputSizes(context, &s));
    OP_REQUIRES(context, out.shape() == context->input(2).shape() && d_out.shape() == out.shape(),
                InvalidArgument("out and d_out must have the shape of v"));
    OP_REQUIRES(context, stats.NumElements() == s.units() * s.n * 2,
                InvalidArgument("stats must be (batch, heads, positions, 2)"));
    // The gradient of each of inputs 0-4 has its shape.
    Tensor* grads[5];
    for (int i = 0; i < 5; ++i) OP_REQUIRES_OK(context, context->allocate_output(i, context->input(i).shape(), &grads[i]));
    Tensor *d_q = grads[0], *d_k = grads[1], *d_v = grads[2], *d_rel_height = grads[3], *d_rel_width = grads[4];
    // Each unit's gradients of the transposed tables, summed over units at the end.
    const int64_t table_size = s.table_gradient_size();
    Tensor unit_d_tables;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({s.units(), table_size}),
                                                   &unit_d_tables));
    if (s.n == 0 || s.units() == 0) {
      d_rel_height->flat<float>().setZero();
      d_rel_width->flat<float>().setZero();
      return;
    }
    const std::vector<float> tables_t = TransposedTables(s, InputData(context, 3), InputData(context, 4));
    WithGroupRows(s, [&](auto group) {
      ShardUnits(context, s, [&](int64_t begin, int64_t end) {
        Workspace ws(s, /*backward=*/true);
        for (int64_t u = begin; u < end; ++u) {
          BackwardUnit<decltype(group)::value>(
              s, UnitInputs(s, u, InputData(context, 0), InputData(context, 1), InputData(context, 2), tables_t),
              out.flat<float>().data() + s.ValueOffset(u),
              stats.flat<float>().data() + u * s.n * 2, d_out.flat<float>().data() + s.ValueOffset(u), ws,
              d_q->flat<float>().data() + s.KeyOffset(u), d_k->flat<float>().data() + s.KeyOffset(u),
              d_v->flat<float>().data() + s.ValueOffset(u), unit_d_tables.flat<float>().data() + u * table_size);
        }
      });
    });
    if (!s.relative) return;
    std::vector<float> d_tables_t(table_size, 0.0f);
    const float* units_data = unit_d_tables.flat<float>().data();
    for (int64_t u = 0; u < s.units(); ++u)
      for (int64_t e = 0; e < table_size; ++e) d_tables_t[e] += units_data[u * table_size + e];
    TransposeBack(d_tables_t.data(), s.table_h, s.dk, TableGradientStride(s.table_h), s.dk,
                  d_rel_height->flat<float>().data());
    TransposeBack(d_tables_t.data() + s.dk * TableGradientStride(s.table_h), s.table_w, s.dk,
                  TableGradientStride(s.table_w), s.dk, d_rel_width->flat<float>().data());
  }
};

// Output shapes: out as v, stats (batch, heads, height * width, 2).
Status AttentionShape(InferenceContext* c) {
  ShapeHandle q, v;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 5, &q));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 5, &v));
  c->set_output(0, v);
  DimensionHandle positions;
  TF_RETURN_IF_ERROR(c->Multiply(c->Dim(q, 1), c->Dim(q, 2), &positions));
  c->set_output(1, c->MakeShape({c->Dim(q, 0), c->Dim(q, 3), positions, c->MakeDim(2)}));
  return absl::OkStatus();
}

REGISTER_OP("AaFusedAttention")
    .Input("q: float")
    .Input("k: float")
    .Input("v: float")
    .Input("rel_height: float")
    .Input("rel_width: float")
    .Attr("relative: bool")
    .Output("out: float")
    .Output("stats: float")
    .SetShapeFn(AttentionShape)
    .Doc(R"doc(
softmax(q k^T + relative logits) v over all positions of an H x W grid, per batch and head.
q, k: (B, H, W, Nh, dk); v and out: (B, H, W, Nh, dv); rel_height (2 H_max - 1, dk) and
rel_width (2 W_max - 1, dk) relative embeddings, H <= H_max, W <= W_max, ignored unless
relative. stats (B, Nh, H * W, 2): per query the max of its logits and 1 / the sum of their
exp, for the gradient.
)doc");

REGISTER_OP("AaFusedAttentionGrad")
    .Input("q: float")
    .Input("k: float")
    .Input("v: float")
    .Input("rel_height: float")
    .Input("rel_width: float")
    .Input("out: float")
    .Input("stats: float")
    .Input("d_out: float")
    .Attr("relative: bool")
    .Output("d_q: float")
    .Output("d_k: float")
    .Output("d_v: float")
    .Output("d_rel_height: float")
    .Output("d_rel_width: float")
    .SetShapeFn([](InferenceContext* c) {
      for (int i = 0; i < 5; ++i) c->set_output(i, c->input(i));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradients of AaFusedAttention with respect to q, k, v, rel_height and rel_width, given its
outputs out and stats and the gradient d_out of out.
)doc");

REGISTER_KERNEL_BUILDER(Name("AaFusedAttention").Device(DEVICE_CPU), FusedAttentionOp);
REGISTER_KERNEL_BUILDER(Name("AaFusedAttentionGrad").Device(DEVICE_CPU), FusedAttentionGradOp);

}  // namespace
}  // namespace aa_keras
