// The fused attention kernel's unit loops outside TensorFlow's runtime, on one thread, for
// benchmarks/kernel_instructions.py (which compiles it and runs it natively and under cachegrind).
//
//   kernel_harness forward|gradient SIZE DKH DVH UNITS CALLS
//       the op on UNITS (batch, head) units of a SIZE x SIZE grid, 8 heads, relative logits,
//       CALLS times (the gradient op after one forward call for its statistics); prints one JSON
//       line: the fastest call's CPU seconds (of this process, which runs on one thread; less
//       sensitive to other load than the wall clock), the logits per call and a checksum of the
//       outputs.
//   kernel_harness clock
//       the core's cycles per second: a chain of dependent integer additions (one per cycle) timed
//       by the process's CPU clock; prints one JSON line.
//   kernel_harness peak
//       the core's float32 multiply-add peak: independent chains of multiply-adds on the kernel's
//       vectors, in GFLOP (2 per lane and multiply-add) per CPU second; prints one JSON line.

#include "../aa_keras/ops/fused_attention.cc"

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>

namespace {

using namespace aa_keras;

double CpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int Clock() {
#if defined(__x86_64__)
  double best = 0.0;
  for (int round = 0; round < 5; ++round) {
    uint64_t iterations = 200000000, x = 0;
    const double start = CpuSeconds();
    // 4 dependent additions per iteration; the loop's counter runs beside them.
    __asm__ volatile("1:\n add $1, %0\n add $1, %0\n add $1, %0\n add $1, %0\n sub $1, %1\n jnz 1b"
                     : "+r"(x), "+r"(iterations));
    best = std::max(best, 4 * 200000000.0 / (CpuSeconds() - start));
  }
  std::printf("{\"cycles_per_second\": %.6g}\n", best);
  return 0;
#else
  std::fprintf(stderr, "clock: x86-64 only\n");
  return 1;
#endif
}

int Peak() {
  // 12 chains: more than a multiply-add's latency times the pipes that run them (4 x 2 on the
  // x86-64 cores this ran on), fewer than the vector registers.
  constexpr int kChains = 12;
  const long iterations = 50000000;
  const Vec b = Splat(0.999999f), c = Splat(1e-7f);
  double best = 0.0, check = 0.0;
  for (int round = 0; round < 5; ++round) {
    Vec acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = Splat(float(i));
    const double start = CpuSeconds();
    for (long i = 0; i < iterations; ++i)
      for (int k = 0; k < kChains; ++k) acc[k] = acc[k] * b + c;
    best = std::max(best, 2.0 * kLanes * kChains * iterations / (CpuSeconds() - start) / 1e9);
    for (int k = 0; k < kChains; ++k) check += acc[k][0];
  }
  std::printf("{\"gflop_per_second\": %.6g, \"check\": %.6g}\n", best, check);
  return 0;
}

std::vector<float> Normal(std::mt19937& generator, size_t count, float scale) {
  std::normal_distribution<float> normal;
  std::vector<float> x(count);
  for (float& e : x) e = normal(generator) * scale;
  return x;
}

int Run(const std::string& op, int size, int dkh, int dvh, int units, int calls) {
  Sizes s;
  s.heads = 8;
  s.batch = (units + s.heads - 1) / s.heads;
  s.height = s.width = size;
  s.n = size * size;
  s.dk = dkh;
  s.dv = dvh;
  s.stride = RowStride(s.n, s.dk);
  s.relative = true;
  s.table_h = s.table_w = 2 * size - 1;
  std::mt19937 generator(1);
  const size_t keys = s.batch * s.n * s.heads * dkh, values = s.batch * s.n * s.heads * dvh;
  const std::vector<float> q = Normal(generator, keys, 1.0f / std::sqrt(float(dkh))), k = Normal(generator, keys, 1.0f),
                           v = Normal(generator, values, 1.0f), d_out = Normal(generator, values, 1.0f),
                           table_h = Normal(generator, s.table_h * dkh, 0.1f),
                           table_w = Normal(generator, s.table_w * dkh, 0.1f);
  const std::vector<float> tables_t = TransposedTables(s, table_h.data(), table_w.data());
  std::vector<float> out(values), stats(s.units() * s.n * 2), d_q(keys), d_k(keys), d_v(values),
      d_tables_t(s.units() * s.table_gradient_size());
  auto unit_inputs = [&](int u) { return UnitInputs(s, u, q.data(), k.data(), v.data(), tables_t); };
  // Made once, outside the timed calls (the op makes one per thread and call, for all its units).
  Workspace forward_ws(s, /*backward=*/false), gradient_ws(s, /*backward=*/true);
  auto forward = [&] {
    WithGroupRows(s, [&](auto group) {
      for (int u = 0; u < units; ++u)
        ForwardUnit<decltype(group)::value>(s, unit_inputs(u), forward_ws, out.data() + s.ValueOffset(u),
                                            stats.data() + u * s.n * 2);
    });
  };
  auto gradient = [&] {
    WithGroupRows(s, [&](auto group) {
      for (int u = 0; u < units; ++u)
        BackwardUnit<decltype(group)::value>(s, unit_inputs(u), out.data() + s.ValueOffset(u),
                                             stats.data() + u * s.n * 2, d_out.data() + s.ValueOffset(u), gradient_ws,
                                             d_q.data() + s.KeyOffset(u), d_k.data() + s.KeyOffset(u),
                                             d_v.data() + s.ValueOffset(u),
                                             d_tables_t.data() + u * s.table_gradient_size());
    });
  };
  if (op == "gradient") forward();
  double best = 1e30;
  for (int call = 0; call < calls; ++call) {
    const double start = CpuSeconds();
    if (op == "forward")
      forward();
    else
      gradient();
    best = std::min(best, CpuSeconds() - start);
  }
  double checksum = 0.0;
  for (const std::vector<float>* x : {&out, &d_q, &d_k, &d_v})
    for (float e : *x) checksum += e;
  std::printf("{\"op\": \"%s\", \"seconds\": %.6g, \"logits\": %.6g, \"checksum\": %.9g}\n", op.c_str(), best,
              double(units) * s.n * s.n, checksum);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "clock" && argc == 2) return Clock();
  if (mode == "peak" && argc == 2) return Peak();
  if ((mode == "forward" || mode == "gradient") && argc == 7)
    return Run(mode, std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]),
               std::atoi(argv[6]));
  std::fprintf(stderr, "usage: %s forward|gradient SIZE DKH DVH UNITS CALLS | clock | peak\n", argv[0]);
  return 2;
}
