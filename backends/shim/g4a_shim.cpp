// g4a_shim.cpp - the implementation of g4a_shim.h over one pinned llama.cpp tree.
//
// Compiled once per backend variant, against that backend's own llama.h, with:
//   G4A_API_GEN       the llama.cpp API generation (1, 2, 4 or 6; see backends/manifest.toml)
//   G4A_*             finer per-era differences listed in the manifest's api_defines
//   G4A_BACKEND_NAME, G4A_VARIANT, G4A_LLAMA_COMMIT   strings for g4a_backend_info()
//   G4A_GPU           1 in GPU variants
// Everything that differs between eras is confined to the small "compat_" functions; sampling,
// buffers and error handling are shared, so every era behaves the same from Python.

#include "g4a_common.h"

#include "llama.h"
#include "ggml.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#ifndef G4A_API_GEN
#error "G4A_API_GEN must be defined by the build"
#endif

// From the batch API (2023-11 on) one context decodes several sequences: continuous batching.
#if G4A_API_GEN >= 4
#define G4A_ENGINE_SEQUENCES 1
#endif


// ---------------------------------------------------------------------------------------------
// the model handle

struct g4a_model : g4a_model_state {
    llama_context *ctx = nullptr;
#if G4A_API_GEN >= 2
    llama_model *model = nullptr;
#endif
#if G4A_API_GEN >= 6
    const llama_vocab *vocab = nullptr;
#endif
#ifdef G4A_THREADPOOL
    ggml_threadpool *threadpool = nullptr;   // the decode threads, for the model's life (compat_load)
#endif
    int32_t n_batch = 512;
    int32_t n_gpu_layers = 0;
    bool embeddings = false;
    // SentencePiece vocabularies of the eras whose own tokenizer differs from the model's (see
    // "tokenization" below): the shim splits out special tokens and adds the dummy prefix itself.
    bool spm_in_shim = false;
    int32_t unk = -1;                                           // the unknown token (its piece is "")
    int32_t nul = -1;                                           // api 1-2: the byte token of 0x00
    std::vector<std::pair<std::string, int32_t>> specials;      // control/unknown texts, longest first
    std::vector<std::pair<std::string, int32_t>> user_defined;  // split out even without parse_special
    std::vector<uint8_t> byte_token;                            // api 1-2: bytes with a one-byte token
};

static void backend_init_once() {
    static std::once_flag once;
    std::call_once(once, [] {
#if defined(G4A_LOG_SET)
        llama_log_set(g4a_log_sink<enum G4A_LOG_SET>, nullptr);
#endif
#if defined(G4A_NO_BACKEND_INIT)
        // 2023-04/05 eras: nothing to initialise (ggml sets itself up on first use)
#elif defined(G4A_BACKEND_INIT_NUMA)
        llama_backend_init(false);
#else
        llama_backend_init();
#endif
    });
}

// ---------------------------------------------------------------------------------------------
// compat layer: the only per-era code

static bool compat_load(g4a_model *m, const char *path, const g4a_load_params *p) {
#if G4A_API_GEN == 1
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = m->n_ctx;
    cp.seed = (int)p->seed;
    cp.f16_kv = true;
    cp.vocab_only = p->vocab_only != 0;
    cp.embedding = p->embeddings != 0;
    cp.use_mmap = true;
#if defined(G4A_HAS_N_PARTS)
    cp.n_parts = -1;
#endif
#if defined(G4A_HAS_N_GPU_LAYERS_CTX)
    cp.n_gpu_layers = G4A_GPU ? p->n_gpu_layers : 0;
#endif
    m->ctx = llama_init_from_file(path, cp);
    return m->ctx != nullptr;
#elif G4A_API_GEN == 2
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = m->n_ctx;
    cp.n_batch = m->n_batch;
    cp.seed = p->seed;
    cp.f16_kv = true;
    cp.vocab_only = p->vocab_only != 0;
    cp.embedding = p->embeddings != 0;
    cp.use_mmap = true;
#if defined(G4A_HAS_GQA_EPS)
    if (p->n_gqa > 0) cp.n_gqa = p->n_gqa;
    if (p->rms_norm_eps > 0) cp.rms_norm_eps = p->rms_norm_eps;
#endif
    cp.n_gpu_layers = G4A_GPU ? (p->n_gpu_layers < 0 ? 999 : p->n_gpu_layers) : 0;
    m->model = llama_load_model_from_file(path, cp);
    if (!m->model) return false;
    m->ctx = llama_new_context_with_model(m->model, cp);
    return m->ctx != nullptr;
#else
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = p->vocab_only != 0;
    mp.n_gpu_layers = G4A_GPU ? (p->n_gpu_layers < 0 ? 999 : p->n_gpu_layers) : 0;
#if G4A_API_GEN >= 6
    m->model = llama_model_load_from_file(path, mp);
#else
    m->model = llama_load_model_from_file(path, mp);
#endif
    if (!m->model) return false;
#if G4A_API_GEN >= 6
    m->vocab = llama_model_get_vocab(m->model);
#endif
    if (p->vocab_only) return true;   // no context needed for tokenization
    llama_context_params cp = llama_context_default_params();
    // n_ctx cells for each sequence: the 2026 engine keeps one stream of cells per sequence (as llama-server
    // with -np N), so a sequence's attention never spans the others' cells; the older eras hold every
    // sequence in one pool of that many cells
    cp.n_ctx = (uint32_t)m->n_ctx * (uint32_t)m->n_seq_max;
    cp.n_batch = (uint32_t)m->n_batch;
#if G4A_API_GEN >= 6
    cp.n_ubatch = (uint32_t)m->n_batch;
    cp.n_seq_max = (uint32_t)m->n_seq_max;
    cp.kv_unified = m->n_seq_max == 1;
#elif defined(G4A_CTX_N_SEQ_MAX)
    cp.n_seq_max = (uint32_t)m->n_seq_max;
#endif
#if G4A_API_GEN >= 6
#elif !defined(G4A_NO_CTX_SEED)
    cp.seed = p->seed;   // (from 2024-09 the seed belongs to samplers; ours is in g4a_sample)
#endif
    cp.n_threads = m->n_threads;
    cp.n_threads_batch = m->n_threads;
#if G4A_API_GEN >= 6 || defined(G4A_CTX_EMBEDDINGS)
    cp.embeddings = p->embeddings != 0;
#else
    cp.embedding = p->embeddings != 0;
#endif
#if G4A_API_GEN >= 6
    cp.flash_attn_type = (enum llama_flash_attn_type)p->flash_attn;   // the same -1/0/1 as ours
#elif defined(G4A_FLASH_ATTN_BOOL)
    if (p->flash_attn >= 0) cp.flash_attn = p->flash_attn != 0;      // -1 keeps the era's default (off)
#endif
#if G4A_API_GEN >= 6
    m->ctx = llama_init_from_model(m->model, cp);
#else
    m->ctx = llama_new_context_with_model(m->model, cp);
#endif
#ifdef G4A_THREADPOOL
    // Without a pool of its own the engine starts and joins its helper threads at every graph: a new
    // thread per generated token, which beside a busy server waits for a core each time.  One pool of the
    // loaded count (g4a_set_threads uses fewer of them); poll 0: between decodes the threads sleep, so an
    // idle model costs no CPU and a busy machine's load readings see only real work.  Spinning between
    // decodes (poll 50, llama-server's default) measured slower here (bench/RESULTS.md).
    if (m->ctx) {
        ggml_threadpool_params tpp = ggml_threadpool_params_default(m->n_threads);
        tpp.poll = 0;
        m->threadpool = ggml_threadpool_new(&tpp);
        if (m->threadpool) llama_attach_threadpool(m->ctx, m->threadpool, nullptr);   // else: as before
    }
#endif
    return m->ctx != nullptr;
#endif
}

static void compat_free(g4a_model *m) {
    if (m->ctx) llama_free(m->ctx);
#ifdef G4A_THREADPOOL
    if (m->threadpool) ggml_threadpool_free(m->threadpool);   // after the context that used it
#endif
#if G4A_API_GEN >= 6
    if (m->model) llama_model_free(m->model);
#elif G4A_API_GEN >= 2
    if (m->model) llama_free_model(m->model);
#endif
}

static void compat_query(g4a_model *m) {
#if G4A_API_GEN <= 2
    m->n_vocab = llama_n_vocab(m->ctx);
    if (m->ctx) m->n_ctx = llama_n_ctx(m->ctx);
#elif G4A_API_GEN == 4
    m->n_vocab = llama_n_vocab(m->model);
    if (m->ctx) m->n_ctx = (int32_t)llama_n_ctx(m->ctx);
#else
    m->n_vocab = llama_vocab_n_tokens(m->vocab);
    if (m->ctx) m->n_ctx = (int32_t)llama_n_ctx(m->ctx);
#endif
}

static int32_t compat_n_ctx_train(const g4a_model *m) {
#if G4A_API_GEN <= 2
    (void)m;
    return 0;   // ggml-era files do not record it
#elif G4A_API_GEN == 4
    return llama_n_ctx_train(m->model);
#else
    return llama_model_n_ctx_train(m->model);
#endif
}

static int32_t compat_n_embd(const g4a_model *m) {
#if G4A_API_GEN == 1
#if defined(G4A_NO_N_EMBD)
    (void)m;
    return 0;
#else
    return llama_n_embd(m->ctx);
#endif
#elif G4A_API_GEN == 2
    return llama_n_embd(m->ctx);
#elif G4A_API_GEN == 4
    return llama_n_embd(m->model);
#else
    return llama_model_n_embd(m->model);
#endif
}

static int32_t compat_bos(const g4a_model *m) {
#if G4A_API_GEN <= 2
    (void)m;
    return llama_token_bos();
#elif G4A_API_GEN == 4
    return llama_token_bos(m->model);
#else
    return llama_vocab_bos(m->vocab);
#endif
}

static int32_t compat_eos(const g4a_model *m) {
#if G4A_API_GEN <= 2
    (void)m;
    return llama_token_eos();
#elif G4A_API_GEN == 4
    return llama_token_eos(m->model);
#else
    return llama_vocab_eos(m->vocab);
#endif
}

static bool compat_is_eog(const g4a_model *m, int32_t tok) {
#if G4A_API_GEN >= 6
    return llama_vocab_is_eog(m->vocab, tok);
#elif defined(G4A_TOKEN_IS_EOG)
    return llama_token_is_eog(m->model, tok);
#else
    return tok == compat_eos(m);
#endif
}

// The era's own tokenizer on one text.  Returns the count, or -(count needed) when cap is too small.
static int32_t compat_tokenize(g4a_model *m, const std::string &text, bool add_bos, bool special,
                               int32_t *out, int32_t cap) {
#if G4A_API_GEN <= 2
    (void)special;
    return llama_tokenize(m->ctx, text.c_str(), out, cap, add_bos);
#elif G4A_API_GEN == 4
    return llama_tokenize(m->model, text.data(), (int)text.size(), out, cap, add_bos, special);
#else
    return llama_tokenize(m->vocab, text.data(), (int32_t)text.size(), out, cap, add_bos, special);
#endif
}

static std::string compat_token_text(const g4a_model *m, int32_t tok) {
#if G4A_API_GEN <= 2
    const char *s = llama_token_to_str(m->ctx, tok);
#elif G4A_API_GEN == 4
    const char *s = llama_token_get_text(m->model, tok);
#else
    const char *s = llama_vocab_get_text(m->vocab, tok);
#endif
    return s ? std::string(s) : std::string();
}

// ---------------------------------------------------------------------------------------------
// tokenization: one behaviour in every era
//
// tokenize(text) gives the ids the model's own tokenizer gives.  For SentencePiece ("llama")
// vocabularies that is the 2024+ llama.cpp behaviour, which follows the original tokenizer: when
// parse_special is set, control/unknown token texts ("<s>", "</s>", "<unk>", ...) are split out of
// the text first (user-defined tokens always are), and every remaining piece of text gets the
// dummy prefix " " before it is tokenized.  The older eras differ, and the shim closes the gap:
//   api 1-2 (2023-04/05/08): llama_tokenize adds no dummy prefix (llama.cpp's own `main` and
//     gpt4all inserted it before the prompt) and knows no special tokens: the shim splits the text
//     at "<unk>", "<s>", "</s>" (the ids 0, BOS and EOS of every 2023 LLaMA vocabulary) and
//     prepends " " to each piece;
//   2023-11 (G4A_SPM_SPECIAL_IN_SHIM): with parse_special it splits by its own heuristic list and
//     adds no prefix at all: the shim splits by token type and lets the engine (parse_special off)
//     add the prefix to each piece.
// BPE vocabularies (GPT-2 style) are left to the engine in every era.

static void spm_setup(g4a_model *m) {
#if G4A_API_GEN <= 2
    m->spm_in_shim = true;
    const std::string unk_marker = " \xe2\x81\x87 ";   // what the 2023 converters stored for <unk>
    if (m->n_vocab > 0 && (compat_token_text(m, 0) == unk_marker || compat_token_text(m, 0) == "<unk>")) m->unk = 0;
    if (m->unk >= 0) m->specials.emplace_back("<unk>", m->unk);
    m->specials.emplace_back("</s>", compat_eos(m));
    m->specials.emplace_back("<s>", compat_bos(m));
    m->byte_token.assign(256, 0);
    for (int32_t id = 0; id < m->n_vocab; ++id) {
        const char *t = llama_token_to_str(m->ctx, id);
        if (t && t[0] && !t[1]) m->byte_token[(uint8_t)t[0]] = 1;
    }
    // the 2023 API hands out C strings, so the one-byte token "\0" reads as "": it is the one before
    // "\x01" in the byte run (id = byte + 3 in every 2023 LLaMA vocabulary)
    if (m->n_vocab > 4 && compat_token_text(m, 3).empty() && compat_token_text(m, 4) == "\x01") {
        m->nul = 3;
        m->byte_token[0] = 1;
    }
#elif defined(G4A_SPM_SPECIAL_IN_SHIM)
    if (llama_vocab_type(m->model) != LLAMA_VOCAB_TYPE_SPM) return;
    m->spm_in_shim = true;
    for (int32_t id = 0; id < m->n_vocab; ++id) {
        const enum llama_token_type t = llama_token_get_type(m->model, id);
        if (t == LLAMA_TOKEN_TYPE_UNKNOWN && m->unk < 0) m->unk = id;
        if (t != LLAMA_TOKEN_TYPE_CONTROL && t != LLAMA_TOKEN_TYPE_UNKNOWN && t != LLAMA_TOKEN_TYPE_USER_DEFINED) continue;
        std::string text = compat_token_text(m, id);
        if (text.empty()) continue;
        (t == LLAMA_TOKEN_TYPE_USER_DEFINED ? m->user_defined : m->specials).emplace_back(text, id);
    }
#else
    (void)m;
#endif
    auto longest_first = [](const std::pair<std::string, int32_t> &a, const std::pair<std::string, int32_t> &b) {
        return a.first.size() > b.first.size();
    };
    std::stable_sort(m->specials.begin(), m->specials.end(), longest_first);
    std::stable_sort(m->user_defined.begin(), m->user_defined.end(), longest_first);
}

// A piece of the text: plain text [off, off + len), or a special token.
struct Fragment {
    int32_t token;   // -1 for plain text
    size_t off, len;
};

// Split plain fragments at every occurrence of each special text, longest texts first (as
// llama.cpp's tokenizer_st_partition does).
static void split_specials(const std::string &text, const std::vector<std::pair<std::string, int32_t>> &specials,
                           std::vector<Fragment> &frags) {
    for (const auto &sp : specials) {
        std::vector<Fragment> next;
        for (const Fragment &f : frags) {
            if (f.token >= 0) { next.push_back(f); continue; }
            size_t at = f.off, end = f.off + f.len;
            while (at < end) {
                size_t hit = text.find(sp.first, at);
                if (hit == std::string::npos || hit + sp.first.size() > end) break;
                if (hit > at) next.push_back({-1, at, hit - at});
                next.push_back({sp.second, hit, sp.first.size()});
                at = hit + sp.first.size();
            }
            if (at < end) next.push_back({-1, at, end - at});
        }
        frags.swap(next);
    }
}

// The era's tokenizer, asked again with the size it reports when the first buffer is too small.
static bool era_tokenize(g4a_model *m, const std::string &text, bool add_bos, bool special,
                            std::vector<int32_t> &out) {
    std::vector<int32_t> buf(text.size() + 8);
    for (int attempt = 0; attempt < 2; ++attempt) {
        int32_t n = compat_tokenize(m, text, add_bos, special, buf.data(), (int32_t)buf.size());
        if (n >= 0) {
            out.insert(out.end(), buf.begin(), buf.begin() + n);
            return true;
        }
        if (n == INT32_MIN || (size_t)-(int64_t)n <= buf.size()) break;   // a failure, not a short buffer
        buf.resize((size_t)-(int64_t)n);
    }
    set_error("the tokenizer of this era failed on a text of " + std::to_string(text.size()) + " bytes");
    return false;
}

#if G4A_API_GEN <= 2
// The 2023 tokenizers fall back to one-byte tokens by looking the raw byte up with .at(): a byte
// without such a token throws std::out_of_range.  Name the byte instead.
static std::string missing_byte_reason(const g4a_model *m, const std::string &text) {
    std::string list;
    std::vector<uint8_t> seen(256, 0);
    int shown = 0;
    for (unsigned char c : text) {
        if (m->byte_token.empty() || m->byte_token[c] || seen[c]) continue;
        seen[c] = 1;
        if (shown++ == 12) { list += " ..."; break; }
        char b[8];
        snprintf(b, sizeof b, "%s0x%02X", list.empty() ? "" : " ", c);
        list += b;
    }
    if (list.empty()) return "";
    return "the text needs a one-byte token that this vocabulary lacks (bytes of the text without one: " + list +
           "): the 2023 tokenizers fall back to one-byte tokens, and this file stores its byte tokens another "
           "way (e.g. as <0xXX> text); upgrade the file to GGUF with gpt4all-convert to tokenize such text";
}
#endif

static bool tokenize_text(g4a_model *m, const std::string &text, bool add_bos, bool special, std::vector<int32_t> &out) {
    out.clear();
    if (!m->spm_in_shim) return era_tokenize(m, text, add_bos, special, out);
    if (add_bos) out.push_back(compat_bos(m));
    if (text.empty()) return true;
    std::vector<Fragment> frags{{-1, 0, text.size()}};
    split_specials(text, m->user_defined, frags);
    if (special) split_specials(text, m->specials, frags);
    for (const Fragment &f : frags) {
        if (f.token >= 0) { out.push_back(f.token); continue; }
#if G4A_API_GEN <= 2
        const std::string piece = " " + text.substr(f.off, f.len);   // the dummy prefix
        try {
            if (!era_tokenize(m, piece, false, false, out)) return false;
        } catch (const std::out_of_range &) {
            std::string why = missing_byte_reason(m, piece);
            if (why.empty()) throw;
            set_error(why);
            return false;
        }
#else
        // parse_special off: the engine adds the dummy prefix and splits nothing
        if (!era_tokenize(m, text.substr(f.off, f.len), false, false, out)) return false;
#endif
    }
    return true;
}

static int32_t compat_piece(g4a_model *m, int32_t tok, char *buf, int32_t cap) {
    // the unknown token has no text (as the 2024+ eras decode it); the older eras print a marker
    if (tok == m->unk) return 0;
#if G4A_API_GEN <= 2
    if (tok == m->nul) {
        if (cap < 1) return -1;
        buf[0] = 0;
        return 1;
    }
    const char *s = llama_token_to_str(m->ctx, tok);
    int32_t n = s ? (int32_t)strlen(s) : 0;
    if (n > cap) return -n;
    if (n) memcpy(buf, s, (size_t)n);
    return n;
#elif G4A_API_GEN == 4 && defined(G4A_PIECE_LSTRIP)
    return llama_token_to_piece(m->model, tok, buf, cap, 0, false);
#elif G4A_API_GEN == 4
#if defined(G4A_SPM_SPECIAL_IN_SHIM)
    if (m->spm_in_shim && llama_token_get_type(m->model, tok) == LLAMA_TOKEN_TYPE_USER_DEFINED) {
        // 2023-11 prints nothing for user-defined tokens; later eras print their text
        const std::string t = compat_token_text(m, tok);
        if ((int32_t)t.size() > cap) return -(int32_t)t.size();
        memcpy(buf, t.data(), t.size());
        return (int32_t)t.size();
    }
#endif
    return llama_token_to_piece(m->model, tok, buf, cap);
#else
    return llama_token_to_piece(m->vocab, tok, buf, cap, 0, false);
#endif
}

static int compat_eval(g4a_model *m, const int32_t *tokens, int32_t n) {
#if G4A_API_GEN <= 2
    return llama_eval(m->ctx, tokens, n, m->n_past, m->n_threads);
#elif G4A_API_GEN == 4
    return llama_decode(m->ctx, llama_batch_get_one(const_cast<int32_t *>(tokens), n, m->n_past, 0));
#else
    return llama_decode(m->ctx, llama_batch_get_one(const_cast<int32_t *>(tokens), n));
#endif
}

static void compat_reset(g4a_model *m) {
#if G4A_API_GEN <= 2
    (void)m;   // the next eval at n_past = 0 overwrites the cache
#elif G4A_API_GEN == 4
    llama_kv_cache_clear(m->ctx);
#else
    llama_memory_clear(llama_get_memory(m->ctx), true);
#endif
}

// Drop the cache entries of a sequence's positions >= n_keep; false when the engine cannot (recurrent state).
static bool compat_truncate(g4a_model *m, int32_t seq, int32_t n_keep) {
#if G4A_API_GEN <= 2
    (void)m;
    (void)seq;
    (void)n_keep;
    return true;   // the next eval at n_past = n_keep overwrites what follows
#elif G4A_API_GEN == 4 && defined(G4A_SPM_SPECIAL_IN_SHIM)
    llama_kv_cache_seq_rm(m->ctx, seq, n_keep, -1);   // 2023-11: no answer, and no recurrent models
    return true;
#elif G4A_API_GEN == 4
    return llama_kv_cache_seq_rm(m->ctx, seq, n_keep, -1);
#else
    return llama_memory_seq_rm(llama_get_memory(m->ctx), seq, n_keep, -1);
#endif
}

// Move a sequence's cached positions back (RoPE re-rotated by the engine); false where the era or model
// cannot.  Only the 2026 API says whether a model's cache can shift, so the older eras always say no.
static bool compat_shift(g4a_model *m, int32_t seq, int32_t n_keep, int32_t n_discard) {
#if G4A_API_GEN >= 6
    llama_memory_t mem = llama_get_memory(m->ctx);
    // a recurrent state has no positions to drop from the middle
    if (!llama_memory_can_shift(mem) || llama_model_is_recurrent(m->model) || llama_model_is_hybrid(m->model))
        return false;
    if (n_discard == 0) return true;
    if (!llama_memory_seq_rm(mem, seq, n_keep, n_keep + n_discard)) return false;
    llama_memory_seq_add(mem, seq, n_keep + n_discard, -1, -n_discard);
    return true;
#else
    (void)m;
    (void)seq;
    (void)n_keep;
    (void)n_discard;
    return false;
#endif
}

#if G4A_API_GEN >= 4
// dst becomes a copy of src (its cells are shared, not copied, in the unified cache)
static void compat_seq_copy(g4a_model *m, int32_t src, int32_t dst) {
#if G4A_API_GEN >= 6
    llama_memory_t mem = llama_get_memory(m->ctx);
    llama_memory_seq_rm(mem, dst, -1, -1);
    llama_memory_seq_cp(mem, src, dst, -1, -1);
#else
    llama_kv_cache_seq_rm(m->ctx, dst, -1, -1);
    llama_kv_cache_seq_cp(m->ctx, src, dst, -1, -1);
#endif
}

// One llama_decode over tokens [i0, i0 + n) of a step: positions and sequences given, logits where want[i].
// 0 on success; 1 (the engine's answer) when the cache has no room for this many cells at once.
static int compat_decode_view(g4a_model *m, llama_batch &b, const int32_t *tokens, const int32_t *seqs,
                              const int32_t *pos, const char *want, int32_t i0, int32_t n) {
    b.n_tokens = n;
    for (int32_t j = 0; j < n; ++j) {
        b.token[j] = tokens[i0 + j];
        b.pos[j] = pos[i0 + j];
        b.n_seq_id[j] = 1;
        b.seq_id[j][0] = seqs[i0 + j];
        b.logits[j] = want[i0 + j];
    }
    return llama_decode(m->ctx, b);
}
#endif

static const float *compat_logits(g4a_model *m) {
#if G4A_API_GEN >= 6
    return llama_get_logits_ith(m->ctx, -1);
#else
    return llama_get_logits(m->ctx);
#endif
}

static const float *compat_embeddings(g4a_model *m) {
#if G4A_API_GEN >= 6
    const float *e = llama_get_embeddings_seq(m->ctx, 0);
    if (!e) e = llama_get_embeddings_ith(m->ctx, -1);
    return e;
#else
    return llama_get_embeddings(m->ctx);
#endif
}

// The ggml of 2023 fills its fp16 -> fp32 table in ggml_init(): until some context was created in
// the process, every F16 value (and every f16 block scale) reads as 0.  Loads create contexts;
// quantize and dequantize may run first, so they make sure the tables exist.
static void ggml_tables_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct ggml_init_params ip;
        memset(&ip, 0, sizeof ip);
        ip.mem_size = 1024;
        struct ggml_context *c = ggml_init(ip);
        if (c) ggml_free(c);
    });
}

static int compat_quantize(const char *in, const char *out, int32_t ftype, int32_t nthread) {
    ggml_tables_once();
#if defined(G4A_QUANTIZE_NTHREAD)
    return llama_model_quantize(in, out, (enum llama_ftype)ftype, nthread);
#else
    llama_model_quantize_params qp = llama_model_quantize_default_params();
    qp.ftype = (enum llama_ftype)ftype;
    qp.nthread = nthread;
    return (int)llama_model_quantize(in, out, &qp);
#endif
}

static int compat_dequantize(int32_t type, const void *src, float *dst, int64_t n) {
    if (type < 0 || type >= (int32_t)GGML_TYPE_COUNT) return -1;
    ggml_tables_once();
    enum ggml_type t = (enum ggml_type)type;
    if (t == GGML_TYPE_F32) { memcpy(dst, src, (size_t)n * sizeof(float)); return 0; }
    if (t == GGML_TYPE_F16) {
        const ggml_fp16_t *h = (const ggml_fp16_t *)src;
        for (int64_t i = 0; i < n; ++i) dst[i] = ggml_fp16_to_fp32(h[i]);
        return 0;
    }
    int64_t blck = ggml_blck_size(t);
    if (blck <= 0 || n % blck != 0) return -1;
#if defined(G4A_GGML_QUANTIZE_FNS) || defined(G4A_GGML_TYPE_TRAITS)
    if (n > INT32_MAX) return -1;   // these eras take an int count
#endif
#if defined(G4A_GGML_QUANTIZE_FNS)
    quantize_fns_t fns = ggml_internal_get_quantize_fn((size_t)t);
    if (!fns.dequantize_row_q) return -1;
    fns.dequantize_row_q(src, dst, (int)n);
#elif defined(G4A_GGML_TYPE_TRAITS)
    ggml_type_traits_t tr = ggml_internal_get_type_traits(t);
    if (!tr.to_float) return -1;
    tr.to_float(src, dst, (int)n);
#else
    const struct ggml_type_traits *tr = ggml_get_type_traits(t);
    if (!tr || !tr->to_float) return -1;
    tr->to_float(src, dst, n);
#endif
    return 0;
}

static std::string compat_system_info() {
    const char *s = llama_print_system_info();
    return s ? std::string(s) : std::string();
}

// ---------------------------------------------------------------------------------------------
// this engine's part of the shared exports (g4a_exports.h)

static std::string engine_info() { return compat_system_info(); }

static g4a_model *engine_load(const char *path, const g4a_load_params *p) {
    if (access(path, R_OK) != 0) {
        set_error(std::string(path) + ": cannot read: " + strerror(errno));
        return nullptr;
    }
    backend_init_once();
    std::unique_ptr<g4a_model> m(new g4a_model());
    m->n_ctx = p->n_ctx > 0 ? p->n_ctx : 512;
    m->n_threads = m->n_threads_loaded = p->n_threads > 0 ? p->n_threads : default_threads();
    m->n_batch = std::min<int32_t>(512, m->n_ctx);
#if G4A_API_GEN >= 4
    m->n_seq_max = std::max<int32_t>(1, p->n_seq_max);
    const int32_t n_ctx_seq = m->n_ctx;
#endif
    m->embeddings = p->embeddings != 0;
    m->vocab_only = p->vocab_only != 0;
    stderr_capture cap;
    cap.begin();
    bool ok = false;
    try {
        ok = compat_load(m.get(), path, p);
    } catch (const std::exception &e) {
        cap.end();
        set_error(std::string("the engine failed to load ") + path + ": " + e.what());
        compat_free(m.get());
        return nullptr;
    }
    cap.end();
    if (!ok) {
        std::string why = last_lines(cap.text, 3);
        set_error(std::string("the engine refused ") + path +
                  (why.empty() ? std::string(" (it gave no reason)") : ": " + why));
        compat_free(m.get());
        return nullptr;
    }
    compat_query(m.get());
#if G4A_API_GEN >= 4
    if (m->n_seq_max > 1 && m->ctx) m->n_ctx = std::min(n_ctx_seq, m->n_ctx / m->n_seq_max);   // per sequence
#endif
    if (!m->ctx || m->vocab_only) m->n_ctx = 0;   // a vocabulary-only load has no context to evaluate in
    m->n_gpu_layers = G4A_GPU ? p->n_gpu_layers : 0;
    spm_setup(m.get());
    return m.release();
}

static void engine_free(g4a_model *m) {
    compat_free(m);
    delete m;
}

static bool engine_can_eval(const g4a_model *m) { return m->ctx != nullptr; }
static int32_t engine_n_ctx_train(const g4a_model *m) { return compat_n_ctx_train(m); }
static int32_t engine_n_embd(const g4a_model *m) { return m->ctx || G4A_API_GEN >= 4 ? compat_n_embd(m) : 0; }
static int32_t engine_bos(const g4a_model *m) { return compat_bos(m); }
static int32_t engine_eos(const g4a_model *m) { return compat_eos(m); }
static bool engine_is_eog(const g4a_model *m, int32_t tok) { return compat_is_eog(m, tok); }
static int32_t engine_n_gpu_layers(const g4a_model *m) { return m->n_gpu_layers; }

static bool engine_tokenize(g4a_model *m, const std::string &text, bool add_bos, bool special,
                            std::vector<int32_t> &out) {
#if G4A_API_GEN <= 2
    if (!m->ctx) { set_error("g4a_tokenize: no context"); return false; }
#endif
    return tokenize_text(m, text, add_bos, special, out);
}

static int32_t engine_piece(g4a_model *m, int32_t tok, char *buf, int32_t cap) { return compat_piece(m, tok, buf, cap); }

static bool engine_eval(g4a_model *m, const int32_t *tokens, int32_t n) {
    for (int32_t done = 0; done < n;) {
        const int32_t chunk = std::min(m->n_batch, n - done);
        const int rc = compat_eval(m, tokens + done, chunk);
        if (rc != 0) {
            set_error("g4a_eval: the engine returned " + std::to_string(rc));
            return false;
        }
        m->n_past += chunk;
        done += chunk;
    }
    return true;
}

static void engine_reset(g4a_model *m) { compat_reset(m); }
static void engine_set_threads(g4a_model *m) {
#if G4A_API_GEN >= 4
    llama_set_n_threads(m->ctx, m->n_threads, m->n_threads);
#else
    (void)m;   // llama_eval takes the count at every call
#endif
}
static bool engine_truncate(g4a_model *m, int32_t n_keep) { return compat_truncate(m, 0, n_keep); }
static bool engine_shift(g4a_model *m, int32_t n_keep, int32_t n_discard) { return compat_shift(m, 0, n_keep, n_discard); }

#ifdef G4A_ENGINE_SEQUENCES
static bool engine_seq_truncate(g4a_model *m, int32_t seq, int32_t n_keep) { return compat_truncate(m, seq, n_keep); }
static bool engine_seq_shift(g4a_model *m, int32_t seq, int32_t n_keep, int32_t n_discard) {
    return compat_shift(m, seq, n_keep, n_discard);
}
static bool engine_seq_copy(g4a_model *m, int32_t src, int32_t dst) {
    compat_seq_copy(m, src, dst);
    return true;
}

// Continuous batching: one step for several sequences, in views of at most n_batch tokens (the 2023-11
// engine asserts that bound); a view the cache has no room for is halved and tried again, as llama-server
// does.  Each sequence's last token gets logits, copied out as soon as its view is decoded (the next view
// overwrites the engine's buffer).  On failure the positions this call added are removed again.
static bool engine_decode(g4a_model *m, const int32_t *tokens, const int32_t *seqs, int32_t n) {
    std::vector<int32_t> pos((size_t)n), last((size_t)m->n_seq_max, -1), next((size_t)m->n_seq_max);
    std::vector<char> want((size_t)n, 0);
    for (int32_t s = 0; s < m->n_seq_max; ++s) next[(size_t)s] = past_of(m, s);
    for (int32_t i = 0; i < n; ++i) {
        pos[(size_t)i] = next[(size_t)seqs[i]]++;
        last[(size_t)seqs[i]] = i;
    }
    for (int32_t s = 0; s < m->n_seq_max; ++s)
        if (last[(size_t)s] >= 0) want[(size_t)last[(size_t)s]] = 1;
    struct batch_guard {
        llama_batch b;
        ~batch_guard() { llama_batch_free(b); }
    } g{llama_batch_init(m->n_batch, 0, 1)};
    auto undo = [&] {
        for (int32_t s = 0; s < m->n_seq_max; ++s)
            if (last[(size_t)s] >= 0) compat_truncate(m, s, past_of(m, s));
    };
    int32_t view = m->n_batch;
    for (int32_t done = 0; done < n;) {
        const int32_t cnt = std::min(view, n - done);
        const int rc = compat_decode_view(m, g.b, tokens, seqs, pos.data(), want.data(), done, cnt);
        if (rc == 1 && cnt > 1) {   // no contiguous room: smaller views
            view = std::max<int32_t>(1, cnt / 2);
            continue;
        }
        if (rc != 0) {
            undo();
            set_error("g4a_decode: the engine returned " + std::to_string(rc) +
                      (rc == 1 ? " (no room in the cache for the batch)" : ""));
            return false;
        }
        for (int32_t j = 0; j < cnt; ++j) {
            const int32_t i = done + j;
            if (!want[(size_t)i]) continue;
            const float *l = llama_get_logits_ith(m->ctx, j);
            if (!l) {
                undo();
                set_error("g4a_decode: the engine kept no logits for sequence " + std::to_string(seqs[i]));
                return false;
            }
            m->seq_logits[(size_t)seqs[i]].assign(l, l + m->n_vocab);
        }
        done += cnt;
    }
    for (int32_t s = 0; s < m->n_seq_max; ++s) past_of(m, s) = next[(size_t)s];
    return true;
}
#endif
static const float *engine_logits(g4a_model *m) { return compat_logits(m); }

static const float *engine_embeddings(g4a_model *m) {
    if (!m->embeddings) { set_error("g4a_embeddings: the model was not loaded with embeddings=1"); return nullptr; }
    const float *e = compat_embeddings(m);
    if (!e) set_error("g4a_embeddings: this engine produced no embedding for this model");
    return e;
}

static int engine_quantize(const char *in, const char *out, int32_t ftype, int32_t n_threads) {
    backend_init_once();
    stderr_capture cap;
    cap.begin(true);
    int rc;
    try {
        rc = compat_quantize(in, out, ftype, n_threads);
    } catch (const std::exception &e) {
        cap.end();
        set_error(std::string("quantize failed: ") + e.what());
        return -1;
    }
    cap.end();
    if (rc != 0) {
        std::string why = last_lines(cap.text, 3);
        set_error("quantize of " + std::string(in) + " to ftype " + std::to_string(ftype) + " failed" +
                  (why.empty() ? std::string() : ": " + why));
        return -1;
    }
    return 0;
}

static bool engine_dequantize(int32_t type, const void *src, float *dst, int64_t n) {
    if (compat_dequantize(type, src, dst, n) == 0) return true;
    set_error("g4a_dequantize: type " + std::to_string(type) + " is unknown to this era or " + std::to_string(n) +
              " is not a whole number of blocks");
    return false;
}

#include "g4a_exports.h"
