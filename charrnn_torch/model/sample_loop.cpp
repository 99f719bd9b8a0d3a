// sample_ids' per-character loop (sampling/sample.py) as one compiled call per block of characters
// (impl fused_cpp, compiled.py): the Stepper's step (model/stepper.py), filter_probs and pick, as the
// same aten calls on the same buffers, so the same ids for the same uniforms, without Python's cost
// per call. What each call mirrors is named beside it. C++17.
//
// With two threads, each character's draw (the head, filter_probs, pick) runs beside the next step's
// recurrent products h_{t-1} W_hh^T, which do not depend on the id being drawn: the two longest parts
// of a character overlap. The tanh cell and the LSTM then add the product into W_xh x_t + b_h after
// the GEMM (beta = 0), not inside it (beta = 1): SampleLoop checks once, on its own buffers, that this
// BLAS gives the same bits both ways, and the head's too inside a parallel region, else it runs serially.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <limits>
#include <vector>

// lstm_kernel.cpp's forward step: what the Stepper runs for an LSTM layer of impl fused_cpp.
void forward_step(torch::Tensor a, torch::Tensor c_prev, torch::Tensor c, torch::Tensor tc, torch::Tensor h,
                  c10::optional<torch::Tensor> p);

namespace {

torch::Tensor get(const py::dict& d, const char* key) {
    return d.contains(key) && !d[key].is_none() ? d[key].cast<torch::Tensor>() : torch::Tensor();
}

// One layer's operands, as Stepper.operands() hands them over.
struct Layer {
    int64_t gates;
    torch::Tensor table, W_xh_t, b_h, W_hh_t, a, h, c, tc, ah0, ah, h_state, c_state;
    torch::Tensor p;  // h_{t-1} W_hh^T made beside the draw (the tanh cell and the LSTM; the GRU's is ah)

    explicit Layer(const py::dict& d)
        : gates(d["gates"].cast<int64_t>()), table(get(d, "table")), W_xh_t(get(d, "W_xh_t")), b_h(get(d, "b_h")),
          W_hh_t(get(d, "W_hh_t")), a(get(d, "a")), h(get(d, "h")), c(get(d, "c")), tc(get(d, "tc")),
          ah0(get(d, "ah0")), ah(get(d, "ah")), h_state(get(d, "h_state")), c_state(get(d, "c_state")),
          p(gates == 3 ? torch::Tensor() : at::empty_like(a)) {}

    // The part of the step that needs no x: the recurrent product, for a step that then adds it.
    void recurrent_product() {
        if (gates == 3) {
            ah.copy_(ah0);
            ah.addmm_(h_state, W_hh_t);
        } else {
            at::mm_out(p, h_state, W_hh_t);
        }
    }

    // _Layer.step, then Stepper.__call__'s state copies: x is the ids (layer 0) or the layer below's h.
    // made: recurrent_product() has run for this step.
    const torch::Tensor& step(const torch::Tensor& x, bool made) {
        if (table.defined())
            at::index_select_out(a, table, 0, x);
        else
            at::addmm_out(a, b_h, x, W_xh_t);
        if (gates != 3) {
            if (made)
                a.add_(p);
            else
                a.addmm_(h_state, W_hh_t);
        }
        if (gates == 1) {
            a.tanh_();  // fused.tanh_step
        } else if (gates == 4) {
            forward_step(a, c_state, c, tc, h, c10::nullopt);
        } else {  // fused.gru_step
            const int64_t H = h.size(1);
            if (!made) recurrent_product();
            a.narrow(1, 0, 2 * H).add_(ah.narrow(1, 0, 2 * H)).sigmoid_();
            auto r = a.narrow(1, 0, H), z = a.narrow(1, H, H), n = a.narrow(1, 2 * H, H);
            n.addcmul_(r, ah.narrow(1, 2 * H, H)).tanh_();
            at::sub_out(h, h_state, n).mul_(z).add_(n);
        }
        h_state.copy_(h);
        if (c.defined()) c_state.copy_(c);
        return h;
    }
};

}  // namespace

class SampleLoop {
   public:
    SampleLoop(const std::vector<py::dict>& layers, torch::Tensor W_hy_t, torch::Tensor b_y, torch::Tensor logits,
               double temperature, int64_t top_k, double top_p, bool greedy, torch::Tensor work,
               torch::Tensor probs, torch::Tensor cdf)
        : W_hy_t_(W_hy_t), b_y_(b_y), logits_(logits), temperature_(temperature), top_k_(top_k), top_p_(top_p),
          greedy_(greedy), work_(work), probs_(probs), cdf_(cdf) {
        for (const auto& d : layers) layers_.emplace_back(d);
        overlap_ = at::get_num_threads() >= 2 && logits_.numel() <= at::internal::GRAIN_SIZE && same_bits_apart();
    }

    bool overlaps() const { return overlap_; }

    // pairs: (n, N, 1) int64, each row the next ids; us: (n, N, 1) float64 uniforms (none when greedy).
    // Each character is drawn from the logits, then stepped through the model unless it is the block's
    // last and step_last is false (the sample's last character).
    void run(torch::Tensor pairs, c10::optional<torch::Tensor> us, bool step_last) {
        torch::NoGradGuard no_grad;
        const int64_t n = pairs.size(0);
        for (int64_t i = 0; i < n; ++i) {
            auto pair = pairs.select(0, i);
            const bool stepping = i + 1 < n || step_last;
            auto draw = [&] {
                if (!head_done_) head();
                if (greedy_)
                    at::argmax_out(pair, logits_, -1, true);
                else
                    pick(filtered(), us->select(0, i), pair);
            };
            if (overlap_ && stepping) {
                beside(draw, [&] {
                    for (auto& layer : layers_) layer.recurrent_product();
                });
            } else {
                draw();
            }
            if (stepping) step(pair.select(1, 0), overlap_);
        }
    }

   private:
    // first() on this thread and second() on another of torch's, both done on return (in turn with one thread).
    template <typename F, typename G>
    static void beside(const F& first, const G& second) {
        at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
            torch::NoGradGuard no_grad;  // grad mode is a thread's own: the other thread's must be off too
            for (int64_t k = begin; k < end; ++k) k == 0 ? first() : second();
        });
    }

    // Whether the products made apart (beside the draw) give the bits of the serial step's: each
    // tanh or LSTM layer's a + h W_hh^T, and the head's logits, from made-up values in the loop's own
    // buffers (BLAS rounds by shape and alignment, not by value), which are then put back.
    bool same_bits_apart() {
        torch::NoGradGuard no_grad;
        bool same = true;
        for (auto& layer : layers_) {
            if (layer.gates == 3) continue;
            auto saved_a = layer.a.clone(), saved_h = layer.h_state.clone();
            auto made_up = [](const torch::Tensor& t, double k) {
                return at::arange(t.numel(), t.options()).mul_(k).sin_().view_as(t);
            };
            layer.h_state.copy_(made_up(layer.h_state, 0.7));
            layer.a.copy_(made_up(layer.a, 1.3));
            layer.a.addmm_(layer.h_state, layer.W_hh_t);
            auto serial = layer.a.clone();
            beside([] {}, [&] { layer.recurrent_product(); });
            layer.a.copy_(made_up(layer.a, 1.3)).add_(layer.p);
            same = same && at::equal(serial, layer.a);
            layer.a.copy_(saved_a), layer.h_state.copy_(saved_h);
        }
        auto x = layers_.back().h, saved_x = x.clone(), saved_logits = logits_.clone();
        x.copy_(at::arange(x.numel(), x.options()).mul_(0.9).sin_().view_as(x));
        head();
        auto serial = logits_.clone();
        beside([&] { head(); }, [] {});
        same = same && at::equal(serial, logits_);
        x.copy_(saved_x), logits_.copy_(saved_logits);
        head_done_ = true;
        return same;
    }

    // sample.filter_probs into its buffers.
    torch::Tensor filtered() {
        auto z = work_.copy_(logits_);
        z.sub_(at::amax(z, {-1}, true)).div_(temperature_);
        if (top_k_ > 0 && top_k_ < z.size(-1)) {
            auto kth = std::get<0>(z.topk(top_k_, -1)).narrow(1, top_k_ - 1, 1);
            z.masked_fill_(z < kth, -std::numeric_limits<double>::infinity());
        }
        torch::Tensor p = at::softmax_out(probs_, z, -1);
        if (top_p_ < 1.0) {
            auto sorted = p.sort(-1, true);
            auto sorted_p = std::get<0>(sorted), order = std::get<1>(sorted);
            auto mass_before = sorted_p.cumsum(-1) - sorted_p;
            auto keep_sorted = mass_before < top_p_;
            auto keep = at::zeros_like(keep_sorted).scatter(-1, order, keep_sorted);
            p = p * keep;
            p = p / p.sum(-1, true);
        }
        return p;
    }

    // sample.pick into its buffers.
    void pick(const torch::Tensor& p, const torch::Tensor& u, torch::Tensor& pair) {
        at::cumsum_out(cdf_, p, -1);
        at::searchsorted_out(pair, cdf_, u, false, true);
        pair.clamp_max_(p.size(-1) - 1);
    }

    // Stepper.__call__, the head left to the next draw (beside the next products).
    void step(const torch::Tensor& ids, bool made) {
        torch::Tensor x = ids;
        for (auto& layer : layers_) x = layer.step(x, made);
        head_done_ = false;
    }

    void head() {
        at::addmm_out(logits_, b_y_, layers_.back().h, W_hy_t_);
        head_done_ = true;
    }

    std::vector<Layer> layers_;
    bool overlap_ = false, head_done_ = true;  // the logits start as the caller's
    torch::Tensor W_hy_t_, b_y_, logits_;
    double temperature_;
    int64_t top_k_;
    double top_p_;
    bool greedy_;
    torch::Tensor work_, probs_, cdf_;
};

void register_sample_loop(py::module& m) {
    py::class_<SampleLoop>(m, "SampleLoop")
        .def(py::init<const std::vector<py::dict>&, torch::Tensor, torch::Tensor, torch::Tensor, double, int64_t,
                      double, bool, torch::Tensor, torch::Tensor, torch::Tensor>())
        .def("run", &SampleLoop::run, "draw and step a block of characters", py::arg("pairs"), py::arg("us"),
             py::arg("step_last"))
        .def("overlaps", &SampleLoop::overlaps, "whether each draw runs beside the next step's recurrent products");
}
