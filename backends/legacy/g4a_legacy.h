// g4a_legacy.h - what the model code of GPT4All's 2023 ggml architectures shares.
//
// llama.cpp never read these files, so the ggml-gpt4all backends carry their own model code over the
// ggml of the pinned tree (only ggml.h is used).  The shared part (g4a_legacy.cpp) opens the file,
// tells the architecture by its magic and header, walks the tensor records, runs the evaluation loop
// and defines the g4a_* exports; each architecture adds, in a source file of its own (as GPT4All's
// llmodel plugins did), its header read and checks, its vocabulary, its tensor table, its graph and
// its tokenizer (an ArchCode below).
//
// Errors: arch code reports through Reader::err (fail()), never set_error(): every translation unit
// has its own copy of g4a_common.h's per-thread error, and only g4a_legacy.cpp's is the library's.
//
// Build-time definitions: G4A_LEGACY_QNT (ggml quant version of the tree: 0 for the QNT v0 layout of
// llama.cpp before PR 1405, 2 for the f16-scale layout of PR 1508 and later), plus those of g4a_shim.cpp.
#ifndef G4A_LEGACY_H
#define G4A_LEGACY_H

#include "g4a_common.h"

#include "ggml.h"

#include <cerrno>
#include <cinttypes>
#include <climits>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#ifndef G4A_API_GEN
#define G4A_API_GEN 0
#endif
#ifndef G4A_LEGACY_QNT
#define G4A_LEGACY_QNT 0
#endif

// ggml API differences between the two trees these files build against
#if G4A_LEGACY_QNT >= 2
#define ROPE(ctx, a, past, dims, mode) ggml_rope_inplace(ctx, a, past, dims, mode, 0)
#define ALIBI(ctx, a, past, heads, bias) ggml_alibi(ctx, a, past, heads, bias)
#define SCALE(ctx, a, b) ggml_scale_inplace(ctx, a, b)
#define DIAG_MASK_INF(ctx, a, past) ggml_diag_mask_inf_inplace(ctx, a, past)
#define SOFT_MAX(ctx, a) ggml_soft_max_inplace(ctx, a)
#else
#define ROPE(ctx, a, past, dims, mode) ggml_rope(ctx, a, past, dims, mode)
#define ALIBI(ctx, a, past, heads, bias) ggml_alibi(ctx, a, past, heads)
#define SCALE(ctx, a, b) ggml_scale(ctx, a, b)
#define DIAG_MASK_INF(ctx, a, past) ggml_diag_mask_inf(ctx, a, past)
#define SOFT_MAX(ctx, a) ggml_soft_max(ctx, a)
#endif

namespace g4a_legacy {

constexpr uint32_t MAGIC_GGML = 0x67676d6c;   // GPT-J, StarCoder, ggml-examples MPT
constexpr uint32_t MAGIC_GGMM = 0x67676d6d;   // GPT4All's MPT
constexpr uint32_t MAGIC_GGJT = 0x67676a74;   // Falcon (the magic LLaMA ggjt files also use)
constexpr uint32_t MAGIC_REPL = 0x7265706c;   // Replit
constexpr uint32_t MAGIC_BERT = 0x62657274;   // BERT (Embed4All)
constexpr int32_t MAX_TOKEN_BYTES = 1 << 16;
constexpr int32_t MAX_NAME = 256;

// Which header a file has (one architecture may come with more than one).
enum class Header { gptj, mpt_ggmm, mpt_ggml, starcoder, falcon, replit, bert };

// One block's weights under role names shared by the architectures (each uses those it has).
struct Layer {
    ggml_tensor *ln_1_g = nullptr, *ln_1_b = nullptr, *ln_2_g = nullptr, *ln_2_b = nullptr;
    ggml_tensor *q = nullptr, *k = nullptr, *v = nullptr, *q_b = nullptr, *k_b = nullptr, *v_b = nullptr;
    ggml_tensor *qkv = nullptr, *qkv_b = nullptr, *out = nullptr, *out_b = nullptr;
    ggml_tensor *up = nullptr, *up_b = nullptr, *down = nullptr, *down_b = nullptr;
};

struct Reader {
    FILE *f = nullptr;
    std::string path;
    int64_t size = 0;
    std::string err;

    ~Reader() {
        if (f) fclose(f);
    }
    bool open(const char *p);
    int64_t pos() { return (int64_t)ftello(f); }
    int64_t left() { return size - pos(); }
    bool seek(int64_t at) { return fseeko(f, (off_t)at, SEEK_SET) == 0; }
    bool read(void *dst, size_t n, const char *what);
    template <typename T> bool get(T &v, const char *what) { return read(&v, sizeof v, what); }
};

inline bool fail(Reader &r, const std::string &msg) {
    r.err = msg;
    return false;
}

struct TensorRec {
    std::string name;
    int32_t type = 0;
    int32_t n_dims = 0;
    int64_t ne[2] = {1, 1};
    int64_t offset = 0;   // of the data in the file
    int64_t nbytes = 0;
};

// One tensor the model code expects: its place, its shape, and whether it may be quantized.
struct Slot {
    ggml_tensor **dst;
    int n_dims;
    int64_t ne0, ne1;
    bool matrix;          // 2-D weight: any float or quantized type of the era; else F32 only
    bool seen = false;
    bool optional = false;   // may be absent (StarCoder's lm_head)
};
using TensorTable = std::unordered_map<std::string, Slot>;

struct ArchCode;

}  // namespace g4a_legacy

struct g4a_model : g4a_model_state {
    const g4a_legacy::ArchCode *code = nullptr;
    g4a_legacy::Header header = g4a_legacy::Header::gptj;
    std::string path;

    // hyperparameters (n_ff: MLP width; n_head_kv: key/value heads)
    int32_t n_ctx_train = 0, n_embd = 0, n_head = 0, n_head_kv = 0, n_layer = 0, n_rot = 0, n_ff = 0, ftype = 0;
    float alibi_bias_max = 8.0f, clip_qkv = 0.0f;

    // vocabulary
    std::vector<std::string> tokens;
    std::unordered_map<std::string, int32_t> token_to_id;
    std::unordered_map<std::string, int32_t> subword_to_id;                 // BERT's "##" pieces
    std::unordered_map<std::string, std::pair<int32_t, float>> pieces;      // Replit: id, -score
    std::vector<std::string> specials;   // in vocabulary order
    size_t max_token_len = 0;
    int32_t eos = 0;
    int32_t im_end = -1;

    // weights
    ggml_context *wctx = nullptr;
    void *wbuf = nullptr;
    ggml_tensor *wte = nullptr, *wpe = nullptr, *wtt = nullptr, *emb_ln_g = nullptr, *emb_ln_b = nullptr;
    ggml_tensor *ln_f_g = nullptr, *ln_f_b = nullptr, *lm_head = nullptr, *lm_head_b = nullptr;
    std::vector<g4a_legacy::Layer> layers;

    // KV cache (of the type the reference code keeps)
    ggml_context *kvctx = nullptr;
    void *kvbuf = nullptr;
    ggml_tensor *mk = nullptr, *mv = nullptr;

    std::vector<float> logits;
    std::vector<int32_t> seq;          // encoders: the tokens evaluated since the last reset
    std::vector<float> embedding;      // encoders: the pooled vector of `seq` (empty: not computed yet)
    std::vector<uint8_t> work;         // compute buffer of one evaluation

    ~g4a_model() {
        if (wctx) ggml_free(wctx);
        if (kvctx) ggml_free(kvctx);
        free(wbuf);
        free(kvbuf);
    }
};

namespace g4a_legacy {

// What one architecture adds to the shared code.
struct ArchCode {
    const char *name;                                          // in messages: "GPT-J", "Falcon", ...
    bool (*read_header)(Reader &, g4a_model &);                // hyperparameters after the magic, checked
    bool (*read_vocab)(Reader &, g4a_model &);
    void (*tensors)(g4a_model &, TensorTable &);               // every tensor, by name
    int64_t tensor_align;                                      // data offsets rounded up to this (1: none)
    bool learned_positions;                                    // n_ctx is at most n_ctx_train
    ggml_type kv_type;                                         // GGML_TYPE_COUNT: no cache (an encoder)
    int64_t (*kv_width)(const g4a_model &);                    // cached values per position and layer
    // the logits of the last position (decoders) or the pooled vector (encoders) of N tokens at n_past
    ggml_tensor *(*graph)(g4a_model &, ggml_context *, ggml_cgraph &, ggml_tensor *embd, int N, int n_past);
    void (*tokenize)(const g4a_model &, const std::string &, std::vector<int32_t> &);
    bool (*is_eog)(const g4a_model &, int32_t);
};

extern const ArchCode GPTJ, MPT;
#if G4A_LEGACY_QNT >= 2
extern const ArchCode STARCODER, FALCON, REPLIT, BERT;
#endif

// --- shared helpers (g4a_legacy.cpp) ---

// n_vocab, n_embd, n_head, n_layer and n_ctx_train in range ("<what> header: ..." otherwise)
bool check_common_hparams(Reader &r, const g4a_model &m, const char *what);
// ftype as ggml's ftype numbering, optionally with 1000 x the quant version
bool check_ftype(Reader &r, const g4a_model &m, const char *what, int max_base);
// n_vocab x (u32 length, bytes[, 4-byte score that is skipped]); later duplicates win the lookup
bool read_plain_vocab(Reader &r, g4a_model &m, bool skip_score);
int32_t find_token(const g4a_model &m, const char *s);
// GPT4All's gpt_tokenize (GPT-2 pre-split, greedy longest vocabulary match)
void gpt_tokenize(const g4a_model &m, const std::string &text, std::vector<int32_t> &out);
ggml_tensor *layer_norm(ggml_context *c, ggml_tensor *x, ggml_tensor *g, ggml_tensor *b);
// softmax(KQ) x V over layer il's cached values (stored by position, transposed here) for the N new tokens
// at n_past: the attention output of every head, merged into an F32 [n_embd, N] tensor
ggml_tensor *attend_cached_values(ggml_context *c, const g4a_model &m, int il, ggml_tensor *kq_soft_max, int n_past,
                                  int N);
// builders of a TensorTable entry
inline void add_mat(TensorTable &s, const std::string &n, ggml_tensor **d, int64_t ne0, int64_t ne1) {
    s.emplace(n, Slot{d, 2, ne0, ne1, true});
}
inline void add_f32_mat(TensorTable &s, const std::string &n, ggml_tensor **d, int64_t ne0, int64_t ne1) {
    s.emplace(n, Slot{d, 2, ne0, ne1, false});
}
inline void add_vec(TensorTable &s, const std::string &n, ggml_tensor **d, int64_t ne0) {
    s.emplace(n, Slot{d, 1, ne0, 1, false});
}
// a view of layer il's cached keys (or values) for positions [from, from + n)
inline size_t kv_offset(const g4a_model &m, const ggml_tensor *cache, int il, int64_t from, int64_t width) {
    return ggml_element_size(cache) * (size_t)width * ((size_t)il * (size_t)m.n_ctx + (size_t)from);
}

}  // namespace g4a_legacy

#endif  // G4A_LEGACY_H
