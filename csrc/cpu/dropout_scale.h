// The channel-wise dropout kernels (dropout2d: one scale per (N, C) pair),
// scale_planes and scale_pixels of dropout_kernels.h, included inside each
// build's namespace (dropout_generic.cpp, dropout_avx2.cpp) so that each
// compiles them for its own target: built with dropout.cpp's portable flags
// they ran 4 floats an instruction (16x64x56x56 channels_last forward 0.73x
// torch's in one suite run, AMD EPYC VM). No include guard: one copy per
// namespace.

namespace {

template <typename T>
void scale_planes_t(const T* x, T* y, const T* m, int64_t S, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    const T mg = m[g];
    const T* __restrict xr = x + g * S;
    T* __restrict yr = y + g * S;
    for (int64_t s = 0; s < S; ++s) yr[s] = xr[s] * mg;
  }
}

// Pixels [q0, q1) of C channels; pixel q belongs to image q / HW, whose
// scales are m[img * C, img * C + C). The image is tracked by a counter, not
// divided out per pixel (a 64-bit division per pixel cost a fifth).
template <typename T>
void scale_pixels_t(const T* x, T* y, const T* m, int64_t C, int64_t HW, int64_t q0, int64_t q1) {
  int64_t img = q0 / HW, left = HW - q0 % HW;  // pixels left in image img
  for (int64_t q = q0; q < q1; ++q) {
    const T* __restrict mm = m + img * C;
    const T* __restrict xr = x + q * C;
    T* __restrict yr = y + q * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * mm[c];
    if (--left == 0) ++img, left = HW;
  }
}

}  // namespace

#define CNNK_DROP_SCALE_DEFINE(T)                                                          \
  void scale_planes(const T* x, T* y, const T* m, int64_t S, int64_t g0, int64_t g1) {     \
    scale_planes_t(x, y, m, S, g0, g1);                                                    \
  }                                                                                        \
  void scale_pixels(const T* x, T* y, const T* m, int64_t C, int64_t HW, int64_t q0,      \
                    int64_t q1) {                                                          \
    scale_pixels_t(x, y, m, C, HW, q0, q1);                                                \
  }
CNNK_DROP_SCALE_DEFINE(float)
CNNK_DROP_SCALE_DEFINE(double)
#undef CNNK_DROP_SCALE_DEFINE
