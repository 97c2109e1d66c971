// bare_loop.cpp - the gguf-2026-10 engine driven directly through llama.h, with none of our code.
//
// The reference point for the binding overhead: bench/bench_generate.py compiles it against the same
// static archives that build_backends.py linked into libg4a-gguf-2026-10-cpu.so, runs it in a child
// process next to our Model API and the peers, and reads one JSON object from its stdout.
//
//   bare_loop MODEL PROMPT_FILE N_GEN N_THREADS N_CTX REPS FLASH_ATTN(-1 auto, 0 off, 1 on)
//
// Measured, with the same definitions as bench/gen_child.py:
//   ttft_s   from the start of the model load to the first generated token (fresh process, first rep)
//   pp       prompt tokens per second: one llama_decode of the whole prompt from an empty cache
//   tg       generated tokens per second between the first and the last greedy token
#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using clock_type = std::chrono::steady_clock;

static void no_log(enum ggml_log_level, const char *, void *) {}

static double secs(clock_type::time_point a, clock_type::time_point b) {
    return std::chrono::duration<double>(b - a).count();
}

// VmHWM / VmRSS of this process in kB (0 when /proc is not there).
static long status_kb(const char *key) {
    std::ifstream f("/proc/self/status");
    std::string line;
    size_t n = strlen(key);
    while (std::getline(f, line)) {
        if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') return atol(line.c_str() + n + 1);
    }
    return 0;
}

static void json_list(const char *name, const std::vector<double> &v) {
    printf("\"%s\": [", name);
    for (size_t i = 0; i < v.size(); ++i) printf("%s%.6f", i ? ", " : "", v[i]);
    printf("]");
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s MODEL PROMPT_FILE N_GEN N_THREADS N_CTX REPS FLASH_ATTN\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    std::ifstream pf(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << pf.rdbuf();
    const std::string prompt = ss.str();
    const int n_gen = atoi(argv[3]), n_threads = atoi(argv[4]), n_ctx = atoi(argv[5]), reps = atoi(argv[6]);
    const int flash = atoi(argv[7]);

    llama_log_set(no_log, nullptr);
    llama_backend_init();
    const long hwm_before = status_kb("VmHWM");

    const auto t0 = clock_type::now();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) { printf("{\"ok\": false, \"error\": \"load failed\"}\n"); return 1; }
    const llama_vocab *vocab = llama_model_get_vocab(model);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = (uint32_t)std::min(512, n_ctx);
    cp.n_ubatch = cp.n_batch;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    if (flash == 0) cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (flash == 1) cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { printf("{\"ok\": false, \"error\": \"context failed\"}\n"); return 1; }
    const auto t_loaded = clock_type::now();
    const long hwm_load = status_kb("VmHWM"), rss_load = status_kb("VmRSS");

    std::vector<llama_token> toks(prompt.size() + 8);
    int n = llama_tokenize(vocab, prompt.data(), (int32_t)prompt.size(), toks.data(), (int32_t)toks.size(), true, false);
    if (n < 0) { printf("{\"ok\": false, \"error\": \"tokenize failed\"}\n"); return 1; }
    toks.resize(n);

    llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

    std::vector<double> pp, tg;
    double ttft = 0.0;
    std::string text;
    int generated = 0;
    // rep 0 is the first token of a fresh process (TTFT) and is left out of pp/tg
    for (int r = 0; r <= reps; ++r) {
        llama_memory_clear(llama_get_memory(ctx), true);
        const auto a = clock_type::now();
        if (llama_decode(ctx, llama_batch_get_one(toks.data(), n)) != 0) {
            printf("{\"ok\": false, \"error\": \"decode failed\"}\n");
            return 1;
        }
        const auto b = clock_type::now();
        llama_token t = llama_sampler_sample(smpl, ctx, -1);
        const auto first = clock_type::now();
        auto last = first;
        int count = 0;
        std::string out;
        for (int i = 0; i < n_gen; ++i) {
            if (llama_vocab_is_eog(vocab, t)) break;
            ++count;
            last = clock_type::now();
            char piece[256];
            int len = llama_token_to_piece(vocab, t, piece, sizeof piece, 0, false);
            if (len > 0) out.append(piece, (size_t)len);
            if (i + 1 == n_gen) break;
            if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) {
                printf("{\"ok\": false, \"error\": \"decode failed\"}\n");
                return 1;
            }
            t = llama_sampler_sample(smpl, ctx, -1);
        }
        if (r == 0) {
            ttft = secs(t0, first);
            text = out;
            generated = count;
        } else {
            pp.push_back(n / secs(a, b));
            if (count > 1) tg.push_back((count - 1) / secs(first, last));
        }
    }
    printf("{\"ok\": true, \"engine\": \"bare-c\", \"load_s\": %.6f, \"ttft_s\": %.6f, \"hwm_before_kb\": %ld, "
           "\"hwm_after_load_kb\": %ld, \"rss_after_load_kb\": %ld, \"hwm_end_kb\": %ld, \"n_prompt\": %d, "
           "\"n_gen\": %d, ",
           secs(t0, t_loaded), ttft, hwm_before, hwm_load, rss_load, status_kb("VmHWM"), n, generated);
    json_list("pp", pp);
    printf(", ");
    json_list("tg", tg);
    printf(", \"text\": \"");
    for (unsigned char c : text) {
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    printf("\"}\n");
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
