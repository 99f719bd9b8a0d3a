// sample_ids' per-character loop (sampling/sample.py) as one compiled call per block of characters
// (impl fused_cpp, compiled.py): the Stepper's step (model/stepper.py), filter_probs and pick, as the
// same aten calls on the same buffers, so the same ids for the same uniforms, without Python's cost
// per call. What each call mirrors is named beside it. C++17.
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

    explicit Layer(const py::dict& d)
        : gates(d["gates"].cast<int64_t>()), table(get(d, "table")), W_xh_t(get(d, "W_xh_t")), b_h(get(d, "b_h")),
          W_hh_t(get(d, "W_hh_t")), a(get(d, "a")), h(get(d, "h")), c(get(d, "c")), tc(get(d, "tc")),
          ah0(get(d, "ah0")), ah(get(d, "ah")), h_state(get(d, "h_state")), c_state(get(d, "c_state")) {}

    // _Layer.step, then Stepper.__call__'s state copies: x is the ids (layer 0) or the layer below's h.
    const torch::Tensor& step(const torch::Tensor& x) {
        if (table.defined())
            at::index_select_out(a, table, 0, x);
        else
            at::addmm_out(a, b_h, x, W_xh_t);
        if (gates == 1) {
            a.addmm_(h_state, W_hh_t).tanh_();  // fused.tanh_step
        } else if (gates == 4) {
            forward_step(a.addmm_(h_state, W_hh_t), c_state, c, tc, h, c10::nullopt);
        } else {  // fused.gru_step
            const int64_t H = h.size(1);
            ah.copy_(ah0);
            ah.addmm_(h_state, W_hh_t);
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
    }

    // pairs: (n, N, 1) int64, each row the next ids; us: (n, N, 1) float64 uniforms (none when greedy).
    // Each character is drawn from the logits, then stepped through the model unless it is the block's
    // last and step_last is false (the sample's last character).
    void run(torch::Tensor pairs, c10::optional<torch::Tensor> us, bool step_last) {
        torch::NoGradGuard no_grad;
        const int64_t n = pairs.size(0);
        for (int64_t i = 0; i < n; ++i) {
            auto pair = pairs.select(0, i);
            if (greedy_)
                at::argmax_out(pair, logits_, -1, true);
            else
                pick(filtered(), us->select(0, i), pair);
            if (i + 1 < n || step_last) step(pair.select(1, 0));
        }
    }

   private:
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

    // Stepper.__call__.
    void step(const torch::Tensor& ids) {
        torch::Tensor x = ids;
        for (auto& layer : layers_) x = layer.step(x);
        at::addmm_out(logits_, b_y_, x, W_hy_t_);
    }

    std::vector<Layer> layers_;
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
             py::arg("step_last"));
}
