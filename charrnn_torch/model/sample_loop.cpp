// sample_ids' per-character loop (sampling/sample.py) as one compiled call per block of characters
// (impl fused_cpp, compiled.py): the Stepper's step (model/stepper.py), filter_probs and pick, as the
// same aten calls on the same buffers, so the same ids for the same uniforms, without Python's cost
// per call. What each call mirrors is named beside it. C++17.
//
// With two threads a block runs in one parallel region: one thread draws each character (the head,
// filter_probs, pick) while the other makes the next step's recurrent products h_{t-1} W_hh^T, which do
// not depend on the id being drawn; the drawing thread then makes the first columns of those products
// too, as many as balance the two, and steps. The tanh cell and the LSTM add the product into
// W_xh x_t + b_h after the GEMM (beta = 0), not inside it (beta = 1). Whether that and the column split
// give the serial step's bits is BLAS's business, so SampleLoop runs one step both ways on its own
// buffers first, and stays serial where anything differs.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/extension.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <vector>

// lstm_kernel.cpp's forward step: what the Stepper runs for an LSTM layer of impl fused_cpp.
void forward_step(torch::Tensor a, torch::Tensor c_prev, torch::Tensor c, torch::Tensor tc, torch::Tensor h,
                  c10::optional<torch::Tensor> p);
void relax(int64_t spins);  // lstm_kernel.cpp's: a pause while another thread works

namespace {

torch::Tensor get(const py::dict& d, const char* key) {
    return d.contains(key) && !d[key].is_none() ? d[key].cast<torch::Tensor>() : torch::Tensor();
}

// Columns of a product are split at multiples of this: BLAS keeps its blocking, and so its bits, there.
constexpr int64_t SPLIT_ALIGN = 16;

// One layer's operands, as Stepper.operands() hands them over.
struct Layer {
    int64_t gates;
    torch::Tensor table, W_xh_t, b_h, W_hh_t, a, h, c, tc, ah0, ah, h_state, c_state;
    torch::Tensor p;  // h_{t-1} W_hh^T made apart from the step (the tanh cell and the LSTM; the GRU's is ah)
    int64_t split = 0;  // the drawing thread makes columns [0, split) of the product, the other the rest
    torch::Tensor out_part[2], ah0_part[2], W_part[2];  // each share's views, made once

    explicit Layer(const py::dict& d)
        : gates(d["gates"].cast<int64_t>()), table(get(d, "table")), W_xh_t(get(d, "W_xh_t")), b_h(get(d, "b_h")),
          W_hh_t(get(d, "W_hh_t")), a(get(d, "a")), h(get(d, "h")), c(get(d, "c")), tc(get(d, "tc")),
          ah0(get(d, "ah0")), ah(get(d, "ah")), h_state(get(d, "h_state")), c_state(get(d, "c_state")),
          p(gates == 3 ? torch::Tensor() : at::empty_like(a)) {
        for (const auto* t : {&table, &a, &h, &c, &h_state, &c_state, &p, &ah})
            TORCH_CHECK(!t->defined() || t->is_contiguous(), "SampleLoop: a layer's buffers are contiguous");
        set_split(0);
    }

    int64_t columns() const { return W_hh_t.size(1); }

    void set_split(int64_t s) {
        split = s;
        const int64_t bounds[3] = {0, s, columns()};
        for (int k = 0; k < 2; ++k) {
            const int64_t from = bounds[k], width = bounds[k + 1] - bounds[k];
            out_part[k] = (gates == 3 ? ah : p).narrow(1, from, width);
            W_part[k] = W_hh_t.narrow(1, from, width);
            if (gates == 3) ah0_part[k] = ah0.narrow(1, from, width);
        }
    }

    // Share k (0: the drawing thread's) of the recurrent product, for a step that then adds it.
    void recurrent_product(int k) {
        if (out_part[k].size(1) == 0) return;
        if (gates == 3) {
            out_part[k].copy_(ah0_part[k]);
            out_part[k].addmm_(h_state, W_part[k]);
        } else {
            at::mm_out(out_part[k], h_state, W_part[k]);
        }
    }

    // _Layer.step, then Stepper.__call__'s state copies, as their aten calls: x is the ids (layer 0) or
    // the layer below's h. The serial loop's step, and the reference the overlapped one is checked against.
    const torch::Tensor& step(const torch::Tensor& x) {
        if (table.defined())
            at::index_select_out(a, table, 0, x);
        else
            at::addmm_out(a, b_h, x, W_xh_t);
        if (gates != 3) a.addmm_(h_state, W_hh_t);
        if (gates == 1) {
            a.tanh_();  // fused.tanh_step
        } else if (gates == 4) {
            forward_step(a, c_state, c, tc, h, c10::nullopt);
        } else {
            ah.copy_(ah0);
            ah.addmm_(h_state, W_hh_t);
            gru_activations();
        }
        h_state.copy_(h);
        if (c.defined()) c_state.copy_(c);
        return h;
    }

    // The same step after both shares of recurrent_product() have run. Its exact element-wise work (a
    // table row, + p, the state copies: a copy or one IEEE addition an element) is written out, which
    // saves an aten call's cost for each; the activations stay aten's.
    const torch::Tensor& step_made(const torch::Tensor& x) {
        if (table.defined()) {
            rows_of_table(x);  // and + p for the tanh cell
        } else {
            at::addmm_out(a, b_h, x, W_xh_t);
            if (gates == 1) add_into(a, p);
        }
        if (gates == 1) {
            a.tanh_();
        } else if (gates == 4) {
            forward_step(a, c_state, c, tc, h, p);  // adds p as it reads the gates
        } else {
            gru_activations();
        }
        copy_into(h_state, h);
        if (c.defined()) copy_into(c_state, c);
        return h;
    }

    // fused.gru_step on a (W_xh x + b_h) and ah (W_hh h + (0, 0, b_hn)) into h.
    void gru_activations() {
        const int64_t H = h.size(1);
        a.narrow(1, 0, 2 * H).add_(ah.narrow(1, 0, 2 * H)).sigmoid_();
        auto r = a.narrow(1, 0, H), z = a.narrow(1, H, H), n = a.narrow(1, 2 * H, H);
        n.addcmul_(r, ah.narrow(1, 2 * H, H)).tanh_();
        at::sub_out(h, h_state, n).mul_(z).add_(n);
    }

    // a's rows = the table's rows of the ids x (index_select), + p's rows for the tanh cell.
    void rows_of_table(const torch::Tensor& x) {
        const int64_t N = a.size(0), G = a.size(1), V = table.size(0);
        const int64_t* ids = x.data_ptr<int64_t>();
        AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rows_of_table", [&] {
            const scalar_t* rows = table.data_ptr<scalar_t>();
            scalar_t* out = a.data_ptr<scalar_t>();
            const scalar_t* add = gates == 1 ? p.data_ptr<scalar_t>() : nullptr;
            for (int64_t r = 0; r < N; ++r) {
                const int64_t id = ids[r * x.stride(0)];
                TORCH_CHECK(id >= 0 && id < V, "id ", id, " outside the table's ", V, " rows");
                const scalar_t* row = rows + id * G;
                scalar_t* o = out + r * G;
                if (add)
                    for (int64_t j = 0; j < G; ++j) o[j] = row[j] + add[r * G + j];
                else
                    std::memcpy(o, row, G * sizeof(scalar_t));
            }
        });
    }

    static void add_into(const torch::Tensor& t, const torch::Tensor& u) {
        AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "add_into", [&] {
            scalar_t* o = t.data_ptr<scalar_t>();
            const scalar_t* v = u.data_ptr<scalar_t>();
            for (int64_t j = 0, n = t.numel(); j < n; ++j) o[j] += v[j];
        });
    }

    static void copy_into(const torch::Tensor& to, const torch::Tensor& from) {
        std::memcpy(to.data_ptr(), from.data_ptr(), from.numel() * from.element_size());
    }
};

double seconds_per_call(const std::function<void()>& f) {
    double best = std::numeric_limits<double>::infinity();
    for (int rep = 0; rep < 12; ++rep) {
        const auto start = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return best;
}

}  // namespace

class SampleLoop {
   public:
    SampleLoop(const std::vector<py::dict>& layers, torch::Tensor W_hy_t, torch::Tensor b_y, torch::Tensor logits,
               double temperature, int64_t top_k, double top_p, bool greedy, torch::Tensor work,
               torch::Tensor probs, torch::Tensor cdf)
        : W_hy_t_(W_hy_t), b_y_(b_y), logits_(logits), temperature_(temperature), top_k_(top_k), top_p_(top_p),
          greedy_(greedy), work_(work), probs_(probs), cdf_(cdf) {
        for (const auto& d : layers) layers_.emplace_back(d);
        TORCH_CHECK(logits_.is_contiguous(), "SampleLoop: contiguous logits");
        for (const auto* t : {&work_, &probs_, &cdf_})
            TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kDouble && t->sizes() == logits_.sizes(),
                        "SampleLoop: work, probs and cdf are contiguous float64 buffers of the logits' shape");
        const int64_t N = logits_.size(0);
        ids_ = at::zeros({N, 1}, logits_.options().dtype(at::kLong));
        ids_column_ = ids_.select(1, 0);
        u_ = at::full({N, 1}, 0.5, logits_.options().dtype(at::kDouble));
        if (two_threads()) {
            const std::vector<int64_t> balanced = balanced_splits();
            overlap_ = set_splits(balanced) || set_splits(std::vector<int64_t>(layers_.size(), 0));
        }
    }

    bool overlaps() const { return overlap_; }

    std::vector<int64_t> splits() const {
        std::vector<int64_t> s;
        for (const auto& layer : layers_) s.push_back(layer.split);
        return s;
    }

    // The drawing thread's columns of each layer's product (multiples of SPLIT_ALIGN); true where the
    // loop then runs on two threads, which it does only where one step gives the serial step's bits.
    bool set_splits(const std::vector<int64_t>& splits) {
        TORCH_CHECK(splits.size() == layers_.size(), "one split a layer");
        for (size_t l = 0; l < layers_.size(); ++l)
            TORCH_CHECK(splits[l] >= 0 && splits[l] <= layers_[l].columns() && splits[l] % SPLIT_ALIGN == 0,
                        "a split is a multiple of ", SPLIT_ALIGN, " within the product's columns");
        for (size_t l = 0; l < layers_.size(); ++l) layers_[l].set_split(splits[l]);
        try {
            overlap_ = two_threads() && same_bits_apart();
        } catch (const std::exception&) {
            overlap_ = false;  // a step on two threads that cannot run here: the serial loop can
        }
        if (!overlap_)
            for (auto& layer : layers_) layer.set_split(0);
        return overlap_;
    }

    // pairs: (n, N, 1) int64, each row the next ids; us: (n, N, 1) float64 uniforms (none when greedy).
    // Each character is drawn from the logits, then stepped through the model unless it is the block's
    // last and step_last is false (the sample's last character).
    void run(torch::Tensor pairs, c10::optional<torch::Tensor> us, bool step_last) {
        torch::NoGradGuard no_grad;
        const int64_t n = pairs.size(0), N = ids_.size(0);
        TORCH_CHECK(pairs.is_contiguous() && pairs.scalar_type() == at::kLong && pairs.numel() == n * N,
                    "pairs: contiguous (n, N, 1) int64");
        TORCH_CHECK(greedy_ || (us && us->is_contiguous() && us->scalar_type() == at::kDouble &&
                                us->numel() == n * N),
                    "us: contiguous (n, N, 1) float64");
        int64_t* out = pairs.data_ptr<int64_t>();
        const double* u = greedy_ ? nullptr : us->data_ptr<double>();
        chars(n, step_last ? n : n - 1, [&](int64_t i) {
            if (!head_done_) head();
            draw_ids(greedy_ ? nullptr : u + i * N);
            std::memcpy(out + i * N, ids_.data_ptr<int64_t>(), N * sizeof(int64_t));
        });
    }

   private:
    // Whether a block may run on two threads: torch has them, and the draw's calls stay below aten's
    // grain (so each runs on its thread alone, as it does serially).
    bool two_threads() const {
        return at::get_num_threads() >= 2 && logits_.numel() <= at::internal::GRAIN_SIZE;
    }

    // The next ids into ids_, from the logits (u: each stream's uniform; none when greedy).
    void draw_ids(const double* u) {
        if (greedy_)
            at::argmax_out(ids_, logits_, -1, true);
        else
            pick(filtered(), u);
    }

    // n characters, each draw(i) (which leaves its ids in ids_) and then, for the first `steps` of them,
    // a step: serially, or in one parallel region with the products shared between two threads.
    template <typename Draw>
    void chars(int64_t n, int64_t steps, const Draw& draw) {
        if (!overlap_) {
            for (int64_t i = 0; i < n; ++i) {
                draw(i);
                if (i < steps) step(false);
            }
            return;
        }
        made_ = 0, stepped_ = 0, failed_ = false;
        const at::ThreadLocalState caller;  // grad and inference mode are a thread's own: the other takes ours
        at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
            at::ThreadLocalStateGuard as_caller(caller);
            torch::NoGradGuard no_grad;
            if (end - begin == 2) {      // one thread came: the same calls in turn
                for (int64_t i = 0; i < n; ++i) {
                    draw(i);
                    if (i < steps) products(0), products(1), step(true);
                }
                return;
            }
            try {
                begin == 0 ? drawing(n, steps, draw) : multiplying(steps);
            } catch (...) {
                failed_ = true;  // the other thread stops waiting
                throw;
            }
        });
    }

    template <typename Draw>
    void drawing(int64_t n, int64_t steps, const Draw& draw) {
        for (int64_t i = 0; i < n; ++i) {
            draw(i);
            if (i >= steps) break;
            products(0);
            if (!wait_for(made_, i + 1)) return;
            step(true);
            stepped_.store(i + 1, std::memory_order_release);
        }
    }

    void multiplying(int64_t steps) {
        for (int64_t i = 0; i < steps; ++i) {
            if (!wait_for(stepped_, i)) return;  // the state of step i is there
            products(1);
            made_.store(i + 1, std::memory_order_release);
        }
    }

    // false: the other thread failed (its exception is the one parallel_for raises).
    bool wait_for(const std::atomic<int64_t>& count, int64_t value) {
        for (int64_t spins = 0; count.load(std::memory_order_acquire) < value; ++spins) {
            if (failed_.load(std::memory_order_relaxed)) return false;
            relax(spins);
        }
        return true;
    }

    void products(int k) {
        for (auto& layer : layers_) layer.recurrent_product(k);
    }

    // For each layer, the drawing thread's columns that make its draw plus them take as long as the
    // other thread's columns, from one timing of each on this machine (it sets only how the work is
    // shared, never a result).
    std::vector<int64_t> balanced_splits() {
        torch::NoGradGuard no_grad;
        if (!head_done_) head();
        auto saved_logits = logits_.clone();
        const double draw_s = seconds_per_call([&] {
            head();
            draw_ids(u_.data_ptr<double>());
        });
        logits_.copy_(saved_logits);
        head_done_ = true;
        const double product_s = seconds_per_call([&] { products(1); });  // all columns: every split is 0
        const double share = std::max(0.0, (product_s - draw_s) / (2 * product_s));  // of each product
        std::vector<int64_t> splits;
        for (const auto& layer : layers_)
            splits.push_back(int64_t(share * layer.columns()) / SPLIT_ALIGN * SPLIT_ALIGN);
        return splits;
    }

    // Whether one step on two threads, its products made apart and split, gives the serial step's bits:
    // each layer's new state and the head's logits, from made-up values in the loop's own buffers (BLAS
    // rounds by shape and alignment, not by value), which are then put back.
    bool same_bits_apart() {
        torch::NoGradGuard no_grad;
        if (!head_done_) head();  // the head the next draw needs, from the h the check overwrites
        auto made_up = [](const torch::Tensor& t, double k) {
            return at::arange(t.numel(), t.options()).mul_(k).sin_().view_as(t);
        };
        std::vector<torch::Tensor> states, saved;
        for (auto& layer : layers_) {
            states.push_back(layer.h_state);
            if (layer.c_state.defined()) states.push_back(layer.c_state);
        }
        for (auto& s : states) saved.push_back(s.clone());
        auto saved_logits = logits_.clone(), saved_ids = ids_.clone();
        const int64_t V = logits_.size(1);
        ids_.copy_(at::arange(ids_.numel(), ids_.options()).mul_(7).remainder_(V).view_as(ids_));
        std::vector<torch::Tensor> results[2];
        for (int way = 0; way < 2; ++way) {
            for (size_t k = 0; k < states.size(); ++k) states[k].copy_(made_up(states[k], 0.7 + 0.1 * k));
            head_done_ = true;
            if (way == 0) {
                step(false);
                head();
            } else {
                const bool overlap = overlap_;
                overlap_ = true;
                chars(2, 1, [&](int64_t) {  // the ids stay as made up; the second draw makes the head
                    if (!head_done_) head();
                });
                overlap_ = overlap;
            }
            for (auto& s : states) results[way].push_back(s.clone());
            results[way].push_back(logits_.clone());
        }
        bool same = true;
        for (size_t k = 0; k < results[0].size(); ++k) same = same && at::equal(results[0][k], results[1][k]);
        for (size_t k = 0; k < states.size(); ++k) states[k].copy_(saved[k]);
        logits_.copy_(saved_logits), ids_.copy_(saved_ids);
        head_done_ = true;
        return same;
    }

    // sample.filter_probs into its buffers. Its first calls, work.copy_(logits), sub_(amax) and div_, are
    // exact IEEE operations on each element (a cast, a max, a subtraction, a division), so they are
    // written out here: the same bits without three aten calls' cost a character.
    torch::Tensor filtered() {
        const int64_t N = logits_.size(0), V = logits_.size(1);
        double* z = work_.data_ptr<double>();
        AT_DISPATCH_FLOATING_TYPES(logits_.scalar_type(), "filtered", [&] {
            const scalar_t* logits = logits_.data_ptr<scalar_t>();
            for (int64_t r = 0; r < N; ++r) {
                double* row = z + r * V;
                double max = -std::numeric_limits<double>::infinity();
                for (int64_t i = 0; i < V && !std::isnan(max); ++i) {
                    const double x = double(logits[r * V + i]);
                    if (!(x <= max)) max = x;  // amax: a NaN is the max
                }
                for (int64_t i = 0; i < V; ++i) row[i] = (double(logits[r * V + i]) - max) / temperature_;
            }
        });
        auto z_t = work_;
        if (top_k_ > 0 && top_k_ < V) {
            auto kth = std::get<0>(z_t.topk(top_k_, -1)).narrow(1, top_k_ - 1, 1);
            z_t.masked_fill_(z_t < kth, -std::numeric_limits<double>::infinity());
        }
        torch::Tensor p = at::softmax_out(probs_, z_t, -1);
        if (top_p_ < 1.0) {
            auto sorted = p.sort(-1, true);
            auto sorted_p = std::get<0>(sorted), order = std::get<1>(sorted);
            auto mass_before = sorted_p.cumsum(-1) - sorted_p;
            auto keep_sorted = mass_before < top_p_;
            auto keep = at::zeros_like(keep_sorted).scatter(-1, order, keep_sorted);
            p = p * keep;
            p = p / p.sum(-1, true);
        }
        return p.contiguous();
    }

    // sample.pick into its buffers: aten's cumsum (a running sum in the order of the row), its
    // searchsorted(right=True) (the same binary search) and the clamp, written out.
    void pick(const torch::Tensor& p, const double* u) {
        const int64_t N = p.size(0), V = p.size(1);
        const double* probs = p.data_ptr<double>();
        double* cdf = cdf_.data_ptr<double>();
        int64_t* ids = ids_.data_ptr<int64_t>();
        for (int64_t r = 0; r < N; ++r) {
            double* row = cdf + r * V;
            double sum = 0;
            for (int64_t i = 0; i < V; ++i) row[i] = sum += probs[r * V + i];
            int64_t start = 0, end = V;  // the first index whose cdf is > u
            while (start < end) {
                const int64_t mid = start + ((end - start) >> 1);
                if (!(row[mid] > u[r]))
                    start = mid + 1;
                else
                    end = mid;
            }
            ids[r] = std::min(start, V - 1);
        }
    }

    // Stepper.__call__ on the ids in ids_, the head left to the next draw.
    void step(bool made) {
        torch::Tensor x = ids_column_;
        for (auto& layer : layers_) x = made ? layer.step_made(x) : layer.step(x);
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
    torch::Tensor ids_, ids_column_, u_;  // the character being drawn: its ids, its uniforms
    std::atomic<int64_t> made_{0}, stepped_{0};  // the two threads' progress through a block
    std::atomic<bool> failed_{false};
};

void register_sample_loop(py::module& m) {
    py::class_<SampleLoop>(m, "SampleLoop")
        .def(py::init<const std::vector<py::dict>&, torch::Tensor, torch::Tensor, torch::Tensor, double, int64_t,
                      double, bool, torch::Tensor, torch::Tensor, torch::Tensor>())
        .def("run", &SampleLoop::run, "draw and step a block of characters", py::arg("pairs"), py::arg("us"),
             py::arg("step_last"), py::call_guard<py::gil_scoped_release>())
        .def("overlaps", &SampleLoop::overlaps, "whether each draw runs beside the next step's recurrent products")
        .def("splits", &SampleLoop::splits, "each layer's columns of its product that the drawing thread makes")
        .def("set_splits", &SampleLoop::set_splits, "share each product so; whether the loop then overlaps",
             py::arg("splits"));
}
