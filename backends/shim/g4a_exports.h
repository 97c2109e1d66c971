// g4a_exports.h - the exported g4a_* functions of g4a_shim.h, written once for every engine.
//
// An engine (g4a_shim.cpp over llama.cpp, backends/legacy over the 2023 ggml) defines its handle as
// `struct g4a_model : g4a_model_state` and the engine_* functions below, then includes this file at
// its end.  Here live what must be the same in every library: argument checks, the context and
// vocabulary bounds, error text for the calling thread, the shared sampler, and G4A_GUARD around
// every call into the engine, so that no C++ exception crosses the ABI.
//
// The engine's part (each may throw; a false/nullptr/negative result has set_error()'d its reason):
//   std::string engine_info()                     what follows "<name> llama.cpp <commit> ... | "
//   g4a_model *engine_load(path, params)          nullptr when the file cannot be loaded
//   void engine_free(g4a_model *)
//   bool engine_can_eval(const g4a_model *)       weights and a context were loaded
//   int32_t engine_n_ctx_train / engine_n_embd / engine_bos / engine_eos / engine_n_gpu_layers (const g4a_model *)
//   bool engine_is_eog(const g4a_model *, token)
//   bool engine_tokenize(g4a_model *, text, add_bos, parse_special, std::vector<int32_t> &out)
//   int32_t engine_piece(g4a_model *, token, buf, cap)      length, or -(length needed)
//   bool engine_eval(g4a_model *, tokens, n)      evaluates n tokens at n_past and advances n_past
//   void engine_reset(g4a_model *)
//   bool engine_truncate(g4a_model *, n_keep)     drop the cache from n_keep on (n_past is set here)
//   bool engine_shift(g4a_model *, n_keep, n_discard)   false: this engine cannot move positions
//   const float *engine_logits(g4a_model *), *engine_embeddings(g4a_model *)
//   int engine_quantize(in, out, ftype, n_threads)         0 on success
//   bool engine_dequantize(type, src, dst, n)
//   void engine_set_threads(g4a_model *)          m->n_threads changed: tell the engine, where it keeps its own copy
// An engine that decodes several sequences in one context defines G4A_ENGINE_SEQUENCES and besides:
//   int32_t engine_seq_capacity(const g4a_model *)          sequences its context was made for (set n_seq_max)
//   bool engine_decode(g4a_model *, tokens, seqs, n)  appends token i to sequence seqs[i]; fills seq_logits[s]
//                                                      for each sequence's last token and advances its counter;
//                                                      on failure leaves every sequence as it was
//   bool engine_seq_truncate(g4a_model *, seq, n_keep), engine_seq_shift(g4a_model *, seq, n_keep, n_discard),
//        engine_seq_copy(g4a_model *, src, dst)
// Engines without it hold one sequence: the seq functions act on sequence 0 through the single-stream ones.
#ifndef G4A_EXPORTS_H
#define G4A_EXPORTS_H

#define G4A_EXPORT extern "C" __attribute__((visibility("default")))

G4A_EXPORT int32_t g4a_abi_version(void) { return G4A_ABI_VERSION; }

G4A_EXPORT const char *g4a_backend_info(void) {
    static std::string info;
    static std::once_flag once;
    std::call_once(once, [] {
        try {
            info = std::string(G4A_BACKEND_NAME) + " llama.cpp " + G4A_LLAMA_COMMIT + " api=" +
                   std::to_string(G4A_API_GEN) + " variant=" + G4A_VARIANT + " | " + engine_info();
        } catch (...) {
            info = G4A_BACKEND_NAME;
        }
        while (!info.empty() && (info.back() == ' ' || info.back() == '|')) info.pop_back();
    });
    return info.c_str();
}

G4A_EXPORT const char *g4a_last_error(void) { return t_error.c_str(); }

G4A_EXPORT int32_t g4a_gpu_build(void) { return G4A_GPU; }

G4A_EXPORT g4a_model *g4a_load(const char *path, const g4a_load_params *p) {
    t_error.clear();
    if (!path || !p) { set_error("g4a_load: path and params are required"); return nullptr; }
    if (p->n_seq_max > 256) { set_error("g4a_load: n_seq_max " + std::to_string(p->n_seq_max) + " is above 256"); return nullptr; }
    G4A_GUARD(nullptr, {
        g4a_model *m = engine_load(path, p);
        if (!m) return m;
#ifndef G4A_ENGINE_SEQUENCES
        m->n_seq_max = 1;
#endif
        const size_t n = (size_t)std::max<int32_t>(1, m->n_seq_max);
        m->n_seq_max = (int32_t)n;
        m->seq_past.assign(n, 0);
        m->seq_logits.assign(n, std::vector<float>());
        m->seq_has.assign(n, 0);
        return m;
    })
}

G4A_EXPORT void g4a_free(g4a_model *m) {
    if (!m) return;
    try {
        engine_free(m);
    } catch (...) {
    }
}

static bool can_eval(const g4a_model *m) { return m && !m->vocab_only && engine_can_eval(m); }

G4A_EXPORT int32_t g4a_n_vocab(const g4a_model *m) { return m ? m->n_vocab : 0; }
G4A_EXPORT int32_t g4a_n_ctx(const g4a_model *m) { return can_eval(m) ? m->n_ctx : 0; }
G4A_EXPORT int32_t g4a_n_past(const g4a_model *m) { return m ? m->n_past : 0; }
G4A_EXPORT int32_t g4a_n_ctx_train(const g4a_model *m) { G4A_GUARD(0, { return m ? engine_n_ctx_train(m) : 0; }) }
G4A_EXPORT int32_t g4a_n_embd(const g4a_model *m) { G4A_GUARD(0, { return m ? engine_n_embd(m) : 0; }) }
G4A_EXPORT int32_t g4a_token_bos(const g4a_model *m) { G4A_GUARD(-1, { return m ? engine_bos(m) : -1; }) }
G4A_EXPORT int32_t g4a_token_eos(const g4a_model *m) { G4A_GUARD(-1, { return m ? engine_eos(m) : -1; }) }
G4A_EXPORT int32_t g4a_n_gpu_layers(const g4a_model *m) { return m ? engine_n_gpu_layers(m) : 0; }
G4A_EXPORT int32_t g4a_is_eog(const g4a_model *m, int32_t tok) {
    G4A_GUARD(0, { return m && tok >= 0 && tok < m->n_vocab && engine_is_eog(m, tok) ? 1 : 0; })
}

G4A_EXPORT int32_t g4a_tokenize(g4a_model *m, const char *text, int32_t text_len, int32_t add_bos,
                                int32_t parse_special, int32_t *tokens, int32_t cap) {
    t_error.clear();
    if (!m || (!text && text_len > 0) || text_len < 0 || cap < 0 || (!tokens && cap > 0)) {
        set_error("g4a_tokenize: bad arguments");
        return INT32_MIN;
    }
    G4A_GUARD(INT32_MIN, {
        std::vector<int32_t> out;
        if (!engine_tokenize(m, std::string(text ? text : "", (size_t)text_len), add_bos != 0, parse_special != 0, out))
            return INT32_MIN;
        const int32_t n = (int32_t)out.size();
        if (n > cap) return -n;
        if (n) std::copy(out.begin(), out.end(), tokens);
        return n;
    })
}

G4A_EXPORT int32_t g4a_token_to_piece(g4a_model *m, int32_t tok, char *buf, int32_t cap) {
    t_error.clear();
    if (!m || tok < 0 || tok >= m->n_vocab) { set_error("g4a_token_to_piece: token out of range"); return INT32_MIN; }
    if ((!buf && cap > 0) || cap < 0) { set_error("g4a_token_to_piece: bad arguments"); return INT32_MIN; }
    G4A_GUARD(INT32_MIN, { return engine_piece(m, tok, buf, cap); })
}

G4A_EXPORT int32_t g4a_eval(g4a_model *m, const int32_t *tokens, int32_t n) {
    t_error.clear();
    if (!can_eval(m)) { set_error("g4a_eval: the model was loaded without a context (vocabulary only)"); return -1; }
    if (n <= 0 || !tokens) { set_error("g4a_eval: no tokens"); return -1; }
    for (int32_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab) {
            set_error("g4a_eval: token " + std::to_string(tokens[i]) + " is outside the vocabulary (0.." +
                      std::to_string(m->n_vocab - 1) + ")");
            return -1;
        }
    }
    if (n > m->n_ctx - m->n_past) {
        set_error("g4a_eval: context full: " + std::to_string(m->n_past) + " + " + std::to_string(n) +
                  " tokens exceed n_ctx " + std::to_string(m->n_ctx));
        return -1;
    }
    G4A_GUARD(-1, {
        if (!engine_eval(m, tokens, n)) {
            m->has_logits = false;
            if (!m->seq_has.empty()) m->seq_has[0] = 0;
            return -1;
        }
        m->has_logits = true;
        if (!m->seq_has.empty()) m->seq_has[0] = 0;   // sequence 0 reads the engine's buffer
        return 0;
    })
}

G4A_EXPORT int32_t g4a_reset(g4a_model *m) {
    t_error.clear();
    if (!m) { set_error("g4a_reset: no model"); return -1; }
    G4A_GUARD(-1, {
        if (can_eval(m)) engine_reset(m);
        m->n_past = 0;
        m->has_logits = false;
        std::fill(m->seq_past.begin(), m->seq_past.end(), 0);
        std::fill(m->seq_has.begin(), m->seq_has.end(), 0);
        return 0;
    })
}

static bool seq_ok(const g4a_model *m, int32_t seq, const char *fn) {
    if (seq >= 0 && seq < m->n_seq_max) return true;
    set_error(std::string(fn) + ": sequence " + std::to_string(seq) + " is outside 0.." + std::to_string(m->n_seq_max - 1));
    return false;
}

G4A_EXPORT int32_t g4a_set_threads(g4a_model *m, int32_t n_threads) {
    t_error.clear();
    if (!m) { set_error("g4a_set_threads: no model"); return -1; }
    const int32_t n = n_threads > 0 ? std::min(n_threads, m->n_threads_loaded) : m->n_threads_loaded;
    if (n == m->n_threads) return n;
    G4A_GUARD(-1, {
        m->n_threads = n;
        if (can_eval(m)) engine_set_threads(m);
        return n;
    })
}

G4A_EXPORT int32_t g4a_n_seq_max(const g4a_model *m) { return can_eval(m) ? m->n_seq_max : 0; }
G4A_EXPORT int32_t g4a_seq_n_past(const g4a_model *m, int32_t seq) {
    return m && seq >= 0 && seq < m->n_seq_max ? past_of(const_cast<g4a_model *>(m), seq) : 0;
}

G4A_EXPORT int32_t g4a_seq_truncate(g4a_model *m, int32_t seq, int32_t n_keep) {
    t_error.clear();
    if (!can_eval(m)) { set_error("g4a_truncate: no context (vocabulary only)"); return -1; }
    if (!seq_ok(m, seq, "g4a_truncate")) return -1;
    int32_t &past = past_of(m, seq);
    if (n_keep < 0 || n_keep > past) {
        set_error("g4a_truncate: n_keep " + std::to_string(n_keep) + " is outside 0.." + std::to_string(past));
        return -1;
    }
    if (n_keep == past) return 0;
    G4A_GUARD(-1, {
#ifdef G4A_ENGINE_SEQUENCES
        const bool ok = engine_seq_truncate(m, seq, n_keep);
#else
        const bool ok = engine_truncate(m, n_keep);
#endif
        if (!ok) {
            set_error("g4a_truncate: this model's state cannot be cut back to a shorter prefix");
            return -1;
        }
        past = n_keep;
        if (seq == 0) m->has_logits = false;
        m->seq_has[(size_t)seq] = 0;
        return 0;
    })
}

G4A_EXPORT int32_t g4a_truncate(g4a_model *m, int32_t n_keep) { return g4a_seq_truncate(m, 0, n_keep); }

G4A_EXPORT int32_t g4a_seq_shift(g4a_model *m, int32_t seq, int32_t n_keep, int32_t n_discard) {
    t_error.clear();
    if (!can_eval(m)) { set_error("g4a_shift: no context (vocabulary only)"); return -1; }
    if (!seq_ok(m, seq, "g4a_shift")) return -1;
    int32_t &past = past_of(m, seq);
    if (n_keep < 0 || n_discard < 0 || n_keep > past || n_discard > past - n_keep) {
        set_error("g4a_shift: keep " + std::to_string(n_keep) + " and discard " + std::to_string(n_discard) +
                  " do not fit the " + std::to_string(past) + " cached positions");
        return -1;
    }
    G4A_GUARD(-1, {
#ifdef G4A_ENGINE_SEQUENCES
        const bool ok = engine_seq_shift(m, seq, n_keep, n_discard);
#else
        const bool ok = engine_shift(m, n_keep, n_discard);
#endif
        if (!ok) {
            set_error("g4a_shift: this era or model cannot move cached positions");
            return -1;
        }
        past -= n_discard;
        return 0;
    })
}

G4A_EXPORT int32_t g4a_shift(g4a_model *m, int32_t n_keep, int32_t n_discard) { return g4a_seq_shift(m, 0, n_keep, n_discard); }

G4A_EXPORT const float *g4a_seq_logits(g4a_model *m, int32_t seq) {
    t_error.clear();
    if (!can_eval(m)) { set_error("g4a_logits: nothing has been evaluated yet"); return nullptr; }
    if (!seq_ok(m, seq, "g4a_logits")) return nullptr;
    if (m->seq_has[(size_t)seq]) return m->seq_logits[(size_t)seq].data();
    if (seq != 0 || !m->has_logits) {
        set_error("g4a_logits: sequence " + std::to_string(seq) + " has nothing evaluated since its last change");
        return nullptr;
    }
    G4A_GUARD(nullptr, {
        const float *l = engine_logits(m);
        if (!l) set_error("g4a_logits: the engine has no logits for the last position");
        return l;
    })
}

G4A_EXPORT const float *g4a_logits(g4a_model *m) { return g4a_seq_logits(m, 0); }

// Sequence 0's logits still in the engine's buffer (after g4a_eval) are copied out before another
// evaluation overwrites that buffer.
static void keep_seq0_logits(g4a_model *m) {
    if (!m->has_logits || m->seq_has[0]) return;
    const float *l = engine_logits(m);
    if (!l) { m->has_logits = false; return; }
    m->seq_logits[0].assign(l, l + m->n_vocab);
    m->seq_has[0] = 1;
}

G4A_EXPORT int32_t g4a_decode(g4a_model *m, const int32_t *tokens, const int32_t *seqs, int32_t n) {
    t_error.clear();
    if (!can_eval(m)) { set_error("g4a_decode: the model was loaded without a context (vocabulary only)"); return -1; }
    if (n <= 0 || !tokens || !seqs) { set_error("g4a_decode: no tokens"); return -1; }
    std::vector<int32_t> count((size_t)m->n_seq_max, 0);
    for (int32_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab) {
            set_error("g4a_decode: token " + std::to_string(tokens[i]) + " is outside the vocabulary (0.." +
                      std::to_string(m->n_vocab - 1) + ")");
            return -1;
        }
        if (!seq_ok(m, seqs[i], "g4a_decode")) return -1;
        ++count[(size_t)seqs[i]];
    }
    for (int32_t s = 0; s < m->n_seq_max; ++s) {
        if (count[(size_t)s] > m->n_ctx - past_of(m, s)) {
            set_error("g4a_decode: context full: sequence " + std::to_string(s) + " holds " +
                      std::to_string(past_of(m, s)) + " positions; " + std::to_string(count[(size_t)s]) +
                      " more exceed n_ctx " + std::to_string(m->n_ctx));
            return -1;
        }
    }
    G4A_GUARD(-1, {
        keep_seq0_logits(m);
#ifdef G4A_ENGINE_SEQUENCES
        if (!engine_decode(m, tokens, seqs, n)) return -1;
#else
        // one sequence: the single-stream evaluation, its logits copied like a sequence's
        if (!engine_eval(m, tokens, n)) {
            m->has_logits = false;
            m->seq_has[0] = 0;
            return -1;
        }
        const float *l = engine_logits(m);
        if (!l) { set_error("g4a_decode: the engine has no logits for the last position"); return -1; }
        m->seq_logits[0].assign(l, l + m->n_vocab);
#endif
        for (int32_t s = 0; s < m->n_seq_max; ++s) {
            if (!count[(size_t)s]) continue;
            m->seq_has[(size_t)s] = 1;
            if (s == 0) m->has_logits = true;
        }
        return 0;
    })
}

G4A_EXPORT int32_t g4a_seq_copy(g4a_model *m, int32_t src, int32_t dst) {
    t_error.clear();
    if (!can_eval(m)) { set_error("g4a_seq_copy: no context (vocabulary only)"); return -1; }
    if (!seq_ok(m, src, "g4a_seq_copy") || !seq_ok(m, dst, "g4a_seq_copy")) return -1;
    if (src == dst) return 0;
    G4A_GUARD(-1, {
#ifdef G4A_ENGINE_SEQUENCES
        keep_seq0_logits(m);
        if (!engine_seq_copy(m, src, dst)) return -1;
        past_of(m, dst) = past_of(m, src);
        m->seq_logits[(size_t)dst] = m->seq_logits[(size_t)src];
        m->seq_has[(size_t)dst] = m->seq_has[(size_t)src];
        if (dst == 0) m->has_logits = m->seq_has[0] != 0;
        return 0;
#else
        set_error("g4a_seq_copy: this engine holds one sequence");
        return -1;
#endif
    })
}

G4A_EXPORT const float *g4a_embeddings(g4a_model *m) {
    t_error.clear();
    if (!m || !m->has_logits) { set_error("g4a_embeddings: nothing has been evaluated yet"); return nullptr; }
    G4A_GUARD(nullptr, { return engine_embeddings(m); })
}

G4A_EXPORT int32_t g4a_seq_sample(g4a_model *m, int32_t seq, const g4a_sampling *sp, const int32_t *history,
                                  int32_t n_history, uint64_t *rng_state, g4a_token_logprobs *lp) {
    t_error.clear();
    if (!m || !sp || n_history < 0 || (!history && n_history > 0)) { set_error("g4a_sample: bad arguments"); return -1; }
    const float *logits = g4a_seq_logits(m, seq);
    if (!logits) return -1;
    G4A_GUARD(-1, {
        return g4a_sample_logits(logits, m->n_vocab, sp, history, n_history, rng_state, lp, m->scratch, m->order,
                                 m->counts);
    })
}

G4A_EXPORT int32_t g4a_sample(g4a_model *m, const g4a_sampling *sp, const int32_t *history, int32_t n_history,
                              uint64_t *rng_state) {
    return g4a_seq_sample(m, 0, sp, history, n_history, rng_state, nullptr);
}

G4A_EXPORT int32_t g4a_quantize(const char *in, const char *out, int32_t ftype, int32_t n_threads) {
    t_error.clear();
    if (!in || !out) { set_error("g4a_quantize: paths are required"); return -1; }
    G4A_GUARD(-1, { return engine_quantize(in, out, ftype, n_threads > 0 ? n_threads : default_threads()) == 0 ? 0 : -1; })
}

G4A_EXPORT int32_t g4a_dequantize(int32_t type, const void *src, float *dst, int64_t n) {
    t_error.clear();
    if (!src || !dst || n < 0) { set_error("g4a_dequantize: bad arguments"); return -1; }
    G4A_GUARD(-1, { return engine_dequantize(type, src, dst, n) ? 0 : -1; })
}

#endif  // G4A_EXPORTS_H
