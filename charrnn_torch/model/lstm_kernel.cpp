// The LSTM's element-wise step maths as two compiled CPU kernels (impl fused_cpp, compiled.py).
// Gates are nn.LSTM's (i, f, g, o), rows of B, each row 4H wide; every other buffer is (B, H)
// with its own row stride. Each kernel is one pass over the B rows, split between torch's threads
// (its own OpenMP runtime: compiled.py links that one) where there are enough rows, where fused's
// aten version is 7 (forward) and 11 (backward) separately dispatched passes. Each row is the
// same arithmetic on any thread, so the split never changes a bit. For a loop of many steps, each
// cell's loops (forward_loop and backward_loop for the LSTM, tanh_* and gru_* for the others) run all
// T steps of a direction in one parallel region instead: each thread multiplies for a share of the
// hidden units, then steps a block of the rows. C++17.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

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

// n hidden units of one row of the forward step. a: their gate pre-activations, gate k at a + k * ga,
// activated in place after p (gate k at p + k * gp, or null) is added into them; c, tc, h (n) written.
template <typename T>
void forward_units(T* __restrict__ a, int64_t ga, const T* __restrict__ p, int64_t gp, const T* __restrict__ cp,
                   T* __restrict__ c, T* __restrict__ tc, T* __restrict__ h, int64_t n) {
    for (int k = 0; k < 4; ++k) {
        T* __restrict__ x = a + k * ga;
        if (p)
            for (int64_t j = 0; j < n; ++j) x[j] += p[k * gp + j];
        if (k == 2)
            for (int64_t j = 0; j < n; ++j) x[j] = tanh_of(x[j]);  // g
        else
            for (int64_t j = 0; j < n; ++j) x[j] = sigmoid(x[j]);  // i, f, o
    }
    const T *i = a, *f = a + ga, *g = a + 2 * ga, *o = a + 3 * ga;
    for (int64_t j = 0; j < n; ++j) {
        c[j] = f[j] * cp[j] + i[j] * g[j];
        tc[j] = tanh_of(c[j]);
        h[j] = o[j] * tc[j];
    }
}

// One row of the forward step: a (4H) activated in place, after p (4H, or null) is added into it;
// c, tc, h (H) written.
template <typename T>
void forward_row(T* a, const T* p, const T* cp, T* c, T* tc, T* h, int64_t H) {
    forward_units(a, H, p, H, cp, c, tc, h, H);
}

// n hidden units of one row of the backward step: p (n, or null) added into dh in place; their da
// (gate k at da + k * ga, as in gates) written, dc (n) carried back one step in place.
template <typename T>
void backward_units(const T* __restrict__ gates, int64_t ga, const T* __restrict__ cp, const T* __restrict__ tc,
                    T* __restrict__ dh, const T* __restrict__ p, T* __restrict__ dc, T* __restrict__ da, int64_t n) {
    if (p)
        for (int64_t j = 0; j < n; ++j) dh[j] += p[j];
    const T *i = gates, *f = gates + ga, *g = gates + 2 * ga, *o = gates + 3 * ga;
    for (int64_t j = 0; j < n; ++j) {
        const T dcj = dc[j] + dh[j] * o[j] * (T(1) - tc[j] * tc[j]);  // c_t feeds h_t too
        da[j] = dcj * g[j] * i[j] * (T(1) - i[j]);
        da[ga + j] = dcj * cp[j] * f[j] * (T(1) - f[j]);
        da[2 * ga + j] = dcj * i[j] * (T(1) - g[j] * g[j]);
        da[3 * ga + j] = dh[j] * tc[j] * o[j] * (T(1) - o[j]);
        dc[j] = dcj * f[j];
    }
}

// One row of the backward step: p (H, or null) added into dh in place; da (4H) written, dc (H)
// carried back one step in place.
template <typename T>
void backward_row(const T* gates, const T* cp, const T* tc, T* dh, const T* p, T* dc, T* da, int64_t H) {
    backward_units(gates, H, cp, tc, dh, p, dc, da, H);
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

// A pause for a thread that waits on another for a few microseconds at a time; after ~4,096 turns
// (~50-100 us) the other thread has lost its core, so this one gives its own up. sample_loop.cpp's too.
void relax(int64_t spins) {
    if (spins > 4096) {
        std::this_thread::yield();
        return;
    }
#if defined(__x86_64__) || defined(_M_X64)
    _mm_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

namespace {

// oneDNN's ops through torch's dispatcher: the same ops and bits as from Python, at a fraction of
// the cost of a call from Python, and callable from any thread.
torch::Tensor onednn_pack(const torch::Tensor& W, int64_t rows) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
    torch::jit::Stack stack{W, c10::IValue(rows)};
    op.callBoxed(&stack);
    return stack[0].toTensor();
}

torch::Tensor onednn_product(const torch::Tensor& a, const torch::Tensor& packed) {  // a @ W^T
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{a, packed, c10::IValue(), c10::IValue(std::string("none")),
                            c10::IValue(c10::List<c10::optional<at::Scalar>>()), c10::IValue()};
    op.callBoxed(&stack);
    return stack[0].toTensor();
}

// Hidden units [begin, begin + n) and their slice of W_hh, ready for their products: one share of a
// loop's work, on one thread.
struct Share {
    int64_t begin, n;
    torch::Tensor W;  // forward: h (B, H) -> the share's G gates (B, G n); backward: da (B, G H) -> (B, n)
    bool packed;      // W as oneDNN packed it (a @ W^T), else a plain matrix for at::mm (a @ W)

    torch::Tensor product(const torch::Tensor& a) const { return packed ? onednn_product(a, W) : at::mm(a, W); }
};

// One share of the H units for each of torch's threads (fewer where H is small), each a multiple of 16
// wide (full vectors), the last taking the rest. onednn: W_hh is float32 and its products are oneDNN's
// (packed_gemm.py's rule), each share packed once here; else at::mm multiplies.
std::vector<Share> shares_of(const torch::Tensor& W_hh, int64_t B, bool backward, bool onednn) {
    const int64_t H = W_hh.size(1), G = W_hh.size(0) / H, P = std::max<int64_t>(1, at::get_num_threads());
    const int64_t width = std::max<int64_t>(16, (H / P + 15) / 16 * 16);
    std::vector<Share> shares;
    const auto gates = W_hh.view({G, H, H});  // gate k's rows of W_hh
    const auto W_hh_t = backward ? W_hh.t().contiguous() : torch::Tensor();  // one transpose: rows copy fast
    for (int64_t begin = 0; begin < H; begin += width) {
        const int64_t n = std::min(width, H - begin);
        // The share's rows of W_hh as (out, in): its G n gate rows, or its n columns of W_hh transposed.
        const auto W = (backward ? W_hh_t.narrow(0, begin, n) : gates.narrow(1, begin, n).reshape({G * n, H}))
                           .contiguous();
        shares.push_back({begin, n, onednn ? onednn_pack(W, B) : W.t().contiguous(), onednn});
    }
    return shares;
}

// For t = 0 .. T-1 in one parallel region of torch's threads: product(k, t) for every share k, then,
// once all are made, rows(k, t) for every row block k (the B rows split as the units are), and the
// next t once all rows are done. Each thread takes its k; the waits spin (with relax): a phase takes
// tens of microseconds, less than waking a sleeping thread costs.
template <typename Product, typename Rows>
void shared_steps(int64_t P, int64_t T, const Product& product, const Rows& rows) {
    std::atomic<int64_t> done{0};
    std::atomic<bool> failed{false};
    const at::ThreadLocalState caller;  // grad mode and the like are a thread's own: the others take ours
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
        at::ThreadLocalStateGuard as_caller(caller);
        int64_t phases = 0;
        const auto all_done = [&] {  // false: another thread failed (parallel_for raises its error)
            done.fetch_add(end - begin, std::memory_order_acq_rel);
            ++phases;
            for (int64_t spins = 0; done.load(std::memory_order_acquire) < P * phases; ++spins) {
                if (failed.load(std::memory_order_relaxed)) return false;
                relax(spins);
            }
            return true;
        };
        try {
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t k = begin; k < end; ++k) product(k, t);
                if (!all_done()) return;
                for (int64_t k = begin; k < end; ++k) rows(k, t);
                if (!all_done()) return;
            }
        } catch (...) {
            failed = true;  // the others stop waiting
            throw;
        }
    });
}

template <typename T>
T* at_row(const torch::Tensor& t, int64_t row) { return t.data_ptr<T>() + row * t.stride(0); }

// f(r, prev, share, product) for each row b of row block k (of as many as there are shares) at step t,
// and each share: r is the row's index in the (T*B, .) buffers, prev its row of the state carried
// from t-1 (prev_all's row r - B, or x0's row b at t = 0: c for the LSTM, h otherwise), product the
// share's product's row b (null where there is none).
template <typename T, typename F>
void each_row_and_share(const std::vector<Share>& shares, const std::vector<torch::Tensor>& products, int64_t k,
                        int64_t t, int64_t B, const torch::Tensor& prev_all, const torch::Tensor& x0, const F& f) {
    const int64_t P = int64_t(shares.size());
    for (int64_t b = k * B / P; b < (k + 1) * B / P; ++b) {
        const int64_t r = t * B + b;
        const T* prev = t ? at_row<T>(prev_all, r - B) : at_row<T>(x0, b);
        for (int64_t j = 0; j < P; ++j) {
            const torch::Tensor& p = products[j];
            f(r, prev, shares[j], p.defined() ? p.data_ptr<T>() + b * p.size(1) : nullptr);
        }
    }
}

// A forward loop over T steps: each share's product of h_{t-1} (h_all's rows of t-1, or h0), then f
// (each_row_and_share's) for the thread's rows.
template <typename T, typename F>
void forward_steps(const std::vector<Share>& shares, int64_t B, int64_t steps, const torch::Tensor& h_all,
                   const torch::Tensor& h0, const torch::Tensor& prev_all, const torch::Tensor& x0, const F& f) {
    std::vector<torch::Tensor> p(shares.size());
    shared_steps(
        int64_t(shares.size()), steps,
        [&](int64_t k, int64_t t) { p[k] = shares[k].product(t ? h_all.narrow(0, (t - 1) * B, B) : h0); },
        [&](int64_t k, int64_t t) { each_row_and_share<T>(shares, p, k, t, B, prev_all, x0, f); });
}

// A backward loop from t = T-1 down: each share's columns of grad_{t+1} W_hh (grad_all's rows of t+1;
// none at t = T-1), then f for the thread's rows.
template <typename T, typename F>
void backward_steps(const std::vector<Share>& shares, int64_t B, int64_t steps, const torch::Tensor& grad_all,
                    const torch::Tensor& prev_all, const torch::Tensor& x0, const F& f) {
    std::vector<torch::Tensor> p(shares.size());
    shared_steps(
        int64_t(shares.size()), steps,
        [&](int64_t k, int64_t step) {
            const int64_t t = steps - 1 - step;
            p[k] = t < steps - 1 ? shares[k].product(grad_all.narrow(0, (t + 1) * B, B)) : torch::Tensor();
        },
        [&](int64_t k, int64_t step) { each_row_and_share<T>(shares, p, k, steps - 1 - step, B, prev_all, x0, f); });
}

void check_loop(std::initializer_list<const torch::Tensor*> tensors, bool onednn, const char* name) {
    const auto dtype = (*tensors.begin())->scalar_type();
    for (const auto* t : tensors)
        TORCH_CHECK(t->is_contiguous() && t->scalar_type() == dtype && t->device().is_cpu(), name,
                    ": contiguous CPU tensors of one dtype");
    TORCH_CHECK(dtype == (onednn ? at::kFloat : dtype) && (dtype == at::kFloat || dtype == at::kDouble), name,
                ": float32 or float64 (float32 for oneDNN's products)");
}

}  // namespace

// fused.py's LSTM forward over all T steps (impl fused_cpp): gates (T*B, 4H) activated in place,
// h_all, c_all, tc_all (T*B, H) written. Each step, each of torch's threads makes one share's product,
// h_{t-1} times its units' rows of W_hh (on that thread alone; oneDNN's, packed once, where `onednn`),
// then the step maths of its block of rows, adding each share's product as it reads the gates. The
// whole loop is one parallel region: from Python, a step's two regions (the GEMM's and the kernel's)
// left gaps long enough for OpenMP's threads to fall asleep under the package's short spin, and
// waking them cost more than the gap (data/results/lstm-one-region.md).
void forward_loop(torch::Tensor gates, torch::Tensor h0, torch::Tensor c0, torch::Tensor h_all, torch::Tensor c_all,
                  torch::Tensor tc_all, torch::Tensor W_hh, bool onednn) {
    const int64_t B = h0.size(0), H = h0.size(1), T = gates.size(0) / B;
    check_loop({&gates, &h0, &c0, &h_all, &c_all, &tc_all, &W_hh}, onednn, "forward_loop");
    TORCH_CHECK(gates.sizes() == at::IntArrayRef({T * B, 4 * H}) && h_all.size(0) == T * B && W_hh.size(0) == 4 * H,
                "forward_loop: gates (T*B, 4H), h_all (T*B, H), W_hh (4H, H)");
    const auto shares = shares_of(W_hh, B, false, onednn);
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_forward_loop", [&] {
        // each share's product: its units' i, f, g, o, (B, 4n)
        forward_steps<scalar_t>(shares, B, T, h_all, h0, c_all, c0, [&](int64_t r, const scalar_t* cp, const Share& s,
                                                                        const scalar_t* p) {
            const int64_t u = s.begin;
            forward_units(at_row<scalar_t>(gates, r) + u, H, p, s.n, cp + u, at_row<scalar_t>(c_all, r) + u,
                          at_row<scalar_t>(tc_all, r) + u, at_row<scalar_t>(h_all, r) + u, s.n);
        });
    });
}

// fused.py's LSTM BPTT over all T steps the same way, from t = T-1 down: each thread makes one share's
// columns of da_{t+1} W_hh, then for its rows adds them into dh_t and writes da_t, carrying dc back
// in place. dh_all: dL/dh_t from above, gaining the recurrent part in place.
void backward_loop(torch::Tensor gates, torch::Tensor c0, torch::Tensor c_all, torch::Tensor tc_all,
                   torch::Tensor dh_all, torch::Tensor dc, torch::Tensor da_all, torch::Tensor W_hh, bool onednn) {
    const int64_t B = c0.size(0), H = c0.size(1), T = gates.size(0) / B;
    check_loop({&gates, &c0, &c_all, &tc_all, &dh_all, &dc, &da_all, &W_hh}, onednn, "backward_loop");
    TORCH_CHECK(gates.sizes() == da_all.sizes() && gates.size(1) == 4 * H && dh_all.size(0) == T * B,
                "backward_loop: gates and da_all (T*B, 4H), dh_all (T*B, H)");
    const auto shares = shares_of(W_hh, B, true, onednn);
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward_loop", [&] {
        // p: the share's columns of da_{t+1} W_hh, (B, n)
        backward_steps<scalar_t>(shares, B, T, da_all, c_all, c0, [&](int64_t r, const scalar_t* cp, const Share& s,
                                                                      const scalar_t* p) {
            const int64_t u = s.begin;
            backward_units(at_row<scalar_t>(gates, r) + u, H, cp + u, at_row<scalar_t>(tc_all, r) + u,
                           at_row<scalar_t>(dh_all, r) + u, p, at_row<scalar_t>(dc, r % B) + u,
                           at_row<scalar_t>(da_all, r) + u, s.n);
        });
    });
}

// n hidden units of one row of the tanh cell's step, the product made apart: a = tanh(a + p), in place.
template <typename T>
void tanh_forward_units(T* __restrict__ a, const T* __restrict__ p, int64_t n) {
    for (int64_t j = 0; j < n; ++j) a[j] = tanh_of(a[j] + p[j]);
}

// n units of one row of its BPTT: g, dL/dh_t from above, gains p (the recurrent part, or null) and
// becomes dL/d(pre-activation) in place, through h = tanh(.).
template <typename T>
void tanh_backward_units(T* __restrict__ g, const T* __restrict__ h, const T* __restrict__ p, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        const T dh = p ? g[j] + p[j] : g[j];
        g[j] = dh * (T(1) - h[j] * h[j]);
    }
}

// fused.py's tanh recurrence over all T steps (impl fused_cpp), as forward_loop runs the LSTM's:
// pre (T*B, H) = W_xh x + b_h becomes h_t in place.
void tanh_forward_loop(torch::Tensor pre, torch::Tensor h0, torch::Tensor W_hh, bool onednn) {
    const int64_t B = h0.size(0), H = h0.size(1), T = pre.size(0) / B;
    check_loop({&pre, &h0, &W_hh}, onednn, "tanh_forward_loop");
    TORCH_CHECK(pre.sizes() == at::IntArrayRef({T * B, H}) && W_hh.sizes() == at::IntArrayRef({H, H}),
                "tanh_forward_loop: pre (T*B, H), W_hh (H, H)");
    const auto shares = shares_of(W_hh, B, false, onednn);
    AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "tanh_forward_loop", [&] {
        // p: the share's columns of h_{t-1} W_hh^T, (B, n)
        forward_steps<scalar_t>(shares, B, T, pre, h0, pre, h0, [&](int64_t r, const scalar_t*, const Share& s,
                                                                    const scalar_t* p) {
            tanh_forward_units(at_row<scalar_t>(pre, r) + s.begin, p, s.n);
        });
    });
}

// Its BPTT the same way, from t = T-1 down: g (T*B, H), dL/dh_t from above, becomes dL/d(pre-activation_t)
// in place; h_all (T*B, H) is the forward's h_t.
void tanh_backward_loop(torch::Tensor g, torch::Tensor h_all, torch::Tensor h0, torch::Tensor W_hh, bool onednn) {
    const int64_t B = h0.size(0), H = h0.size(1), T = g.size(0) / B;
    check_loop({&g, &h_all, &h0, &W_hh}, onednn, "tanh_backward_loop");
    TORCH_CHECK(g.sizes() == at::IntArrayRef({T * B, H}) && h_all.sizes() == g.sizes() &&
                    W_hh.sizes() == at::IntArrayRef({H, H}),
                "tanh_backward_loop: g and h_all (T*B, H), W_hh (H, H)");
    const auto shares = shares_of(W_hh, B, true, onednn);
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "tanh_backward_loop", [&] {
        // p: the share's columns of g_{t+1} W_hh, (B, n)
        backward_steps<scalar_t>(shares, B, T, g, h_all, h0, [&](int64_t r, const scalar_t*, const Share& s,
                                                                 const scalar_t* p) {
            tanh_backward_units(at_row<scalar_t>(g, r) + s.begin, at_row<scalar_t>(h_all, r) + s.begin, p, s.n);
        });
    });
}

// n hidden units of one row of the GRU's forward step (fused.py's gru_step, with the product made
// apart): a, their pre-activations W_xh x + b_h (gate k at a + k * H), become r, z, n in place; p,
// their W_hh h_{t-1} (gate k at p + k * n); ah (as a) receives W_hh h_{t-1} + (0, 0, b_hn), which the
// backward reads; h = n + z (h_{t-1} - n).
template <typename T>
void gru_forward_units(T* __restrict__ a, T* __restrict__ ah, int64_t H, const T* __restrict__ p,
                       const T* __restrict__ b_hn, const T* __restrict__ h_prev, T* __restrict__ h, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        const T ar = p[j], az = p[n + j], an = p[2 * n + j] + b_hn[j];
        ah[j] = ar, ah[H + j] = az, ah[2 * H + j] = an;
        const T r = sigmoid(a[j] + ar), z = sigmoid(a[H + j] + az);
        const T g = tanh_of(a[2 * H + j] + r * an);
        a[j] = r, a[H + j] = z, a[2 * H + j] = g;
        h[j] = (h_prev[j] - g) * z + g;
    }
}

// n hidden units of one row of the GRU's backward step (fused.py's _GRURecurrence.backward): dh is
// dL/dh_t from above, to which p (the recurrent part, or null) and carry (z_{t+1} dL/dh_{t+1}, the
// path that skips W_hh) are added; dax (as the gates) receives dL/d(W_xh x + b_h), dah dL/d(W_hh h +
// (0, 0, b_hn)); carry becomes z_t dL/dh_t.
template <typename T>
void gru_backward_units(const T* __restrict__ gates, const T* __restrict__ ah, int64_t H, const T* __restrict__ h_prev,
                        const T* __restrict__ dh_above, const T* __restrict__ p, T* __restrict__ carry,
                        T* __restrict__ dax, T* __restrict__ dah, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        const T dh = p ? dh_above[j] + carry[j] + p[j] : dh_above[j];
        const T r = gates[j], z = gates[H + j], g = gates[2 * H + j];
        const T zdh = dh * z;
        const T dn = (dh - zdh) * (T(1) - g * g);
        const T dz = (h_prev[j] - g) * dh * (T(1) - z) * z;
        const T dr = dn * ah[2 * H + j] * (T(1) - r) * r;
        dax[j] = dr, dax[H + j] = dz, dax[2 * H + j] = dn;
        dah[j] = dr, dah[H + j] = dz, dah[2 * H + j] = dn * r;
        carry[j] = zdh;
    }
}

// fused.py's GRU forward over all T steps (impl fused_cpp), as forward_loop runs the LSTM's: gates
// (T*B, 3H) = W_xh x + b_h become r, z, n in place; ah_all (T*B, 3H) receives W_hh h_{t-1} + (0, 0,
// b_hn), h_all (T*B, H) h_t.
void gru_forward_loop(torch::Tensor gates, torch::Tensor ah_all, torch::Tensor h0, torch::Tensor h_all,
                      torch::Tensor W_hh, torch::Tensor b_hn, bool onednn) {
    const int64_t B = h0.size(0), H = h0.size(1), T = gates.size(0) / B;
    check_loop({&gates, &ah_all, &h0, &h_all, &W_hh, &b_hn}, onednn, "gru_forward_loop");
    TORCH_CHECK(gates.sizes() == at::IntArrayRef({T * B, 3 * H}) && ah_all.sizes() == gates.sizes() &&
                    h_all.size(0) == T * B && W_hh.size(0) == 3 * H && b_hn.numel() == H,
                "gru_forward_loop: gates and ah_all (T*B, 3H), h_all (T*B, H), W_hh (3H, H), b_hn (H)");
    const auto shares = shares_of(W_hh, B, false, onednn);
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_forward_loop", [&] {
        // p: the share's W_hr h, W_hz h, W_hn h, (B, 3n)
        forward_steps<scalar_t>(shares, B, T, h_all, h0, h_all, h0, [&](int64_t r, const scalar_t* hp, const Share& s,
                                                                        const scalar_t* p) {
            const int64_t u = s.begin;
            gru_forward_units(at_row<scalar_t>(gates, r) + u, at_row<scalar_t>(ah_all, r) + u, H, p,
                              b_hn.data_ptr<scalar_t>() + u, hp + u, at_row<scalar_t>(h_all, r) + u, s.n);
        });
    });
}

// fused.py's GRU BPTT over all T steps the same way, from t = T-1 down: dax_all and dah_all (T*B, 3H)
// written; carry (B, H) ends as z_0 dL/dh_0, dh0's part that skips W_hh.
void gru_backward_loop(torch::Tensor gates, torch::Tensor ah_all, torch::Tensor h0, torch::Tensor h_all,
                       torch::Tensor dh_all, torch::Tensor dax_all, torch::Tensor dah_all, torch::Tensor carry,
                       torch::Tensor W_hh, bool onednn) {
    const int64_t B = h0.size(0), H = h0.size(1), T = gates.size(0) / B;
    check_loop({&gates, &ah_all, &h0, &h_all, &dh_all, &dax_all, &dah_all, &carry, &W_hh}, onednn,
               "gru_backward_loop");
    TORCH_CHECK(gates.sizes() == at::IntArrayRef({T * B, 3 * H}) && ah_all.sizes() == gates.sizes() &&
                    dax_all.sizes() == gates.sizes() && dah_all.sizes() == gates.sizes() &&
                    dh_all.sizes() == h_all.sizes() && carry.sizes() == h0.sizes(),
                "gru_backward_loop: (T*B, 3H) gates, ah_all, dax_all, dah_all; (T*B, H) h_all, dh_all; (B, H) carry");
    const auto shares = shares_of(W_hh, B, true, onednn);
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward_loop", [&] {
        // p: the share's columns of dah_{t+1} W_hh, (B, n); none (and no carry) at t = T-1
        backward_steps<scalar_t>(shares, B, T, dah_all, h_all, h0, [&](int64_t r, const scalar_t* hp, const Share& s,
                                                                       const scalar_t* p) {
            const int64_t u = s.begin;
            gru_backward_units(at_row<scalar_t>(gates, r) + u, at_row<scalar_t>(ah_all, r) + u, H, hp + u,
                               at_row<scalar_t>(dh_all, r) + u, p, at_row<scalar_t>(carry, r % B) + u,
                               at_row<scalar_t>(dax_all, r) + u, at_row<scalar_t>(dah_all, r) + u, s.n);
        });
    });
}

void register_sample_loop(py::module& m);  // sample_loop.cpp, built into the same module

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward_step", &forward_step, "the LSTM's element-wise forward step, in place", py::arg("a"),
          py::arg("c_prev"), py::arg("c"), py::arg("tc"), py::arg("h"), py::arg("p") = py::none());
    m.def("backward_step", &backward_step, "the LSTM's element-wise backward step", py::arg("gates"),
          py::arg("c_prev"), py::arg("tc"), py::arg("dh"), py::arg("dc"), py::arg("da"), py::arg("p") = py::none());
    m.def("forward_loop", &forward_loop, "the LSTM's forward over all T steps, the units shared between threads",
          py::arg("gates"), py::arg("h0"), py::arg("c0"), py::arg("h_all"), py::arg("c_all"), py::arg("tc_all"),
          py::arg("W_hh"), py::arg("onednn"), py::call_guard<py::gil_scoped_release>());
    m.def("backward_loop", &backward_loop, "the LSTM's BPTT over all T steps, the units shared between threads",
          py::arg("gates"), py::arg("c0"), py::arg("c_all"), py::arg("tc_all"), py::arg("dh_all"), py::arg("dc"),
          py::arg("da_all"), py::arg("W_hh"), py::arg("onednn"), py::call_guard<py::gil_scoped_release>());
    m.def("tanh_forward_loop", &tanh_forward_loop, "the tanh cell's forward over all T steps, the units shared "
          "between threads", py::arg("pre"), py::arg("h0"), py::arg("W_hh"), py::arg("onednn"),
          py::call_guard<py::gil_scoped_release>());
    m.def("tanh_backward_loop", &tanh_backward_loop, "the tanh cell's BPTT over all T steps, the units shared "
          "between threads", py::arg("g"), py::arg("h_all"), py::arg("h0"), py::arg("W_hh"), py::arg("onednn"),
          py::call_guard<py::gil_scoped_release>());
    m.def("gru_forward_loop", &gru_forward_loop, "the GRU's forward over all T steps, the units shared between threads",
          py::arg("gates"), py::arg("ah_all"), py::arg("h0"), py::arg("h_all"), py::arg("W_hh"), py::arg("b_hn"),
          py::arg("onednn"), py::call_guard<py::gil_scoped_release>());
    m.def("gru_backward_loop", &gru_backward_loop, "the GRU's BPTT over all T steps, the units shared between threads",
          py::arg("gates"), py::arg("ah_all"), py::arg("h0"), py::arg("h_all"), py::arg("dh_all"), py::arg("dax_all"),
          py::arg("dah_all"), py::arg("carry"), py::arg("W_hh"), py::arg("onednn"),
          py::call_guard<py::gil_scoped_release>());
    register_sample_loop(m);
}
