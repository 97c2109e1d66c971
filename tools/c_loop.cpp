// c_loop.cpp - the 2026-10 engine's own bare C loop, as a reference for our binding.
//
// Greedy generation written directly against llama.h (llama_sampler_init_greedy, llama_decode), with
// none of our code in between.  Tests compare our Model.generate() with it token for token, and the
// benchmarks use it to measure what our binding costs.  Built by tools/c_loop.py against the static
// archives of the gguf-2026-10 backend in the cache.
//
//   c_loop MODEL PROMPT N_PREDICT N_THREADS N_CTX   ->  one JSON line on stdout
#include "llama.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL PROMPT N_PREDICT N_THREADS N_CTX\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    std::string prompt = argv[2];
    int n_predict = atoi(argv[3]), n_threads = atoi(argv[4]), n_ctx = atoi(argv[5]);
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    auto t0 = std::chrono::steady_clock::now();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    const llama_vocab *vocab = llama_model_get_vocab(model);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "context failed\n"); return 1; }
    auto t1 = std::chrono::steady_clock::now();

    std::vector<llama_token> toks(prompt.size() + 8);
    int n = llama_tokenize(vocab, prompt.data(), (int)prompt.size(), toks.data(), (int)toks.size(), true, false);
    if (n < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
    toks.resize(n);

    llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

    if (llama_decode(ctx, llama_batch_get_one(toks.data(), n)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    auto t2 = std::chrono::steady_clock::now();
    std::vector<llama_token> out;
    for (int i = 0; i < n_predict; ++i) {
        llama_token t = llama_sampler_sample(smpl, ctx, -1);
        if (llama_vocab_is_eog(vocab, t)) break;
        out.push_back(t);
        if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    }
    auto t3 = std::chrono::steady_clock::now();
    auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
    printf("{\"prompt_tokens\": [");
    for (int i = 0; i < n; ++i) printf("%s%d", i ? ", " : "", toks[i]);
    printf("], \"tokens\": [");
    for (size_t i = 0; i < out.size(); ++i) printf("%s%d", i ? ", " : "", out[i]);
    printf("], \"load_ms\": %.3f, \"prompt_ms\": %.3f, \"gen_ms\": %.3f}\n", ms(t0, t1), ms(t1, t2), ms(t2, t3));
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
