// What the project's kernels (translator/kernels/csrc/*.cc, compiled into one library by
// translator/kernels/build.py) share: float vectors as wide as the machine's registers, loads and
// stores of float32 and bfloat16, exp, sigmoid and tanh, and the registration of an op for
// both dtypes.
//
// Everything is in an anonymous namespace: each .cc file gets its own inline copies.

#ifndef TRANSLATOR_CSRC_SIMD_H_
#define TRANSLATOR_CSRC_SIMD_H_

#include <algorithm>
#include <functional>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// kLanes floats or ints at once: GCC and Clang compile these to AVX-512 or AVX2 (or NEON)
// instructions as the machine has them.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;  // AVX2 (or two NEON registers): wider vectors would be split and
                           // spilled to memory, several times slower than TensorFlow's ops
#endif
typedef float fvec __attribute__((vector_size(4 * kLanes)));
typedef int32_t ivec __attribute__((vector_size(4 * kLanes)));
typedef uint32_t uvec __attribute__((vector_size(4 * kLanes)));
typedef uint16_t hvec __attribute__((vector_size(2 * kLanes)));

inline fvec Load(const float* x) {
  fvec v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

inline fvec Load(const tensorflow::bfloat16* x) {  // bfloat16: a float32's high half
  hvec half;
  std::memcpy(&half, x, sizeof half);
  return reinterpret_cast<fvec>(__builtin_convertvector(half, uvec) << 16);
}

inline float Scalar(float x) { return x; }
inline float Scalar(tensorflow::bfloat16 x) { return static_cast<float>(x); }

inline fvec Max(fvec a, fvec b) { return a > b ? a : b; }  // ignores a NaN in a

// Bit l set where lane l of v is >= t (false for NaN): one mask instruction where the
// machine has one.
inline uint32_t AtLeastMask(fvec v, fvec t) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(reinterpret_cast<__m512>(v), reinterpret_cast<__m512>(t),
                            _CMP_GE_OQ);
#else
  const ivec hit = v >= t;
  uint32_t mask = 0;
  for (int l = 0; l < kLanes; ++l) mask |= static_cast<uint32_t>(hit[l] & 1) << l;
  return mask;
#endif
}

inline bool AnyAtLeast(fvec v, fvec t) { return AtLeastMask(v, t) != 0; }

// exp(x) for x <= 0, relative error below 2e-7: x = m ln2 + r, |r| <= ln2 / 2, e^r by its
// Taylor polynomial of degree 7, 2^m written straight into the float's exponent bits. m is
// rounded by adding and subtracting 1.5 * 2^23 (the sum's low mantissa bits then hold m).
inline fvec ExpNonPositive(fvec x) {
  const fvec floor_x = fvec{} - 87.0f;  // e^x below float's smallest normal counts as 0
  x = x > floor_x ? x : floor_x;
  const fvec magic = fvec{} + 12582912.0f;
  const fvec shifted = x * 1.44269504088896341f + magic;
  const fvec mf = shifted - magic;
  const ivec m = reinterpret_cast<ivec>(shifted) - reinterpret_cast<ivec>(magic);
  const fvec r = (x - mf * 0.693145751953125f) - mf * 1.42860682030941723e-6f;
  fvec p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * reinterpret_cast<fvec>((m + 127) << 23);
}

// 1 / d for d >= 1: a 14-bit estimate and one Newton step where the machine has the
// estimate instruction (a full division is several times slower), else a division.
inline fvec Reciprocal(fvec d) {
#if defined(__AVX512F__)
  const fvec r = reinterpret_cast<fvec>(_mm512_rcp14_ps(reinterpret_cast<__m512>(d)));
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
}

inline void Store(float* out, fvec v) { std::memcpy(out, &v, sizeof v); }

inline void Store(tensorflow::bfloat16* out, fvec v) {  // round to nearest even, as tf.cast
  uvec bits = reinterpret_cast<uvec>(v);
  bits += ((bits >> 16) & 1u) + 0x7fffu;
  const uvec nan = reinterpret_cast<uvec>(v != v);
  bits = (bits & ~nan) | (nan & 0x7fc00000u);
  const hvec half = __builtin_convertvector(bits >> 16, hvec);
  std::memcpy(out, &half, sizeof half);
}

inline fvec Abs(fvec x) {
  return reinterpret_cast<fvec>(reinterpret_cast<uvec>(x) & 0x7fffffffu);
}

inline fvec Sigmoid(fvec x) {
  const fvec e = ExpNonPositive(-Abs(x));
  const fvec s = Reciprocal(1.0f + e);
  return x >= 0.0f ? s : e * s;
}

inline fvec Tanh(fvec x) {
  const fvec e = ExpNonPositive(-2.0f * Abs(x));
  const fvec t = (1.0f - e) * Reciprocal(1.0f + e);
  return x >= 0.0f ? t : -t;
}

// kLanes values from x + j of a row of `units` values, zeros past its end.
template <typename T>
inline fvec LoadPart(const T* x, int64_t j, int64_t units) {
  if (j + kLanes <= units) return Load(x + j);
  T copy[kLanes] = {};
  for (int64_t l = 0; j + l < units; ++l) copy[l] = x[j + l];
  return Load(copy);
}

template <typename T>
inline void StorePart(T* out, int64_t j, int64_t units, fvec v) {
  if (j + kLanes <= units) return Store(out + j, v);
  T copy[kLanes];
  Store(copy, v);
  for (int64_t l = 0; j + l < units; ++l) out[j + l] = copy[l];
}

}  // namespace

// Each op for float32 and bfloat16.
#define REGISTER_CPU_KERNELS(NAME, OP)                                                     \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name(NAME).Device(tensorflow::DEVICE_CPU).TypeConstraint<float>("T"), OP<float>); \
  REGISTER_KERNEL_BUILDER(Name(NAME)                                                      \
                              .Device(tensorflow::DEVICE_CPU)                             \
                              .TypeConstraint<tensorflow::bfloat16>("T"),                 \
                          OP<tensorflow::bfloat16>)

#endif  // TRANSLATOR_CSRC_SIMD_H_
