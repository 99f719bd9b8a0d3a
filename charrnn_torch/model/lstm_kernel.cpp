// The LSTM's element-wise step maths as two compiled CPU kernels (impl fused_cpp, compiled.py).
// Gates are nn.LSTM's (i, f, g, o), rows of B, each row 4H wide; every other buffer is (B, H)
// with its own row stride. Each kernel is one pass over the B rows, split between torch's threads
// (its own OpenMP runtime: compiled.py links that one) where there are enough rows, where fused's
// aten version is 7 (forward) and 11 (backward) separately dispatched passes. Each row is the
// same arithmetic on any thread, so the split never changes a bit. Where oneDNN makes the step
// GEMM's product apart, forward_loop and backward_loop run all T steps of a direction in one call,
// the same calls in the same order as fused.py's Python loop. C++17.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

// float32 exp and tanh as plain arithmetic that the compiler vectorizes (Cephes' expf and
// tanhf: exp from x = n ln2 + r, a polynomial in r and 2^n in the exponent bits; tanh from a
// polynomial below |x| = 0.625, where 1 - 2 / (e^2x + 1) would cancel, and from exp above).
// float64 keeps the C library's, so its results stay within rounding of aten's: the float64
// gradient proofs run on them.
inline float exp_of(float x) {
    const float xs = x == x ? std::min(std::max(x, -87.0f), 88.0f) : 0.0f;  // NaN: any finite stand-in
    const float n = std::floor(xs * 1.44269504088896341f + 0.5f);
    const float r = xs - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x == x ? p * scale : x;
}
inline double exp_of(double x) { return std::exp(x); }

inline float tanh_of(float x) {
    const float a = std::abs(x), z = x * x;
    const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                          + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    const float large = std::copysign(1.0f - 2.0f / (exp_of(2.0f * a) + 1.0f), x);
    return a < 0.625f ? small : large;
}
inline double tanh_of(double x) { return std::tanh(x); }

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + exp_of(-x)); }

void check(const torch::Tensor& t, const torch::Tensor& like, int64_t width, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type(), name,
                ": a CPU tensor of the gates' dtype");
    TORCH_CHECK(t.dim() == 2 && t.size(0) == like.size(0) && t.size(1) == width && t.stride(1) == 1,
                name, ": (B, ", width, ") with unit stride along its rows");
}

// One row of the forward step: a (4H) activated in place, after p (4H, or null) is added into it;
// c, tc, h (H) written.
template <typename T>
void forward_row(T* __restrict__ a, const T* __restrict__ p, const T* __restrict__ cp, T* __restrict__ c,
                 T* __restrict__ tc, T* __restrict__ h, int64_t H) {
    if (p)
        for (int64_t j = 0; j < 4 * H; ++j) a[j] += p[j];
    for (int64_t j = 0; j < 2 * H; ++j) a[j] = sigmoid(a[j]);  // i, f
    for (int64_t j = 2 * H; j < 3 * H; ++j) a[j] = tanh_of(a[j]);  // g
    for (int64_t j = 3 * H; j < 4 * H; ++j) a[j] = sigmoid(a[j]);  // o
    const T *i = a, *f = a + H, *g = a + 2 * H, *o = a + 3 * H;
    for (int64_t j = 0; j < H; ++j) {
        c[j] = f[j] * cp[j] + i[j] * g[j];
        tc[j] = tanh_of(c[j]);
        h[j] = o[j] * tc[j];
    }
}

// One row of the backward step: p (H, or null) added into dh in place; da (4H) written, dc (H)
// carried back one step in place.
template <typename T>
void backward_row(const T* __restrict__ gates, const T* __restrict__ cp, const T* __restrict__ tc,
                  T* __restrict__ dh, const T* __restrict__ p, T* __restrict__ dc, T* __restrict__ da, int64_t H) {
    if (p)
        for (int64_t j = 0; j < H; ++j) dh[j] += p[j];
    const T *i = gates, *f = gates + H, *g = gates + 2 * H, *o = gates + 3 * H;
    for (int64_t j = 0; j < H; ++j) {
        const T dcj = dc[j] + dh[j] * o[j] * (T(1) - tc[j] * tc[j]);  // c_t feeds h_t too
        da[j] = dcj * g[j] * i[j] * (T(1) - i[j]);
        da[H + j] = dcj * cp[j] * f[j] * (T(1) - f[j]);
        da[2 * H + j] = dcj * i[j] * (T(1) - g[j] * g[j]);
        da[3 * H + j] = dh[j] * tc[j] * o[j] * (T(1) - o[j]);
        dc[j] = dcj * f[j];
    }
}

template <typename T>
T* row(const torch::Tensor& t, int64_t b) { return t.data_ptr<T>() + b * t.stride(0); }

// An optional addend's row, or null without one.
template <typename T>
const T* row(const c10::optional<torch::Tensor>& t, int64_t b) { return t ? row<T>(*t, b) : nullptr; }

// Rows per thread: at least aten's own grain of element-wise work (32768 elements), so a small
// step (sampling's one row) never pays for a hand-off.
int64_t row_grain(int64_t width) { return std::max<int64_t>(1, (at::internal::GRAIN_SIZE + width - 1) / width); }

}  // namespace

// a: the gates' pre-activations, activated in place after p (the recurrent product W_hh h_{t-1},
// when it comes apart) is added into them; c_prev: c_{t-1}; writes c_t, tanh(c_t), h_t.
void forward_step(torch::Tensor a, torch::Tensor c_prev, torch::Tensor c, torch::Tensor tc, torch::Tensor h,
                  c10::optional<torch::Tensor> p) {
    const int64_t B = a.size(0), H = c.size(1);
    check(a, a, 4 * H, "a");
    if (p) check(*p, a, 4 * H, "p");
    check(c_prev, a, H, "c_prev"), check(c, a, H, "c"), check(tc, a, H, "tc"), check(h, a, H, "h");
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "lstm_forward_step", [&] {
        at::parallel_for(0, B, row_grain(4 * H), [&](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; ++b)
                forward_row(row<scalar_t>(a, b), row<scalar_t>(p, b), row<scalar_t>(c_prev, b), row<scalar_t>(c, b),
                            row<scalar_t>(tc, b), row<scalar_t>(h, b), H);
        });
    });
}

// gates: the activated (i, f, g, o); dh: dL/dh_t from above, to which p (the recurrent part, when it
// comes apart) is added in place; dc: dL/dc_t from later steps, in place -> dL/dc_{t-1}; writes da,
// the gradient of the gates' pre-activations.
void backward_step(torch::Tensor gates, torch::Tensor c_prev, torch::Tensor tc, torch::Tensor dh,
                   torch::Tensor dc, torch::Tensor da, c10::optional<torch::Tensor> p) {
    const int64_t B = gates.size(0), H = tc.size(1);
    check(gates, gates, 4 * H, "gates"), check(da, gates, 4 * H, "da");
    check(c_prev, gates, H, "c_prev"), check(tc, gates, H, "tc"), check(dh, gates, H, "dh");
    check(dc, gates, H, "dc");
    if (p) check(*p, gates, H, "p");
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward_step", [&] {
        at::parallel_for(0, B, row_grain(4 * H), [&](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; ++b)
                backward_row(row<scalar_t>(gates, b), row<scalar_t>(c_prev, b), row<scalar_t>(tc, b),
                             row<scalar_t>(dh, b), row<scalar_t>(p, b), row<scalar_t>(dc, b), row<scalar_t>(da, b),
                             H);
        });
    });
}

namespace {

// oneDNN's product with a weight it packed once (packed_gemm.py's _onednn_accumulate), called
// through torch's dispatcher: the same op, arguments and bits as from Python, at a fraction of
// the cost of a call from Python.
torch::Tensor onednn_product(const torch::Tensor& a, const torch::Tensor& packed) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{a, packed, c10::IValue(), c10::IValue(std::string("none")),
                            c10::IValue(c10::List<c10::optional<at::Scalar>>()), c10::IValue()};
    op.callBoxed(&stack);
    return stack[0].toTensor();
}

// The (T, B, width) buffer's T steps as (B, width) views.
std::vector<torch::Tensor> steps_of(const torch::Tensor& all, int64_t B) {
    return all.view({-1, B, all.size(1)}).unbind(0);
}

}  // namespace

// fused.py's forward loop over all T steps where oneDNN makes the product apart: per step
// forward_step(gates_t, c_{t-1}, c_t, tc_t, h_t, h_{t-1} W_hh^T). From Python, each step's calls
// left gaps of tens of microseconds between parallel regions, long enough for OpenMP's threads to
// stop spinning and sleep, and waking them cost more than the gap (data/results/performance-cpu.md).
void forward_loop(torch::Tensor gates, torch::Tensor h0, torch::Tensor c0, torch::Tensor h_all, torch::Tensor c_all,
                  torch::Tensor tc_all, torch::Tensor packed) {
    const int64_t B = h0.size(0);
    const auto a = steps_of(gates, B), h = steps_of(h_all, B), c = steps_of(c_all, B), tc = steps_of(tc_all, B);
    for (size_t t = 0; t < a.size(); ++t)
        forward_step(a[t], t ? c[t - 1] : c0, c[t], tc[t], h[t], onednn_product(t ? h[t - 1] : h0, packed));
}

// fused.py's backward loop the same way: per step, from t = T-1 down, backward_step with the recurrent
// part da_{t+1} W_hh made apart; dc is carried back in place, as in Python.
void backward_loop(torch::Tensor gates, torch::Tensor c0, torch::Tensor c_all, torch::Tensor tc_all,
                   torch::Tensor dh_all, torch::Tensor dc, torch::Tensor da_all, torch::Tensor packed) {
    const int64_t B = c0.size(0);
    const auto a = steps_of(gates, B), c = steps_of(c_all, B), tc = steps_of(tc_all, B);
    const auto dh = steps_of(dh_all, B), da = steps_of(da_all, B);
    c10::optional<torch::Tensor> recurrent;
    for (int64_t t = int64_t(a.size()) - 1; t >= 0; --t) {
        backward_step(a[t], t ? c[t - 1] : c0, tc[t], dh[t], dc, da[t], recurrent);
        if (t) recurrent = onednn_product(da[t], packed);
    }
}

void register_sample_loop(py::module& m);  // sample_loop.cpp, built into the same module

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward_step", &forward_step, "the LSTM's element-wise forward step, in place", py::arg("a"),
          py::arg("c_prev"), py::arg("c"), py::arg("tc"), py::arg("h"), py::arg("p") = py::none());
    m.def("backward_step", &backward_step, "the LSTM's element-wise backward step", py::arg("gates"),
          py::arg("c_prev"), py::arg("tc"), py::arg("dh"), py::arg("dc"), py::arg("da"), py::arg("p") = py::none());
    m.def("forward_loop", &forward_loop, "the LSTM's forward over all T steps, oneDNN's product made apart",
          py::arg("gates"), py::arg("h0"), py::arg("c0"), py::arg("h_all"), py::arg("c_all"), py::arg("tc_all"),
          py::arg("packed"), py::call_guard<py::gil_scoped_release>());
    m.def("backward_loop", &backward_loop, "the LSTM's BPTT over all T steps, oneDNN's product made apart",
          py::arg("gates"), py::arg("c0"), py::arg("c_all"), py::arg("tc_all"), py::arg("dh_all"), py::arg("dc"),
          py::arg("da_all"), py::arg("packed"), py::call_guard<py::gil_scoped_release>());
    register_sample_loop(m);
}
