// Fused 2D multi-head attention with relative logits, forward and backward, for CPU.
//
// For one (batch, head) pair with N = H * W positions, queries q (N, dk), keys k (N, dk),
// values v (N, dv) and the per-query relative logits rel_h (N, H) and rel_w (N, W):
//
//   s[i, j] = q_i . k_j + rel_h[i, y_j] + rel_w[i, x_j]      (j = y_j * W + x_j)
//   p[i, :] = softmax(s[i, :]),  out_i = sum_j p[i, j] v_j
//
// The (N, N) logits are never stored: a few query rows are processed at a time, their logits,
// weights and gradients live in row buffers that stay in cache, and the backward pass recomputes
// the weights from each row's max and 1 / sum of exp (the `stats` output). Each (batch, head) pair is one unit of work for TensorFlow's CPU pool.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

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
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Query rows processed together: they share every load of a key or value row.
constexpr int kRows = 4;
// Floats per vector. Rows are padded to a multiple of it; padded logits are set to kPad, whose
// weight is exactly 0, and padded key and value columns are 0.
constexpr int kLanes = 16;
constexpr float kPad = -1e30f;

// GCC/Clang vector extensions: the compiler maps them to the widest registers it has.
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float))));

inline Vec Load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void Store(float* p, Vec x) { *reinterpret_cast<Vec*>(p) = x; }
inline Vec Splat(float x) { return Vec{} + x; }

inline float Sum(Vec x) {
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += x[i];
  return s;
}

inline int64_t Padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// exp(x), x = n ln2 + r with |r| <= ln2 / 2: exp(r) by its Taylor polynomial of degree 7
// (truncation error below 1e-8 relative), times 2^n built in the exponent bits. 0 below -87.
inline Vec Exp(Vec x) {
  const IVec underflow = x < -87.0f;
  x = x > -87.0f ? x : Splat(-87.0f);
  // Adding 1.5 * 2^23 rounds to the nearest integer, which ends up in the low mantissa bits.
  const float kRound = 12582912.0f;
  const Vec shifted = x * 1.44269504088896341f + kRound;
  const Vec n = shifted - kRound;
  // ln2 split in two so that n * ln2_hi is exact.
  const Vec r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  Vec p = Splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const IVec exponent = ((IVec)shifted - (IVec)Splat(kRound) + 127) << 23;
  return (Vec)((IVec)(p * (Vec)exponent) & ~underflow);
}

// rows[t][j] += sum_d a[t][d] * bt[d * stride + j] for t < T, j < stride: the logits of T
// queries against the transposed keys bt (depth, stride), or dO v^T against the values.
template <int T>
void AddProducts(float* const* rows, const float* const* a, const float* bt, int64_t depth, int64_t stride) {
  for (int64_t j = 0; j < stride; j += kLanes) {
    // The products are summed before they are added to rows (the relative logits), which may be
    // large: one rounding at that magnitude instead of one per product.
    Vec acc[T] = {};
    for (int64_t d = 0; d < depth; ++d) {
      const Vec b = Load(bt + d * stride + j);
      for (int t = 0; t < T; ++t) acc[t] += a[t][d] * b;
    }
    for (int t = 0; t < T; ++t) Store(rows[t] + j, Load(rows[t] + j) + acc[t]);
  }
}

// out[t][d] = scale[t] * sum_j rows[t][j] * bt[d * stride + j]: weights times values, or
// dLogits times keys.
template <int T>
void RowDots(const float* const* rows, const float* bt, int64_t depth, int64_t stride, const float* scale,
             float* const* out) {
  for (int64_t d = 0; d < depth; ++d) {
    const float* b = bt + d * stride;
    Vec acc[T] = {};
    for (int64_t j = 0; j < stride; j += kLanes) {
      const Vec bj = Load(b + j);
      for (int t = 0; t < T; ++t) acc[t] += Load(rows[t] + j) * bj;
    }
    for (int t = 0; t < T; ++t) out[t][d] = Sum(acc[t]) * scale[t];
  }
}

// bt[d * stride + j] += sum_t a[t][d] * rows[t][j]: the key and value gradients of T queries.
template <int T>
void RankUpdate(float* bt, const float* const* a, const float* const* rows, int64_t depth, int64_t stride) {
  for (int64_t d = 0; d < depth; ++d) {
    float* b = bt + d * stride;
    float coef[T];
    for (int t = 0; t < T; ++t) coef[t] = a[t][d];
    for (int64_t j = 0; j < stride; j += kLanes) {
      Vec acc = Load(b + j);
      for (int t = 0; t < T; ++t) acc += coef[t] * Load(rows[t] + j);
      Store(b + j, acc);
    }
  }
}

// (n, depth) -> (depth, stride), columns n..stride-1 zero.
void Transpose(const float* x, int64_t n, int64_t depth, int64_t stride, float* xt) {
  std::fill(xt, xt + depth * stride, 0.0f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < depth; ++d) xt[d * stride + j] = x[j * depth + d];
}

// (depth, stride) -> (n, depth).
void TransposeBack(const float* xt, int64_t n, int64_t depth, int64_t stride, float* x) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < depth; ++d) x[j * depth + d] = xt[d * stride + j];
}

struct Sizes {
  int64_t units;   // batch * heads
  int64_t n;       // positions, height * width
  int64_t stride;  // n padded to a multiple of kLanes
  int64_t dk;
  int64_t dv;
  int64_t height;  // 0 without relative logits
  int64_t width;
};

// Pointers into one unit's inputs.
struct Unit {
  const float* q;
  const float* k;
  const float* v;
  const float* rel_h;
  const float* rel_w;
};

Unit UnitInputs(const Sizes& s, int64_t u, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rel_h,
                const Tensor& rel_w) {
  Unit unit;
  unit.q = q.flat<float>().data() + u * s.n * s.dk;
  unit.k = k.flat<float>().data() + u * s.n * s.dk;
  unit.v = v.flat<float>().data() + u * s.n * s.dv;
  unit.rel_h = s.height ? rel_h.flat<float>().data() + u * s.n * s.height : nullptr;
  unit.rel_w = s.height ? rel_w.flat<float>().data() + u * s.n * s.width : nullptr;
  return unit;
}

// Logits of queries first..first+T-1 into rows: relative terms, then q k^T; padding kPad.
template <int T>
void Logits(const Sizes& s, const Unit& unit, const float* kt, int64_t first, float* const* rows) {
  for (int t = 0; t < T; ++t) {
    float* row = rows[t];
    if (s.height) {
      const float* rh = unit.rel_h + (first + t) * s.height;
      const float* rw = unit.rel_w + (first + t) * s.width;
      for (int64_t y = 0; y < s.height; ++y) {
        const float bias = rh[y];
        float* r = row + y * s.width;
        for (int64_t x = 0; x < s.width; ++x) r[x] = bias + rw[x];
      }
    } else {
      std::fill(row, row + s.n, 0.0f);
    }
  }
  const float* a[T];
  for (int t = 0; t < T; ++t) a[t] = unit.q + (first + t) * s.dk;
  AddProducts<T>(rows, a, kt, s.dk, s.stride);
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

// row[j] = exp(row[j] - shift) * scale; returns the sum.
float ExpInPlace(float* row, int64_t stride, float shift, float scale) {
  Vec sum = {};
  for (int64_t j = 0; j < stride; j += kLanes) {
    const Vec e = Exp(Load(row + j) - shift) * scale;
    Store(row + j, e);
    sum += e;
  }
  return Sum(sum);
}

template <int T>
void ForwardRows(const Sizes& s, const Unit& unit, const float* kt, const float* vt, int64_t first, float* const* rows,
                 float* out, float* stats) {
  Logits<T>(s, unit, kt, first, rows);
  float inv_sum[T];
  float* out_rows[T];
  for (int t = 0; t < T; ++t) {
    const float m = RowMax(rows[t], s.stride);
    inv_sum[t] = 1.0f / ExpInPlace(rows[t], s.stride, m, 1.0f);
    // The backward pass recomputes the weights as exp(logit - max) / sum, which (unlike
    // exp(logit - log-sum-exp)) keeps them exact to rounding however large the logits.
    stats[2 * (first + t)] = m;
    stats[2 * (first + t) + 1] = inv_sum[t];
    out_rows[t] = out + (first + t) * s.dv;
  }
  RowDots<T>(rows, vt, s.dv, s.stride, inv_sum, out_rows);
}

template <int T>
void BackwardRows(const Sizes& s, const Unit& unit, const float* kt, const float* vt, const float* out,
                  const float* stats, const float* d_out, int64_t first, float* const* probs, float* const* d_logits,
                  float* d_q, float* d_kt, float* d_vt, float* d_rel_h, float* d_rel_w) {
  Logits<T>(s, unit, kt, first, probs);
  const float* q_rows[T];
  const float* d_out_rows[T];
  float ones[T];
  float* d_q_rows[T];
  for (int t = 0; t < T; ++t) {
    const int64_t i = first + t;
    ExpInPlace(probs[t], s.stride, stats[2 * i], stats[2 * i + 1]);
    std::fill(d_logits[t], d_logits[t] + s.stride, 0.0f);
    q_rows[t] = unit.q + i * s.dk;
    d_out_rows[t] = d_out + i * s.dv;
    ones[t] = 1.0f;
    d_q_rows[t] = d_q + i * s.dk;
  }
  // dP = dO v^T, then dS = P * (dP - rowsum(dO * O)).
  AddProducts<T>(d_logits, d_out_rows, vt, s.dv, s.stride);
  for (int t = 0; t < T; ++t) {
    const float* o = out + (first + t) * s.dv;
    float row = 0.0f;
    for (int64_t e = 0; e < s.dv; ++e) row += d_out_rows[t][e] * o[e];
    const float* p = probs[t];
    float* ds = d_logits[t];
    for (int64_t j = 0; j < s.stride; j += kLanes) Store(ds + j, Load(p + j) * (Load(ds + j) - row));
  }
  RowDots<T>(d_logits, kt, s.dk, s.stride, ones, d_q_rows);
  RankUpdate<T>(d_kt, q_rows, d_logits, s.dk, s.stride);
  RankUpdate<T>(d_vt, d_out_rows, probs, s.dv, s.stride);
  if (s.height) {
    for (int t = 0; t < T; ++t) {
      const float* ds = d_logits[t];
      float* dh = d_rel_h + (first + t) * s.height;
      float* dw = d_rel_w + (first + t) * s.width;
      std::fill(dw, dw + s.width, 0.0f);
      for (int64_t y = 0; y < s.height; ++y) {
        const float* r = ds + y * s.width;
        float sum = 0.0f;
        for (int64_t x = 0; x < s.width; ++x) {
          sum += r[x];
          dw[x] += r[x];
        }
        dh[y] = sum;
      }
    }
  }
}

// Calls fn<T>(first) for blocks of kRows queries and the remainder.
template <typename Fn>
void ForEachRowBlock(int64_t n, Fn fn) {
  int64_t first = 0;
  for (; first + kRows <= n; first += kRows) fn(std::integral_constant<int, kRows>(), first);
  switch (n - first) {
    case 3: fn(std::integral_constant<int, 3>(), first); break;
    case 2: fn(std::integral_constant<int, 2>(), first); break;
    case 1: fn(std::integral_constant<int, 1>(), first); break;
    default: break;
  }
}

// Checks the shapes shared by both ops and reads the sizes.
Status ReadSizes(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rel_h, const Tensor& rel_w,
                 bool relative, Sizes* s) {
  if (q.dims() != 4 || k.dims() != 4 || v.dims() != 4)
    return tensorflow::errors::InvalidArgument("q, k and v must be (batch, heads, positions, depth)");
  for (int i = 0; i < 3; ++i) {
    if (k.dim_size(i) != q.dim_size(i) || v.dim_size(i) != q.dim_size(i))
      return tensorflow::errors::InvalidArgument("q, k and v must agree in batch, heads and positions");
  }
  if (k.dim_size(3) != q.dim_size(3)) return tensorflow::errors::InvalidArgument("q and k must have the same depth");
  s->units = q.dim_size(0) * q.dim_size(1);
  s->n = q.dim_size(2);
  s->dk = q.dim_size(3);
  s->dv = v.dim_size(3);
  s->stride = Padded(s->n);
  s->height = 0;
  s->width = 0;
  if (relative) {
    if (rel_h.dims() != 4 || rel_w.dims() != 4)
      return tensorflow::errors::InvalidArgument("rel_h and rel_w must be (batch, heads, positions, length)");
    for (int i = 0; i < 3; ++i) {
      if (rel_h.dim_size(i) != q.dim_size(i) || rel_w.dim_size(i) != q.dim_size(i))
        return tensorflow::errors::InvalidArgument("rel_h and rel_w must agree with q in batch, heads and positions");
    }
    s->height = rel_h.dim_size(3);
    s->width = rel_w.dim_size(3);
    if (s->height * s->width != s->n)
      return tensorflow::errors::InvalidArgument("height * width of the relative logits must equal the positions");
  }
  return tensorflow::OkStatus();
}

void ShardUnits(OpKernelContext* context, const Sizes& s, const std::function<void(int64_t, int64_t)>& work) {
  const auto& pool = *context->device()->tensorflow_cpu_worker_threads();
  const int64_t cost = s.n * s.n * (s.dk + s.dv + 8);
  tensorflow::Shard(pool.num_threads, pool.workers, s.units, cost, work);
}

class FusedAttentionOp : public OpKernel {
 public:
  explicit FusedAttentionOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("relative", &relative_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& q = context->input(0);
    const Tensor& k = context->input(1);
    const Tensor& v = context->input(2);
    const Tensor& rel_h = context->input(3);
    const Tensor& rel_w = context->input(4);
    Sizes s;
    OP_REQUIRES_OK(context, ReadSizes(q, k, v, rel_h, rel_w, relative_, &s));
    Tensor* out = nullptr;
    Tensor* stats = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({q.dim_size(0), q.dim_size(1), s.n, s.dv}), &out));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({q.dim_size(0), q.dim_size(1), s.n, 2}), &stats));
    if (s.n == 0 || s.units == 0) return;
    float* out_data = out->flat<float>().data();
    float* stats_data = stats->flat<float>().data();
    ShardUnits(context, s, [&](int64_t begin, int64_t end) {
      std::vector<float> kt(s.dk * s.stride), vt(s.dv * s.stride), buffer(kRows * s.stride);
      float* rows[kRows];
      for (int t = 0; t < kRows; ++t) rows[t] = buffer.data() + t * s.stride;
      for (int64_t u = begin; u < end; ++u) {
        const Unit unit = UnitInputs(s, u, q, k, v, rel_h, rel_w);
        Transpose(unit.k, s.n, s.dk, s.stride, kt.data());
        Transpose(unit.v, s.n, s.dv, s.stride, vt.data());
        float* unit_out = out_data + u * s.n * s.dv;
        float* unit_stats = stats_data + u * s.n * 2;
        ForEachRowBlock(s.n, [&](auto rows_in_block, int64_t first) {
          ForwardRows<decltype(rows_in_block)::value>(s, unit, kt.data(), vt.data(), first, rows, unit_out, unit_stats);
        });
      }
    });
  }

 private:
  bool relative_;
};

class FusedAttentionGradOp : public OpKernel {
 public:
  explicit FusedAttentionGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("relative", &relative_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& q = context->input(0);
    const Tensor& k = context->input(1);
    const Tensor& v = context->input(2);
    const Tensor& rel_h = context->input(3);
    const Tensor& rel_w = context->input(4);
    const Tensor& out = context->input(5);
    const Tensor& stats = context->input(6);
    const Tensor& d_out = context->input(7);
    Sizes s;
    OP_REQUIRES_OK(context, ReadSizes(q, k, v, rel_h, rel_w, relative_, &s));
    OP_REQUIRES(context, out.shape() == v.shape() && d_out.shape() == v.shape(),
                tensorflow::errors::InvalidArgument("out and d_out must have the shape of v"));
    OP_REQUIRES(context, stats.NumElements() == s.units * s.n * 2,
                tensorflow::errors::InvalidArgument("stats must be (batch, heads, positions, 2)"));
    Tensor *d_q, *d_k, *d_v, *d_rel_h, *d_rel_w;
    OP_REQUIRES_OK(context, context->allocate_output(0, q.shape(), &d_q));
    OP_REQUIRES_OK(context, context->allocate_output(1, k.shape(), &d_k));
    OP_REQUIRES_OK(context, context->allocate_output(2, v.shape(), &d_v));
    OP_REQUIRES_OK(context, context->allocate_output(3, rel_h.shape(), &d_rel_h));
    OP_REQUIRES_OK(context, context->allocate_output(4, rel_w.shape(), &d_rel_w));
    if (s.n == 0 || s.units == 0) return;
    ShardUnits(context, s, [&](int64_t begin, int64_t end) {
      std::vector<float> kt(s.dk * s.stride), vt(s.dv * s.stride), d_kt(s.dk * s.stride), d_vt(s.dv * s.stride);
      std::vector<float> buffer(2 * kRows * s.stride);
      float* probs[kRows];
      float* d_logits[kRows];
      for (int t = 0; t < kRows; ++t) {
        probs[t] = buffer.data() + t * s.stride;
        d_logits[t] = buffer.data() + (kRows + t) * s.stride;
      }
      for (int64_t u = begin; u < end; ++u) {
        const Unit unit = UnitInputs(s, u, q, k, v, rel_h, rel_w);
        Transpose(unit.k, s.n, s.dk, s.stride, kt.data());
        Transpose(unit.v, s.n, s.dv, s.stride, vt.data());
        std::fill(d_kt.begin(), d_kt.end(), 0.0f);
        std::fill(d_vt.begin(), d_vt.end(), 0.0f);
        const float* unit_out = out.flat<float>().data() + u * s.n * s.dv;
        const float* unit_stats = stats.flat<float>().data() + u * s.n * 2;
        const float* unit_d_out = d_out.flat<float>().data() + u * s.n * s.dv;
        float* unit_d_q = d_q->flat<float>().data() + u * s.n * s.dk;
        float* unit_d_rel_h = s.height ? d_rel_h->flat<float>().data() + u * s.n * s.height : nullptr;
        float* unit_d_rel_w = s.height ? d_rel_w->flat<float>().data() + u * s.n * s.width : nullptr;
        ForEachRowBlock(s.n, [&](auto rows_in_block, int64_t first) {
          BackwardRows<decltype(rows_in_block)::value>(s, unit, kt.data(), vt.data(), unit_out, unit_stats, unit_d_out,
                                                       first, probs, d_logits, unit_d_q, d_kt.data(), d_vt.data(),
                                                       unit_d_rel_h, unit_d_rel_w);
        });
        TransposeBack(d_kt.data(), s.n, s.dk, s.stride, d_k->flat<float>().data() + u * s.n * s.dk);
        TransposeBack(d_vt.data(), s.n, s.dv, s.stride, d_v->flat<float>().data() + u * s.n * s.dv);
      }
    });
  }

 private:
  bool relative_;
};

// Output shapes: (batch, heads, positions, dv) and (batch, heads, positions, 2).
Status AttentionShape(InferenceContext* c) {
  ShapeHandle q, v;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &q));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &v));
  ShapeHandle batch_heads_positions;
  TF_RETURN_IF_ERROR(c->Subshape(q, 0, 3, &batch_heads_positions));
  ShapeHandle out;
  TF_RETURN_IF_ERROR(c->Concatenate(batch_heads_positions, c->Vector(c->Dim(v, 3)), &out));
  c->set_output(0, out);
  ShapeHandle stats;
  TF_RETURN_IF_ERROR(c->Concatenate(batch_heads_positions, c->Vector(2), &stats));
  c->set_output(1, stats);
  return tensorflow::OkStatus();
}

REGISTER_OP("AaFusedAttention")
    .Input("q: float")
    .Input("k: float")
    .Input("v: float")
    .Input("rel_h: float")
    .Input("rel_w: float")
    .Attr("relative: bool")
    .Output("out: float")
    .Output("stats: float")
    .SetShapeFn(AttentionShape)
    .Doc(R"doc(
softmax(q k^T + relative logits) v over all positions, per batch and head, and per query
the max of its logits and 1 / the sum of their exp (B, Nh, N, 2), for the gradient. q, k: (B, Nh, N, dk); v: (B, Nh, N, dv); rel_h (B, Nh, N, H) and
rel_w (B, Nh, N, W) with H * W = N when relative, ignored otherwise.
)doc");

REGISTER_OP("AaFusedAttentionGrad")
    .Input("q: float")
    .Input("k: float")
    .Input("v: float")
    .Input("rel_h: float")
    .Input("rel_w: float")
    .Input("out: float")
    .Input("stats: float")
    .Input("d_out: float")
    .Attr("relative: bool")
    .Output("d_q: float")
    .Output("d_k: float")
    .Output("d_v: float")
    .Output("d_rel_h: float")
    .Output("d_rel_w: float")
    .SetShapeFn([](InferenceContext* c) {
      for (int i = 0; i < 5; ++i) c->set_output(i, c->input(i));
      return tensorflow::OkStatus();
    })
    .Doc(R"doc(
Gradients of AaFusedAttention with respect to q, k, v, rel_h and rel_w, given its outputs
out and stats and the gradient d_out of out.
)doc");

REGISTER_KERNEL_BUILDER(Name("AaFusedAttention").Device(DEVICE_CPU), FusedAttentionOp);
REGISTER_KERNEL_BUILDER(Name("AaFusedAttentionGrad").Device(DEVICE_CPU), FusedAttentionGradOp);

}  // namespace
}  // namespace aa_keras
