// The fused LSTM's element-wise step maths as two compiled CPU kernels (impl: fused_cpp).
// Gates are in the fused order (i, f, o, g), rows of B, each row 4H wide; every other buffer is
// (B, H) with its own row stride. Each kernel is one pass over the B rows, on one thread,
// where the aten version is 6 (forward) and 10 (backward) separately dispatched passes.
#include <torch/extension.h>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace {

// exp as plain arithmetic that the compiler vectorizes (Cephes' expf: x = n ln2 + r, a degree-6
// polynomial in r, 2^n from the exponent bits), for float32; float64 keeps std::exp, so its
// results stay within rounding of the aten kernels' (the float64 gradient proofs run on it).
inline float exp_of(float x) {
    x = std::min(std::max(x, -87.0f), 88.0f);
    const float n = std::floor(x * 1.44269504088896341f + 0.5f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}
inline double exp_of(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + exp_of(-x)); }

template <typename T>
inline T tanh_of(T x) { return T(2) / (T(1) + exp_of(T(-2) * x)) - T(1); }
inline double tanh_of(double x) { return std::tanh(x); }

void check(const torch::Tensor& t, const torch::Tensor& like, int64_t width, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type(), name, ": a CPU tensor of the gates' dtype");
    TORCH_CHECK(t.dim() == 2 && t.size(0) == like.size(0) && t.size(1) == width && t.stride(1) == 1,
                name, ": (B, ", width, ") with unit stride along its rows");
}

}  // namespace

// One row of the forward step: a (4H) activated in place; c, tc, h (H) written.
template <typename T>
void forward_row(T* __restrict__ a, const T* __restrict__ cp, T* __restrict__ c, T* __restrict__ tc,
                 T* __restrict__ h, int64_t H) {
    for (int64_t j = 0; j < 3 * H; ++j) a[j] = sigmoid(a[j]);
    for (int64_t j = 3 * H; j < 4 * H; ++j) a[j] = tanh_of(a[j]);
    const T *i = a, *f = a + H, *o = a + 2 * H, *g = a + 3 * H;
    for (int64_t j = 0; j < H; ++j) {
        c[j] = f[j] * cp[j] + i[j] * g[j];
        tc[j] = tanh_of(c[j]);
        h[j] = o[j] * tc[j];
    }
}

// One row of the backward step: da (4H) written, dc (H) carried back one step in place.
template <typename T>
void backward_row(const T* __restrict__ gates, const T* __restrict__ cp, const T* __restrict__ tc,
                  const T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ da, int64_t H) {
    const T *i = gates, *f = gates + H, *o = gates + 2 * H, *g = gates + 3 * H;
    for (int64_t j = 0; j < H; ++j) {
        const T dcj = dc[j] + dh[j] * o[j] * (T(1) - tc[j] * tc[j]);  // c_t feeds h_t too
        da[j] = dcj * g[j] * i[j] * (T(1) - i[j]);
        da[H + j] = dcj * cp[j] * f[j] * (T(1) - f[j]);
        da[2 * H + j] = dh[j] * tc[j] * o[j] * (T(1) - o[j]);
        da[3 * H + j] = dcj * i[j] * (T(1) - g[j] * g[j]);
        dc[j] = dcj * f[j];
    }
}

// a: the gates' pre-activations, activated in place; c_prev: c_{t-1}; writes c_t, tanh(c_t), h_t.
void forward_step(torch::Tensor a, torch::Tensor c_prev, torch::Tensor c, torch::Tensor tc, torch::Tensor h) {
    const int64_t B = a.size(0), H = c.size(1);
    check(a, a, 4 * H, "a");
    check(c_prev, a, H, "c_prev"), check(c, a, H, "c"), check(tc, a, H, "tc"), check(h, a, H, "h");
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "lstm_forward_step", [&] {
        for (int64_t b = 0; b < B; ++b)
            forward_row(a.data_ptr<scalar_t>() + b * a.stride(0), c_prev.data_ptr<scalar_t>() + b * c_prev.stride(0),
                        c.data_ptr<scalar_t>() + b * c.stride(0), tc.data_ptr<scalar_t>() + b * tc.stride(0),
                        h.data_ptr<scalar_t>() + b * h.stride(0), H);
    });
}

// gates: the activated (i, f, o, g); dh: dL/dh_t; dc: dL/dc_t from later steps, in place ->
// dL/dc_{t-1}; writes da, the gradient of the gates' pre-activations.
void backward_step(torch::Tensor gates, torch::Tensor c_prev, torch::Tensor tc, torch::Tensor dh, torch::Tensor dc,
                   torch::Tensor da) {
    const int64_t B = gates.size(0), H = tc.size(1);
    check(gates, gates, 4 * H, "gates"), check(da, gates, 4 * H, "da");
    check(c_prev, gates, H, "c_prev"), check(tc, gates, H, "tc"), check(dh, gates, H, "dh"), check(dc, gates, H, "dc");
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward_step", [&] {
        for (int64_t b = 0; b < B; ++b)
            backward_row(gates.data_ptr<scalar_t>() + b * gates.stride(0), c_prev.data_ptr<scalar_t>() + b * c_prev.stride(0),
                         tc.data_ptr<scalar_t>() + b * tc.stride(0), dh.data_ptr<scalar_t>() + b * dh.stride(0),
                         dc.data_ptr<scalar_t>() + b * dc.stride(0), da.data_ptr<scalar_t>() + b * da.stride(0), H);
    });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward_step", &forward_step, "the LSTM's element-wise forward step, in place");
    m.def("backward_step", &backward_step, "the LSTM's element-wise backward step");
}
