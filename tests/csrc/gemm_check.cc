// Checks translator/csrc/gemm.h against a double-precision product, for the instruction
// set it is compiled for (tests/test_native.py builds it for the machine's baseline, e.g.
// AVX2, the path of CPUs without AVX-512). Prints the largest error relative to the
// largest |C| for float32 and bfloat16 inputs: "float <err> bfloat16 <err>".
//
// usage: gemm_check ROWS K N TRANSPOSED

#include <cstdio>
#include <cstdlib>

#include "gemm.h"

namespace {

template <typename T>
double MaxError(int64_t rows, int64_t k, int64_t n, bool transposed) {
  std::vector<T> a(rows * k), src(k * n);
  uint32_t state = 12345;
  auto next = [&] {  // a small deterministic generator, values in [-1, 1)
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(state >> 8) / 8388608.0f - 1.0f;
  };
  for (T& x : a) x = T(next());
  for (T& x : src) x = T(next());
  const PackedB<T> b(src.data(), k, n, transposed);
  std::vector<float> c(rows * b.n_pad);
  Gemm(a.data(), k, rows, b, c.data());
  double worst = 0, largest = 1e-30;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) {
      double want = 0;
      for (int64_t i = 0; i < k; ++i)
        want += static_cast<double>(Scalar(a[r * k + i])) *
                Scalar(transposed ? src[j * k + i] : src[i * n + j]);
      worst = std::max(worst, std::abs(want - c[r * b.n_pad + j]));
      largest = std::max(largest, std::abs(want));
    }
  return worst / largest;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) return 2;
  const int64_t rows = atoll(argv[1]), k = atoll(argv[2]), n = atoll(argv[3]);
  const bool transposed = atoi(argv[4]) != 0;
  std::printf("float %g bfloat16 %g\n", MaxError<float>(rows, k, n, transposed),
              MaxError<tensorflow::bfloat16>(rows, k, n, transposed));
  return 0;
}
