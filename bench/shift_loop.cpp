// shift_loop.cpp - greedy generation past the context with the engine's own KV shift, in C, none of our code.
//
// The peer of bench/bench_context_shift.py: the gguf-2026-10 engine driven through llama.h with the
// context shift of llama.cpp's own front ends (keep the first N_KEEP tokens, drop the older half of
// the rest: llama_memory_seq_rm + llama_memory_seq_add), applied when the cache is full before the
// next token is evaluated, which is when gpt4all_loader's Model shifts.
//
//   shift_loop MODEL PROMPT_FILE N_GEN N_THREADS N_CTX N_KEEP
//
// Prints one JSON object: load_s, n_prompt, n_gen, shifts, gen_s (first to last generated token), the
// generated token ids and per-shift times.
#include "llama.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using clock_type = std::chrono::steady_clock;

static void no_log(enum ggml_log_level, const char *, void *) {}

static double secs(clock_type::time_point a, clock_type::time_point b) {
    return std::chrono::duration<double>(b - a).count();
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL PROMPT_FILE N_GEN N_THREADS N_CTX N_KEEP\n", argv[0]);
        return 2;
    }
    std::ifstream pf(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << pf.rdbuf();
    const std::string prompt = ss.str();
    const int n_gen = atoi(argv[3]), n_threads = atoi(argv[4]), n_ctx = atoi(argv[5]), n_keep = atoi(argv[6]);

    llama_log_set(no_log, nullptr);
    llama_backend_init();
    const auto t0 = clock_type::now();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { printf("{\"ok\": false, \"error\": \"load failed\"}\n"); return 1; }
    const llama_vocab *vocab = llama_model_get_vocab(model);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = (uint32_t)(n_ctx < 512 ? n_ctx : 512);
    cp.n_ubatch = cp.n_batch;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { printf("{\"ok\": false, \"error\": \"context failed\"}\n"); return 1; }
    const double load_s = secs(t0, clock_type::now());
    llama_memory_t mem = llama_get_memory(ctx);

    std::vector<llama_token> toks(prompt.size() + 8);
    int n = llama_tokenize(vocab, prompt.data(), (int32_t)prompt.size(), toks.data(), (int32_t)toks.size(), true, false);
    if (n < 0 || n >= n_ctx) { printf("{\"ok\": false, \"error\": \"tokenize failed\"}\n"); return 1; }
    toks.resize(n);
    llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

    if (llama_decode(ctx, llama_batch_get_one(toks.data(), n)) != 0) {
        printf("{\"ok\": false, \"error\": \"decode failed\"}\n");
        return 1;
    }
    int n_past = n;
    std::vector<llama_token> out;
    std::vector<double> shift_s;
    const auto first = clock_type::now();
    auto last = first;
    for (int i = 0; i < n_gen; ++i) {
        llama_token t = llama_sampler_sample(smpl, ctx, -1);
        if (llama_vocab_is_eog(vocab, t)) break;
        out.push_back(t);
        last = clock_type::now();
        if (i + 1 == n_gen) break;
        if (n_past + 1 > n_ctx) {
            const auto s = clock_type::now();
            const int n_discard = (n_past - n_keep) / 2 > 0 ? (n_past - n_keep) / 2 : 1;
            llama_memory_seq_rm(mem, 0, n_keep, n_keep + n_discard);
            llama_memory_seq_add(mem, 0, n_keep + n_discard, -1, -n_discard);
            n_past -= n_discard;
            shift_s.push_back(secs(s, clock_type::now()));
        }
        if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) {
            printf("{\"ok\": false, \"error\": \"decode failed at %d\"}\n", n_past);
            return 1;
        }
        ++n_past;
    }
    printf("{\"ok\": true, \"load_s\": %.6f, \"n_prompt\": %d, \"n_gen\": %zu, \"shifts\": %zu, \"gen_s\": %.6f, ",
           load_s, n, out.size(), shift_s.size(), secs(first, last));
    printf("\"shift_s\": [");
    for (size_t i = 0; i < shift_s.size(); ++i) printf("%s%.6f", i ? ", " : "", shift_s[i]);
    printf("], \"tokens\": [");
    for (size_t i = 0; i < out.size(); ++i) printf("%s%d", i ? ", " : "", out[i]);
    printf("]}\n");
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
