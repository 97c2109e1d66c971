// g4a_common.h - what every implementation of g4a_shim.h shares: per-thread errors, capture of an
// engine's stderr during a load, and token sampling.  Header-only so that each backend library
// carries its own private copy (nothing is shared between libraries at run time).
#ifndef G4A_COMMON_H
#define G4A_COMMON_H

#include "g4a_shim.h"

// set by the build for each library (g4a_backend_info); defaults for a compile by hand
#ifndef G4A_BACKEND_NAME
#define G4A_BACKEND_NAME "unknown"
#endif
#ifndef G4A_VARIANT
#define G4A_VARIANT "cpu"
#endif
#ifndef G4A_LLAMA_COMMIT
#define G4A_LLAMA_COMMIT "unknown"
#endif
#ifndef G4A_GPU
#define G4A_GPU 0
#endif

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

// What every engine's model handle holds for the shared exports (g4a_exports.h): an engine defines
// `struct g4a_model : g4a_model_state` with its own fields besides.
struct g4a_model_state {
    int32_t n_vocab = 0;
    int32_t n_ctx = 0;        // positions each sequence holds (0: vocabulary only)
    int32_t n_past = 0;       // positions of sequence 0 evaluated (the engines' single stream)
    bool has_logits = false;  // sequence 0 has logits to read
    bool vocab_only = false;
    int32_t n_seq_max = 1;    // sequences: 1 unless the engine decodes several (engine_decode)
    int32_t n_threads = 1;         // threads of the next evaluation (g4a_set_threads)
    int32_t n_threads_loaded = 1;  // as loaded: the most g4a_set_threads gives
    // sequences other than 0 keep their positions here; each sequence's logits are copied out of the
    // engine after a g4a_decode (seq_logits[s] valid when seq_has[s]); sequence 0 after a g4a_eval
    // reads the engine's own buffer (has_logits && !seq_has[0])
    std::vector<int32_t> seq_past;
    std::vector<std::vector<float>> seq_logits;
    std::vector<char> seq_has;
    std::vector<float> scratch;     // sampling work space, reused token after token
    std::vector<int32_t> order;
    std::vector<int32_t> counts;    // occurrences per token in the penalty window (presence/frequency)
};

// the position counter of one sequence (sequence 0's is the engines' n_past)
static inline int32_t &past_of(g4a_model_state *m, int32_t seq) { return seq == 0 ? m->n_past : m->seq_past[(size_t)seq]; }

static int32_t default_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n ? (int32_t)n : 1;
}

// ---------------------------------------------------------------------------------------------
// errors: one message per thread, plus the engine's own log lines captured during a load

static thread_local std::string t_error;  // NOLINT: one per library, per thread

static void set_error(const std::string &msg) { t_error = msg; }

// No C++ exception may leave an extern "C" function: every exported g4a_* body runs inside
// G4A_GUARD(value on failure, body), which turns an exception (std::out_of_range from a 2023
// tokenizer, bad_alloc, a loader's runtime_error) into g4a_last_error() text and the error value.
#define G4A_GUARD(fail, ...)                                                                  \
    try {                                                                                     \
        __VA_ARGS__                                                                           \
    } catch (const std::bad_alloc &) {                                                        \
        set_error(std::string(__func__) + ": out of memory");                                 \
        return fail;                                                                          \
    } catch (const std::exception &e) {                                                       \
        set_error(std::string(__func__) + ": " + e.what());                                   \
        return fail;                                                                          \
    } catch (...) {                                                                           \
        set_error(std::string(__func__) + ": an unknown C++ exception");                     \
        return fail;                                                                          \
    }

static bool g4a_verbose() {
    static const bool v = [] {
        const char *e = getenv("G4A_VERBOSE");
        return e && *e && strcmp(e, "0") != 0;
    }();
    return v;
}

// true while a load or quantize has stderr redirected into its capture file
static bool &g4a_capturing() {
    static bool on = false;
    return on;
}

// Engine log lines: kept (written to the captured stderr) while a load runs, so a failure can quote
// them; otherwise dropped unless G4A_VERBOSE=1.  Eras without a log hook print to stderr directly.
template <typename Level>
static void g4a_log_sink(Level level, const char *text, void *user) {
    (void)level;
    (void)user;
    if (text && (g4a_verbose() || g4a_capturing())) fputs(text, stderr);
}

// While stderr goes to the capture file, a fatal signal (an engine's abort or assertion) would take
// the engine's last words with it: this handler copies the tail of the capture file back to the
// real stderr, then lets the previous handler (Python's faulthandler, or the default) act.
static volatile sig_atomic_t g_cap_saved_fd = -1;
static volatile sig_atomic_t g_cap_tmp_fd = -1;
static const int g_cap_signals[] = {SIGABRT, SIGSEGV, SIGFPE, SIGBUS, SIGILL};
static struct sigaction g_cap_old[sizeof g_cap_signals / sizeof g_cap_signals[0]];

static void g4a_capture_crash(int sig) {
    const int saved = g_cap_saved_fd, tmp = g_cap_tmp_fd;
    if (saved >= 0 && tmp >= 0) {
        dup2(saved, 2);
        off_t end = lseek(tmp, 0, SEEK_END);
        lseek(tmp, end > 8192 ? end - 8192 : 0, SEEK_SET);
        char buf[1024];
        ssize_t n;
        while ((n = read(tmp, buf, sizeof buf)) > 0) {
            if (write(2, buf, (size_t)n) < 0) break;
        }
    }
    for (size_t i = 0; i < sizeof g_cap_signals / sizeof g_cap_signals[0]; ++i)
        if (g_cap_signals[i] == sig) sigaction(sig, &g_cap_old[i], nullptr);
    raise(sig);
}

// The 2023 eras print their diagnostics ("bad magic", "unknown tensor type") with fprintf(stderr)
// and only return NULL, and their quantizers print progress with printf.  During a load or a
// quantize we point fd 2 (and fd 1 for quantize) at a temporary file and keep the tail, so the
// Python side can show the engine's own reason.  Set G4A_VERBOSE=1 to let it through.
struct stderr_capture {
    int saved_err = -1, saved_out = -1;
    FILE *tmp = nullptr;
    std::string text;
    bool active = false;

    void begin(bool with_stdout = false) {
        if (g4a_verbose()) return;
        fflush(stdout);
        fflush(stderr);
        tmp = tmpfile();
        if (!tmp) return;
        saved_err = dup(2);
        if (saved_err < 0) { fclose(tmp); tmp = nullptr; return; }
        if (with_stdout) saved_out = dup(1);
        dup2(fileno(tmp), 2);
        if (saved_out >= 0) dup2(fileno(tmp), 1);
        active = true;
        g4a_capturing() = true;
        g_cap_saved_fd = saved_err;
        g_cap_tmp_fd = fileno(tmp);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = g4a_capture_crash;
        sigemptyset(&sa.sa_mask);
        for (size_t i = 0; i < sizeof g_cap_signals / sizeof g_cap_signals[0]; ++i)
            sigaction(g_cap_signals[i], &sa, &g_cap_old[i]);
    }
    void end() {
        if (!active) return;
        for (size_t i = 0; i < sizeof g_cap_signals / sizeof g_cap_signals[0]; ++i)
            sigaction(g_cap_signals[i], &g_cap_old[i], nullptr);
        g_cap_saved_fd = -1;
        g_cap_tmp_fd = -1;
        g4a_capturing() = false;
        fflush(stdout);
        fflush(stderr);
        dup2(saved_err, 2);
        close(saved_err);
        if (saved_out >= 0) { dup2(saved_out, 1); close(saved_out); saved_out = -1; }
        long n = ftell(tmp);
        if (n > 0) {
            long keep = std::min(n, 4096L);
            fseek(tmp, n - keep, SEEK_SET);
            text.resize((size_t)keep);
            size_t got = fread(&text[0], 1, (size_t)keep, tmp);
            text.resize(got);
        }
        fclose(tmp);
        active = false;
    }
};

static std::string last_lines(const std::string &text, int n) {
    // the last n non-empty lines, joined with " | "
    std::vector<std::string> lines;
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        std::string line = text.substr(start, end - start);
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
        if (!line.empty() && line.find_first_not_of('.') != std::string::npos) lines.push_back(line);
        start = end + 1;
    }
    std::string out;
    int first = std::max(0, (int)lines.size() - n);
    for (int i = first; i < (int)lines.size(); ++i) {
        if (!out.empty()) out += " | ";
        out += lines[i];
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// sampling, shared by every era (so every era samples identically for the same seed)

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline bool g4a_allowed(const uint32_t *mask, int32_t t) {
    return !mask || (mask[(uint32_t)t >> 5] >> ((uint32_t)t & 31u)) & 1u;
}

// Pick a token from nv logits.  In order: logit bias, repeat/presence/frequency penalties over the history
// window, the constraint mask; then (when asked) the log-probabilities of what may be chosen; then greedy
// (temperature <= 0) or top-k -> softmax(temperature) -> min-p -> top-p -> one draw from the caller's
// splitmix64 state.  l, idx and counts are caller-owned work space (reused across calls).
static inline int32_t g4a_sample_logits(const float *logits, int32_t nv, const g4a_sampling *sp,
                                        const int32_t *history, int32_t n_history, uint64_t *rng_state,
                                        g4a_token_logprobs *lp, std::vector<float> &l, std::vector<int32_t> &idx,
                                        std::vector<int32_t> &counts) {
    const float neg_inf = -INFINITY;
    const bool repeat = sp->repeat_penalty != 1.0f && sp->repeat_penalty > 0;
    const bool openai = sp->presence_penalty != 0.0f || sp->frequency_penalty != 0.0f;
    const bool penalized = (repeat || openai) && history && n_history > 0;

    // plain greedy decoding (most server requests): the best logit as it is, without a copy of the vocabulary
    if (!(sp->temperature > 0) && sp->n_bias == 0 && !penalized && !sp->allowed && !lp) {
        int32_t best = -1;
        for (int32_t i = 0; i < nv; ++i) {
            const float x = logits[i];
            if (x != neg_inf && x == x && (best < 0 || x > logits[best])) best = i;
        }
        if (best < 0) set_error("g4a_sample: every token has no finite logit");
        return best;
    }
    l.assign(logits, logits + nv);

    if (sp->n_bias < 0 || (sp->n_bias > 0 && (!sp->bias_tokens || !sp->bias_values))) {
        set_error("g4a_sample: bad logit bias");
        return -1;
    }
    for (int32_t i = 0; i < sp->n_bias; ++i) {
        const int32_t t = sp->bias_tokens[i];
        if (t < 0 || t >= nv) { set_error("g4a_sample: logit bias for token " + std::to_string(t) + " outside the vocabulary"); return -1; }
        l[(size_t)t] += sp->bias_values[i];
    }

    // penalties over the most recent tokens
    if (penalized) {
        const int32_t last_n = sp->repeat_last_n > 0 ? std::min(sp->repeat_last_n, n_history) : n_history;
        counts.assign((size_t)nv, 0);
        for (int32_t i = n_history - last_n; i < n_history; ++i) {
            const int32_t t = history[i];
            if (t >= 0 && t < nv) ++counts[(size_t)t];
        }
        for (int32_t i = n_history - last_n; i < n_history; ++i) {
            const int32_t t = history[i];
            if (t < 0 || t >= nv || counts[(size_t)t] == 0) continue;
            float &x = l[(size_t)t];
            if (repeat) x = x > 0 ? x / sp->repeat_penalty : x * sp->repeat_penalty;
            x -= sp->presence_penalty + sp->frequency_penalty * (float)counts[(size_t)t];
            counts[(size_t)t] = 0;   // each distinct token once
        }
    }

    // the constraint; then the best token (also the greedy choice) and whether any may be chosen
    int32_t best = -1;
    for (int32_t i = 0; i < nv; ++i) {
        if (!g4a_allowed(sp->allowed, i)) l[(size_t)i] = neg_inf;
        const float x = l[(size_t)i];
        if (x != neg_inf && x == x && (best < 0 || x > l[(size_t)best])) best = i;
    }
    if (best < 0) {
        set_error(sp->allowed ? "g4a_sample: the constraint allows no token here"
                              : "g4a_sample: every token is banned (logit bias) or has no finite logit");
        return -1;
    }

    double log_z = 0;   // log of the softmax's normalizer, for the log-probabilities
    if (lp) {
        const double mx = l[(size_t)best];
        double z = 0;
        for (int32_t i = 0; i < nv; ++i) {
            const float x = l[(size_t)i];
            if (x != neg_inf && x == x) z += std::exp((double)x - mx);
        }
        log_z = mx + std::log(z);
        const int32_t want = std::max(0, std::min<int32_t>(lp->n_top, G4A_MAX_TOP_LOGPROBS));
        int32_t have = 0;
        for (int32_t i = 0; i < nv && want > 0; ++i) {   // insertion into a sorted list of at most 20
            const float x = l[(size_t)i];
            if (x == neg_inf || x != x) continue;
            if (have == want && !(x > lp->top_logprobs[have - 1])) continue;
            int32_t j = have < want ? have++ : want - 1;
            while (j > 0 && x > lp->top_logprobs[j - 1]) {
                lp->top_logprobs[j] = lp->top_logprobs[j - 1];
                lp->top_tokens[j] = lp->top_tokens[j - 1];
                --j;
            }
            lp->top_logprobs[j] = x;
            lp->top_tokens[j] = i;
        }
        lp->n_top = have;
        for (int32_t j = 0; j < have; ++j) lp->top_logprobs[j] = (float)((double)lp->top_logprobs[j] - log_z);
    }
    auto finish = [&](int32_t tok) {
        if (lp) lp->logprob = (float)((double)l[(size_t)tok] - log_z);
        return tok;
    };

    if (!(sp->temperature > 0)) return finish(best);
    if (!rng_state) { set_error("g4a_sample: rng_state is required when temperature > 0"); return -1; }

    idx.clear();
    for (int32_t i = 0; i < nv; ++i) {
        const float x = l[(size_t)i];
        if (x != neg_inf && x == x) idx.push_back(i);   // only what may be chosen
    }
    const int32_t n_ok = (int32_t)idx.size();
    int32_t k = (sp->top_k > 0 && sp->top_k < n_ok) ? sp->top_k : n_ok;
    auto by_logit = [&](int32_t a, int32_t b) {
        return l[(size_t)a] > l[(size_t)b] || (l[(size_t)a] == l[(size_t)b] && a < b);
    };
    if (k < n_ok) {
        std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
    } else {
        std::sort(idx.begin(), idx.end(), by_logit);
    }
    idx.resize((size_t)k);

    // softmax over the kept candidates at the given temperature
    std::vector<double> prob((size_t)k);
    double maxl = l[(size_t)idx[0]] / sp->temperature, sum = 0;
    for (int32_t i = 0; i < k; ++i) {
        prob[(size_t)i] = std::exp(l[(size_t)idx[(size_t)i]] / sp->temperature - maxl);
        sum += prob[(size_t)i];
    }
    for (double &x : prob) x /= sum;

    int32_t keep = k;
    if (sp->min_p > 0) {
        double floor = prob[0] * sp->min_p;
        int32_t j = 1;
        while (j < keep && prob[(size_t)j] >= floor) ++j;
        keep = j;
    }
    if (sp->top_p > 0 && sp->top_p < 1) {
        double cum = 0;
        int32_t j = 0;
        while (j < keep) {
            cum += prob[(size_t)j];
            ++j;
            if (cum >= sp->top_p) break;
        }
        keep = std::max<int32_t>(1, j);
    }
    double total = 0;
    for (int32_t i = 0; i < keep; ++i) total += prob[(size_t)i];
    double r = (double)(splitmix64(rng_state) >> 11) * (1.0 / 9007199254740992.0) * total;
    double acc = 0;
    for (int32_t i = 0; i < keep; ++i) {
        acc += prob[(size_t)i];
        if (r < acc) return finish(idx[(size_t)i]);
    }
    return finish(idx[(size_t)(keep - 1)]);
}


#endif  // G4A_COMMON_H
