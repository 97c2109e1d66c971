// g4a_gptj_mpt.cpp - g4a_shim.h for the GPT4All-era GPT-J and MPT ggml files, on a 2023 ggml.
//
// llama.cpp never read these files, so this backend carries its own model code over the ggml of the
// pinned tree (only ggml.h is used; llama.cpp's own loader is never called):
//
//   GPT-J  magic "ggml", i32 n_vocab n_ctx n_embd n_head n_layer n_rot ftype, i32 vocab count,
//          n_vocab x (u32 length, bytes), tensor records (transformer.h.N.*, lm_head.*).
//   MPT    magic "ggmm" (GPT4All): u32 n_vocab n_ctx n_layer n_head n_embd, f32 alibi_bias_max clip_qkv,
//          u32 ftype, u32 vocab count, n_vocab x (u32 length | bit 31 for special tokens, bytes), records;
//          magic "ggml" (ggml examples): i32 d_model max_seq_len n_heads n_layers n_vocab,
//          f32 alibi_bias_max clip_qkv, i32 ftype, n_vocab x (u32 length, bytes), records.
//   record i32 n_dims, i32 name length, i32 ggml type, i32 ne[n_dims], name, data (no alignment);
//          records follow each other until the end of the file.
//
// The graphs follow the GPT4All 1.0.x model code (the reference these files were made for):
//   GPT-J  keys are stored unrotated in an F16 cache and rotated there in place (rope mode 1), values
//          are stored by position and transposed per evaluation; parallel attention + MLP.
//   MPT    fused QKV, keys by position, values transposed in the cache, ALiBi on the scaled scores,
//          no biases, tied embeddings.  GPT4All ignores the header's alibi_bias_max (the ggml op has
//          8 built in) and clip_qkv; files with the ggml-examples header honour both.
//
// Tokenizer: GPT4All's gpt_tokenize, written out by hand: the text is split like the regex
//   's|'t|'re|'ve|'m|'ll|'d| ?[[:alpha:]]+| ?[[:digit:]]+| ?[^\s[:alpha:][:digit:]]+|\s+(?!\S)|\s+
// (ASCII classes, as std::regex in the "C" locale) and each piece is covered greedily by the longest
// vocabulary entries; bytes without an entry are dropped.  Special tokens of "ggmm" files are cut out
// of the text first, wherever they occur (as GPT4All does, whatever parse_special says).  This is not
// the BPE merge algorithm of the original tokenizers, but it is what GPT4All fed these models.
//
// Every number read from the file is checked before use: a bad file fails with g4a_last_error() text
// instead of a ggml assertion.
//
// Build-time definitions: G4A_LEGACY_QNT (ggml quant version of the tree: 0 for the QNT v0 layout of
// llama.cpp before PR 1405, 2 for the f16-scale layout of PR 1508 and later), plus those of g4a_shim.cpp.

#include "g4a_common.h"

#include "ggml.h"

#include <cerrno>
#include <cinttypes>
#include <climits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#ifndef G4A_API_GEN
#define G4A_API_GEN 0
#endif
#ifndef G4A_LEGACY_QNT
#define G4A_LEGACY_QNT 0
#endif


// ggml API differences between the two trees this file builds against
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

namespace {

constexpr uint32_t MAGIC_GGML = 0x67676d6c;
constexpr uint32_t MAGIC_GGMM = 0x67676d6d;
constexpr int32_t MAX_TOKEN_BYTES = 1 << 16;
constexpr int32_t MAX_NAME = 256;
constexpr int32_t EVAL_CHUNK = 32;   // tokens per graph (bounds the scratch memory of one evaluation)

enum class Arch { gptj, mpt };
enum class Header { gptj, mpt_ggmm, mpt_ggml };

struct Layer {
    // GPT-J
    ggml_tensor *ln_1_g = nullptr, *ln_1_b = nullptr;
    ggml_tensor *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr;
    ggml_tensor *fc_in = nullptr, *fc_in_b = nullptr, *fc_out = nullptr, *fc_out_b = nullptr;
    // MPT
    ggml_tensor *norm_1 = nullptr, *norm_2 = nullptr;
    ggml_tensor *wqkv = nullptr, *out_proj = nullptr, *up = nullptr, *down = nullptr;
};

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
};

}  // namespace

struct g4a_model : g4a_model_state {
    Arch arch = Arch::gptj;
    Header header = Header::gptj;
    std::string path;

    // hyperparameters
    int32_t n_ctx_train = 0, n_embd = 0, n_head = 0, n_layer = 0, n_rot = 0, ftype = 0;
    float alibi_bias_max = 8.0f, clip_qkv = 0.0f;

    // vocabulary
    std::vector<std::string> tokens;
    std::unordered_map<std::string, int32_t> token_to_id;
    std::vector<std::string> specials;   // in vocabulary order
    size_t max_token_len = 0;
    int32_t eos = 0;
    int32_t im_end = -1;

    // weights
    ggml_context *wctx = nullptr;
    void *wbuf = nullptr;
    ggml_tensor *wte = nullptr, *ln_f_g = nullptr, *ln_f_b = nullptr, *lm_head = nullptr, *lm_head_b = nullptr;
    ggml_tensor *norm_f = nullptr;
    std::vector<Layer> layers;

    // KV cache (F16, as the reference code keeps it)
    ggml_context *kvctx = nullptr;
    void *kvbuf = nullptr;
    ggml_tensor *mk = nullptr, *mv = nullptr;

    int32_t n_threads = 1;

    std::vector<float> logits;
    std::vector<uint8_t> work;         // compute buffer of one evaluation

    ~g4a_model() {
        if (wctx) ggml_free(wctx);
        if (kvctx) ggml_free(kvctx);
        free(wbuf);
        free(kvbuf);
    }
};

namespace {

void ggml_init_once() {
    // the first ggml_init builds ggml's fp16 tables; do it once under a lock of our own
    static std::once_flag once;
    std::call_once(once, [] {
        ggml_init_params p = {1024, nullptr, false};
        ggml_context *c = ggml_init(p);
        if (c) ggml_free(c);
    });
}

// ---------------------------------------------------------------------------------------------
// reading

struct Reader {
    FILE *f = nullptr;
    std::string path;
    int64_t size = 0;
    std::string err;

    ~Reader() { if (f) fclose(f); }

    bool open(const char *p) {
        path = p;
        f = fopen(p, "rb");
        if (!f) { err = path + ": cannot open: " + strerror(errno); return false; }
        if (fseeko(f, 0, SEEK_END) != 0) { err = path + ": cannot seek"; return false; }
        size = (int64_t)ftello(f);
        fseeko(f, 0, SEEK_SET);
        return true;
    }
    int64_t pos() { return (int64_t)ftello(f); }
    int64_t left() { return size - pos(); }
    bool read(void *dst, size_t n, const char *what) {
        if ((int64_t)n > left()) {
            err = "file ends inside " + std::string(what) + " at byte " + std::to_string(pos()) +
                  " (truncated file?)";
            return false;
        }
        if (n && fread(dst, 1, n, f) != n) { err = "read error in " + std::string(what); return false; }
        return true;
    }
    template <typename T> bool get(T &v, const char *what) { return read(&v, sizeof v, what); }
};

bool fail(Reader &r, const std::string &msg) {
    r.err = msg;
    return false;
}

bool is_matrix_type(int32_t t) {
    switch (t) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1:
#if G4A_LEGACY_QNT == 0
        case GGML_TYPE_Q4_2:
#endif
        case GGML_TYPE_Q5_0: case GGML_TYPE_Q5_1: case GGML_TYPE_Q8_0:
            return true;
        default:
            return false;
    }
}

std::string type_label(int32_t t) {
    if (t >= 0 && t < (int32_t)GGML_TYPE_COUNT) {
        const char *n = ggml_type_name((ggml_type)t);
        if (n) return std::string(n) + " (" + std::to_string(t) + ")";
    }
    return "type " + std::to_string(t);
}

bool read_hparams(Reader &r, g4a_model &m) {
    uint32_t magic = 0;
    if (!r.get(magic, "the magic")) return false;
    if (magic == MAGIC_GGMM) {
        uint32_t hp[5];
        float fp[2];
        uint32_t ftype = 0;
        if (!r.read(hp, sizeof hp, "the hyperparameters") || !r.read(fp, sizeof fp, "the hyperparameters") ||
            !r.get(ftype, "the hyperparameters"))
            return false;
        m.arch = Arch::mpt;
        m.header = Header::mpt_ggmm;
        if (hp[0] > INT32_MAX || hp[1] > INT32_MAX || hp[2] > INT32_MAX || hp[3] > INT32_MAX ||
            hp[4] > INT32_MAX || ftype > INT32_MAX)
            return fail(r, "MPT header: a hyperparameter is out of range");
        m.n_vocab = (int32_t)hp[0];
        m.n_ctx_train = (int32_t)hp[1];
        m.n_layer = (int32_t)hp[2];
        m.n_head = (int32_t)hp[3];
        m.n_embd = (int32_t)hp[4];
        m.alibi_bias_max = fp[0];
        m.clip_qkv = fp[1];
        m.ftype = (int32_t)ftype;
        return true;
    }
    if (magic != MAGIC_GGML) {
        char buf[64];
        snprintf(buf, sizeof buf, "0x%08x", magic);
        return fail(r, std::string("not a GPT-J or MPT ggml file (magic ") + buf +
                       ", expected 0x67676d6c 'ggml' or 0x67676d6d 'ggmm')");
    }
    // GPT-J: 7 x i32 then a vocab count equal to n_vocab; ggml-examples MPT: 5 x i32, 2 x f32, i32
    int32_t h[8];
    if (!r.read(h, sizeof h, "the hyperparameters")) return false;
    if (h[7] == h[0] && h[0] > 0) {
        m.arch = Arch::gptj;
        m.header = Header::gptj;
        m.n_vocab = h[0];
        m.n_ctx_train = h[1];
        m.n_embd = h[2];
        m.n_head = h[3];
        m.n_layer = h[4];
        m.n_rot = h[5];
        m.ftype = h[6];
        return true;   // the vocab count (h[7]) has been consumed
    }
    float fp[2];
    memcpy(fp, &h[5], sizeof fp);
    if (h[4] > 0 && std::isfinite(fp[0]) && std::isfinite(fp[1])) {
        m.arch = Arch::mpt;
        m.header = Header::mpt_ggml;
        m.n_embd = h[0];
        m.n_ctx_train = h[1];
        m.n_head = h[2];
        m.n_layer = h[3];
        m.n_vocab = h[4];
        m.alibi_bias_max = fp[0];
        m.clip_qkv = fp[1];
        m.ftype = h[7];
        return true;
    }
    return fail(r, "ggml file that is neither GPT-J (vocab count after 7 hyperparameters) nor MPT "
                   "(two finite floats after 5 hyperparameters); LLaMA ggml files belong to a llama.cpp backend");
}

bool check_hparams(Reader &r, const g4a_model &m) {
    const char *what = m.arch == Arch::gptj ? "GPT-J" : "MPT";
    auto bad = [&](const std::string &s) { return fail(r, std::string(what) + " header: " + s); };
    if (m.n_vocab <= 0 || m.n_vocab > (1 << 22)) return bad("n_vocab " + std::to_string(m.n_vocab) + " out of range");
    if (m.n_embd <= 0 || m.n_embd > (1 << 16)) return bad("n_embd " + std::to_string(m.n_embd) + " out of range");
    if (m.n_head <= 0 || m.n_head > m.n_embd || m.n_embd % m.n_head != 0)
        return bad("n_head " + std::to_string(m.n_head) + " does not divide n_embd " + std::to_string(m.n_embd));
    if (m.n_layer <= 0 || m.n_layer > 1024) return bad("n_layer " + std::to_string(m.n_layer) + " out of range");
    if (m.n_ctx_train <= 0 || m.n_ctx_train > (1 << 20))
        return bad("n_ctx " + std::to_string(m.n_ctx_train) + " out of range");
    if (m.arch == Arch::gptj) {
        int hd = m.n_embd / m.n_head;
        if (m.n_rot < 0 || m.n_rot > hd || m.n_rot % 2 != 0)
            return bad("n_rot " + std::to_string(m.n_rot) + " must be even and at most n_embd/n_head = " +
                       std::to_string(hd));
    } else {
        if (!(m.alibi_bias_max >= 0.0f && m.alibi_bias_max <= 1024.0f))
            return bad("alibi_bias_max " + std::to_string(m.alibi_bias_max) + " out of range");
        if (!(m.clip_qkv >= 0.0f && std::isfinite(m.clip_qkv))) return bad("clip_qkv must be a finite value >= 0");
    }
    if (m.ftype < 0) return bad("negative ftype " + std::to_string(m.ftype));
    int qv = m.ftype / 1000, base = m.ftype % 1000;
    if (qv > 2 || base > 9) return bad("unknown ftype " + std::to_string(m.ftype));
    return true;
}

bool read_vocab(Reader &r, g4a_model &m) {
    if (m.header == Header::mpt_ggmm) {
        uint32_t count = 0;
        if (!r.get(count, "the vocabulary count")) return false;
        if (count != (uint32_t)m.n_vocab)
            return fail(r, "vocabulary count " + std::to_string(count) + " differs from n_vocab " +
                           std::to_string(m.n_vocab));
    }
    if ((int64_t)m.n_vocab * 4 > r.left())
        return fail(r, "the file is too short for " + std::to_string(m.n_vocab) + " vocabulary entries");
    m.tokens.resize((size_t)m.n_vocab);
    for (int32_t i = 0; i < m.n_vocab; ++i) {
        uint32_t len = 0;
        if (!r.get(len, "the vocabulary")) return false;
        bool special = false;
        if (m.header == Header::mpt_ggmm && (len & (1u << 31))) {
            special = true;
            len &= ~(1u << 31);
        }
        if (len > (uint32_t)MAX_TOKEN_BYTES)
            return fail(r, "vocabulary entry " + std::to_string(i) + " claims " + std::to_string(len) + " bytes");
        std::string &w = m.tokens[(size_t)i];
        w.resize(len);
        if (!r.read(len ? &w[0] : nullptr, len, "the vocabulary")) return false;
        if (len) {
            m.token_to_id[w] = i;   // a later duplicate wins, as in the reference loader
            m.max_token_len = std::max(m.max_token_len, (size_t)len);
            if (special) m.specials.push_back(w);
        }
    }
    auto find = [&](const char *s) -> int32_t {
        auto it = m.token_to_id.find(s);
        return it == m.token_to_id.end() ? -1 : it->second;
    };
    if (m.arch == Arch::gptj) {
        m.eos = m.n_vocab > 50256 ? 50256 : std::max(0, find("<|endoftext|>"));
    } else {
        m.eos = std::max(0, find("<|endoftext|>"));
        m.im_end = find("<|im_end|>");
    }
    return true;
}

// The tensors each architecture needs, by name.
std::unordered_map<std::string, Slot> expected_tensors(g4a_model &m) {
    std::unordered_map<std::string, Slot> s;
    const int64_t e = m.n_embd, v = m.n_vocab, f = 4 * (int64_t)m.n_embd;
    m.layers.assign((size_t)m.n_layer, Layer());
    auto mat = [&](const std::string &n, ggml_tensor **d, int64_t ne0, int64_t ne1) {
        s.emplace(n, Slot{d, 2, ne0, ne1, true});
    };
    auto vec = [&](const std::string &n, ggml_tensor **d, int64_t ne0) { s.emplace(n, Slot{d, 1, ne0, 1, false}); };
    mat("transformer.wte.weight", &m.wte, e, v);
    if (m.arch == Arch::gptj) {
        vec("transformer.ln_f.weight", &m.ln_f_g, e);
        vec("transformer.ln_f.bias", &m.ln_f_b, e);
        mat("lm_head.weight", &m.lm_head, e, v);
        vec("lm_head.bias", &m.lm_head_b, v);
        for (int i = 0; i < m.n_layer; ++i) {
            Layer &L = m.layers[(size_t)i];
            std::string p = "transformer.h." + std::to_string(i) + ".";
            vec(p + "ln_1.weight", &L.ln_1_g, e);
            vec(p + "ln_1.bias", &L.ln_1_b, e);
            mat(p + "attn.q_proj.weight", &L.q, e, e);
            mat(p + "attn.k_proj.weight", &L.k, e, e);
            mat(p + "attn.v_proj.weight", &L.v, e, e);
            mat(p + "attn.out_proj.weight", &L.out, e, e);
            mat(p + "mlp.fc_in.weight", &L.fc_in, e, f);
            vec(p + "mlp.fc_in.bias", &L.fc_in_b, f);
            mat(p + "mlp.fc_out.weight", &L.fc_out, f, e);
            vec(p + "mlp.fc_out.bias", &L.fc_out_b, e);
        }
    } else {
        vec("transformer.norm_f.weight", &m.norm_f, e);
        for (int i = 0; i < m.n_layer; ++i) {
            Layer &L = m.layers[(size_t)i];
            std::string p = "transformer.blocks." + std::to_string(i) + ".";
            vec(p + "norm_1.weight", &L.norm_1, e);
            vec(p + "norm_2.weight", &L.norm_2, e);
            mat(p + "attn.Wqkv.weight", &L.wqkv, e, 3 * e);
            mat(p + "attn.out_proj.weight", &L.out_proj, e, e);
            mat(p + "ffn.up_proj.weight", &L.up, e, f);
            mat(p + "ffn.down_proj.weight", &L.down, f, e);
        }
    }
    return s;
}

// Walk every tensor record, checking names, shapes, types and sizes against the model code.
bool scan_tensors(Reader &r, g4a_model &m, std::unordered_map<std::string, Slot> &slots,
                  std::vector<TensorRec> &recs) {
    while (r.left() > 0) {
        TensorRec t;
        int64_t at = r.pos();
        int32_t hdr[3];
        if (r.left() < 12)
            return fail(r, "file ends inside a tensor header at byte " + std::to_string(at) + " (truncated file?)");
        if (!r.read(hdr, sizeof hdr, "a tensor header")) return false;
        t.n_dims = hdr[0];
        int32_t name_len = hdr[1];
        t.type = hdr[2];
        if (t.n_dims < 1 || t.n_dims > 2)
            return fail(r, "tensor at byte " + std::to_string(at) + ": " + std::to_string(t.n_dims) +
                           " dimensions (1 or 2 expected)");
        if (name_len < 1 || name_len > MAX_NAME)
            return fail(r, "tensor at byte " + std::to_string(at) + ": name length " + std::to_string(name_len));
        int32_t ne[2] = {1, 1};
        if (!r.read(ne, sizeof(int32_t) * (size_t)t.n_dims, "a tensor header")) return false;
        t.name.resize((size_t)name_len);
        if (!r.read(&t.name[0], (size_t)name_len, "a tensor name")) return false;
        auto it = slots.find(t.name);
        if (it == slots.end())
            return fail(r, "unknown tensor '" + t.name + "' for " + (m.arch == Arch::gptj ? "GPT-J" : "MPT"));
        Slot &s = it->second;
        if (s.seen) return fail(r, "tensor '" + t.name + "' appears twice");
        s.seen = true;
        t.ne[0] = ne[0];
        t.ne[1] = ne[1];
        if (t.n_dims != s.n_dims || t.ne[0] != s.ne0 || t.ne[1] != s.ne1)
            return fail(r, "tensor '" + t.name + "' has shape [" + std::to_string(ne[0]) +
                           (t.n_dims > 1 ? ", " + std::to_string(ne[1]) : std::string()) + "], expected [" +
                           std::to_string(s.ne0) + (s.n_dims > 1 ? ", " + std::to_string(s.ne1) : std::string()) + "]");
        if (s.matrix ? !is_matrix_type(t.type) : t.type != GGML_TYPE_F32)
            return fail(r, "tensor '" + t.name + "' has " + type_label(t.type) + "; expected " +
                           (s.matrix ? "F32, F16 or a quantized type of this ggml" : "F32"));
        const int64_t blck = ggml_blck_size((ggml_type)t.type);
        const bool quant = t.type != GGML_TYPE_F32 && t.type != GGML_TYPE_F16;
        if (quant) {
            if (m.ftype / 1000 != G4A_LEGACY_QNT)
                return fail(r, "quantized tensors of ggml quant version " + std::to_string(m.ftype / 1000) +
                               " (header ftype " + std::to_string(m.ftype) + "); this backend reads version " +
                               std::to_string(G4A_LEGACY_QNT));
            if (t.ne[0] % 32 != 0)
                return fail(r, "tensor '" + t.name + "': quantized rows of " + std::to_string(t.ne[0]) +
                               " values (a multiple of 32 is needed)");
        }
        if (t.ne[0] % blck != 0)
            return fail(r, "tensor '" + t.name + "': rows are not a whole number of blocks");
        t.nbytes = t.ne[0] * t.ne[1] / blck * (int64_t)ggml_type_size((ggml_type)t.type);
        t.offset = r.pos();
        if (t.nbytes > r.left())
            return fail(r, "tensor '" + t.name + "' needs " + std::to_string(t.nbytes) + " bytes at byte " +
                           std::to_string(t.offset) + "; the file ends at " + std::to_string(r.size) +
                           " (truncated file?)");
        fseeko(r.f, (off_t)(t.offset + t.nbytes), SEEK_SET);
        recs.push_back(std::move(t));
    }
    for (auto &kv : slots)
        if (!kv.second.seen) return fail(r, "tensor '" + kv.first + "' is missing");
    return true;
}

bool load_weights(Reader &r, g4a_model &m, std::unordered_map<std::string, Slot> &slots,
                  const std::vector<TensorRec> &recs) {
    size_t total = 1 << 20;
    for (const TensorRec &t : recs) total += (size_t)t.nbytes + sizeof(ggml_tensor) + GGML_OBJECT_SIZE + 64;
    m.wbuf = malloc(total);
    if (!m.wbuf) return fail(r, "out of memory for " + std::to_string(total >> 20) + " MiB of weights");
    ggml_init_params p = {total, m.wbuf, false};
    m.wctx = ggml_init(p);
    if (!m.wctx) return fail(r, "no free ggml context (too many models open)");
    for (const TensorRec &t : recs) {
        ggml_tensor *x = t.n_dims == 1 ? ggml_new_tensor_1d(m.wctx, (ggml_type)t.type, t.ne[0])
                                       : ggml_new_tensor_2d(m.wctx, (ggml_type)t.type, t.ne[0], t.ne[1]);
        // ggml_nbytes() of the August 2023 ggml rounds up to GGML_MEM_ALIGN: compare the data itself
        const int64_t data_bytes = ggml_nelements(x) / ggml_blck_size((ggml_type)t.type) *
                                   (int64_t)ggml_type_size((ggml_type)t.type);
        if (data_bytes != t.nbytes) return fail(r, "tensor '" + t.name + "': size mismatch");
        if (fseeko(r.f, (off_t)t.offset, SEEK_SET) != 0 || !r.read(x->data, (size_t)t.nbytes, "tensor data"))
            return false;
        *slots[t.name].dst = x;
    }
    return true;
}

bool init_kv(Reader &r, g4a_model &m) {
    const int64_t n = (int64_t)m.n_layer * m.n_ctx * m.n_embd;
    const size_t bytes = (size_t)n * 2 * ggml_type_size(GGML_TYPE_F16) + 2 * (sizeof(ggml_tensor) + GGML_OBJECT_SIZE) + 4096;
    m.kvbuf = malloc(bytes);
    if (!m.kvbuf) return fail(r, "out of memory for a KV cache of " + std::to_string(bytes >> 20) + " MiB (n_ctx " +
                                 std::to_string(m.n_ctx) + ")");
    ggml_init_params p = {bytes, m.kvbuf, false};
    m.kvctx = ggml_init(p);
    if (!m.kvctx) return fail(r, "no free ggml context (too many models open)");
    m.mk = ggml_new_tensor_1d(m.kvctx, GGML_TYPE_F16, n);
    m.mv = ggml_new_tensor_1d(m.kvctx, GGML_TYPE_F16, n);
    memset(m.mk->data, 0, ggml_nbytes(m.mk));
    memset(m.mv->data, 0, ggml_nbytes(m.mv));
    return true;
}

// ---------------------------------------------------------------------------------------------
// tokenizer

bool is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
bool is_alpha(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_other(unsigned char c) { return !is_space(c) && !is_alpha(c) && !is_digit(c); }

// Length of the pre-tokenizer piece that starts at s[i] (alternatives tried in the regex's order).
size_t piece_len(const std::string &s, size_t i) {
    const size_t n = s.size();
    const unsigned char c = (unsigned char)s[i];
    if (c == '\'' && i + 1 < n) {
        static const char *contractions[] = {"s", "t", "re", "ve", "m", "ll", "d"};
        for (const char *k : contractions) {
            size_t kl = strlen(k);
            if (s.compare(i + 1, kl, k) == 0) return kl + 1;
        }
    }
    auto run = [&](size_t j, bool (*cls)(unsigned char)) {
        size_t k = j;
        while (k < n && cls((unsigned char)s[k])) ++k;
        return k - j;
    };
    bool (*classes[])(unsigned char) = {is_alpha, is_digit, is_other};
    for (auto cls : classes) {
        if (c == ' ' && i + 1 < n && cls((unsigned char)s[i + 1])) return 1 + run(i + 1, cls);
        if (cls(c)) return run(i, cls);
    }
    // whitespace: \s+(?!\S) then \s+
    size_t k = run(i, is_space);
    if (i + k == n) return k;
    if (k > 1) return k - 1;   // leave the last space to start the next word
    return k;
}

void tokenize_plain(const g4a_model &m, const std::string &text, std::vector<int32_t> &out) {
    size_t i = 0;
    while (i < text.size()) {
        size_t len = piece_len(text, i);
        if (len == 0) len = 1;
        const std::string word = text.substr(i, len);
        i += len;
        // longest vocabulary entries first
        size_t a = 0, n = word.size();
        while (a < n) {
            size_t b = std::min(n, a + m.max_token_len);
            bool found = false;
            for (; b > a; --b) {
                auto it = m.token_to_id.find(word.substr(a, b - a));
                if (it != m.token_to_id.end()) {
                    out.push_back(it->second);
                    a = b;
                    found = true;
                    break;
                }
            }
            if (!found) ++a;   // a byte without a vocabulary entry is dropped
        }
    }
}

void tokenize(const g4a_model &m, const std::string &text, std::vector<int32_t> &out) {
    if (m.specials.empty()) {
        tokenize_plain(m, text, out);
        return;
    }
    // special tokens are cut out first: the leftmost match, the first listed special at that place
    size_t start = 0;
    while (start < text.size()) {
        size_t best = std::string::npos;
        const std::string *which = nullptr;
        for (const std::string &sp : m.specials) {
            size_t at = text.find(sp, start);
            if (at != std::string::npos && (best == std::string::npos || at < best)) {
                best = at;
                which = &sp;
            }
        }
        if (!which) break;
        // among the specials matching at `best`, the first in vocabulary order wins
        for (const std::string &sp : m.specials) {
            if (text.compare(best, sp.size(), sp) == 0) { which = &sp; break; }
        }
        tokenize_plain(m, text.substr(start, best - start), out);
        out.push_back(m.token_to_id.at(*which));
        start = best + which->size();
    }
    if (start < text.size()) tokenize_plain(m, text.substr(start), out);
}

// ---------------------------------------------------------------------------------------------
// evaluation

size_t eval_bytes(const g4a_model &m, int64_t N, int64_t L) {
    const int64_t E = m.n_embd, F = 4 * (int64_t)m.n_embd, H = m.n_head, V = m.n_vocab;
    const int64_t per_layer = 16 * N * E + 8 * N * F + 6 * H * N * L + E * L;
    const int64_t head = 4 * N * E + 3 * N * V + N;
    const int64_t objects = ((int64_t)m.n_layer * 100 + 100) * (int64_t)(sizeof(ggml_tensor) + GGML_OBJECT_SIZE + 32);
    const int64_t work = 4 * std::max(N * F, H * N * L) + 64 * (int64_t)m.n_threads + 4096;
    const int64_t total = ((int64_t)m.n_layer * per_layer + head) * 4 + objects + work + (1 << 20);
    return (size_t)(total + total / 4);
}

ggml_tensor *layer_norm(ggml_context *c, ggml_tensor *x, ggml_tensor *g, ggml_tensor *b) {
    x = ggml_norm(c, x);
    x = ggml_mul(c, ggml_repeat(c, g, x), x);
    if (b) x = ggml_add(c, x, ggml_repeat(c, b, x));
    return x;
}

ggml_tensor *gptj_graph(g4a_model &m, ggml_context *c, ggml_cgraph &gf, ggml_tensor *embd, int N, int n_past) {
    const int E = m.n_embd, H = m.n_head, hd = E / H, n_ctx = m.n_ctx;
    const size_t es = ggml_element_size(m.mk);
    ggml_tensor *inpL = ggml_get_rows(c, m.wte, embd);
    for (int il = 0; il < m.n_layer; ++il) {
        const Layer &Ly = m.layers[(size_t)il];
        ggml_tensor *cur = layer_norm(c, inpL, Ly.ln_1_g, Ly.ln_1_b);
        ggml_tensor *inpSA = cur;

        ggml_tensor *Qcur = ggml_mul_mat(c, Ly.q, cur);
        ggml_tensor *Kcur = ggml_mul_mat(c, Ly.k, cur);
        ggml_tensor *Vcur = ggml_mul_mat(c, Ly.v, cur);
        {
            // keys and values of the new positions go to the cache, keys still unrotated
            ggml_tensor *k = ggml_view_1d(c, m.mk, (int64_t)N * E, es * E * ((size_t)il * n_ctx + n_past));
            ggml_tensor *v = ggml_view_1d(c, m.mv, (int64_t)N * E, es * E * ((size_t)il * n_ctx + n_past));
            ggml_build_forward_expand(&gf, ggml_cpy(c, Kcur, k));
            ggml_build_forward_expand(&gf, ggml_cpy(c, Vcur, v));
        }
        ggml_tensor *Q = ggml_permute(
            c, ROPE(c, ggml_cpy(c, Qcur, ggml_new_tensor_3d(c, GGML_TYPE_F32, hd, H, N)), n_past, m.n_rot, 0),
            0, 2, 1, 3);
        // rotate the new keys inside the cache (mode 1: only positions from n_past on)
        ggml_tensor *K = ggml_permute(
            c,
            ROPE(c,
                 ggml_reshape_3d(c, ggml_view_1d(c, m.mk, (int64_t)(n_past + N) * E, (size_t)il * n_ctx * es * E), hd, H,
                                 n_past + N),
                 n_past, m.n_rot, 1),
            0, 2, 1, 3);
        ggml_tensor *KQ = ggml_mul_mat(c, K, Q);
        ggml_tensor *KQ_scaled = SCALE(c, KQ, ggml_new_f32(c, 1.0f / sqrtf(float(E) / H)));
        ggml_tensor *KQ_masked = DIAG_MASK_INF(c, KQ_scaled, n_past);
        ggml_tensor *KQ_soft_max = SOFT_MAX(c, KQ_masked);
        ggml_tensor *V_trans = ggml_cpy(
            c,
            ggml_permute(c,
                         ggml_reshape_3d(c, ggml_view_1d(c, m.mv, (int64_t)(n_past + N) * E, (size_t)il * n_ctx * es * E),
                                         hd, H, n_past + N),
                         1, 2, 0, 3),
            ggml_new_tensor_3d(c, m.mv->type, n_past + N, hd, H));
        ggml_tensor *KQV = ggml_mul_mat(c, V_trans, KQ_soft_max);
        ggml_tensor *KQV_merged = ggml_permute(c, KQV, 0, 2, 1, 3);
        cur = ggml_cpy(c, KQV_merged, ggml_new_tensor_2d(c, GGML_TYPE_F32, E, N));
        cur = ggml_mul_mat(c, Ly.out, cur);
        ggml_tensor *inpFF = cur;

        // the MLP reads the same normalized input as the attention (parallel residual)
        cur = ggml_mul_mat(c, Ly.fc_in, inpSA);
        cur = ggml_add(c, ggml_repeat(c, Ly.fc_in_b, cur), cur);
        cur = ggml_gelu(c, cur);
        cur = ggml_mul_mat(c, Ly.fc_out, cur);
        cur = ggml_add(c, ggml_repeat(c, Ly.fc_out_b, cur), cur);
        cur = ggml_add(c, cur, inpFF);
        inpL = ggml_add(c, cur, inpL);
    }
    inpL = ggml_norm(c, inpL);
    inpL = ggml_add(c, ggml_mul(c, ggml_repeat(c, m.ln_f_g, inpL), inpL), ggml_repeat(c, m.ln_f_b, inpL));
    inpL = ggml_mul_mat(c, m.lm_head, inpL);
    inpL = ggml_add(c, ggml_repeat(c, m.lm_head_b, inpL), inpL);
    return inpL;
}

// clamp(x, -c, c) from the ops this ggml has: x - relu(x - c) + relu(-x - c)
ggml_tensor *clamp_sym(ggml_context *ctx, ggml_tensor *x, float clip) {
    ggml_tensor *cv = ggml_repeat(ctx, ggml_new_f32(ctx, clip), x);
    ggml_tensor *hi = ggml_relu(ctx, ggml_sub(ctx, x, cv));
    ggml_tensor *lo = ggml_relu(ctx, ggml_sub(ctx, ggml_neg(ctx, x), cv));
    return ggml_add(ctx, ggml_sub(ctx, x, hi), lo);
}

// ALiBi bias as a tensor, for a maximum bias other than the 8 built into the ggml op:
// head k (0-based) gets slope m_k, position i of the keys adds i * m_k.
ggml_tensor *alibi_explicit(ggml_context *c, ggml_tensor *kq, int n_head, float max_bias) {
    const int64_t ne0 = kq->ne[0], ne1 = kq->ne[1], ne2 = kq->ne[2];
    ggml_tensor *bias = ggml_new_tensor_3d(c, GGML_TYPE_F32, ne0, ne1, ne2);
    const int floor_pow2 = 1 << (int)floor(log2((double)n_head));
    const float m0 = powf(2.0f, -max_bias / floor_pow2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / floor_pow2);
    float *d = (float *)bias->data;
    for (int64_t k = 0; k < ne2; ++k) {
        float mk = k < floor_pow2 ? powf(m0, (float)(k + 1)) : powf(m1, (float)(2 * (k - floor_pow2) + 1));
        for (int64_t j = 0; j < ne1; ++j)
            for (int64_t i = 0; i < ne0; ++i) d[(k * ne1 + j) * ne0 + i] = (float)i * mk;
    }
    return ggml_add(c, kq, bias);
}

ggml_tensor *mpt_graph(g4a_model &m, ggml_context *c, ggml_cgraph &gf, ggml_tensor *embd, int N, int n_past) {
    const int E = m.n_embd, H = m.n_head, hd = E / H, n_ctx = m.n_ctx;
    const size_t es = ggml_element_size(m.mk);
    // GPT4All's files: the op's built-in bias of 8 and no clipping, whatever the header says
    const bool ggmm = m.header == Header::mpt_ggmm;
    const float max_bias = ggmm ? 8.0f : m.alibi_bias_max;
    const float clip = ggmm ? 0.0f : m.clip_qkv;
    ggml_tensor *inpL = ggml_get_rows(c, m.wte, embd);
    for (int il = 0; il < m.n_layer; ++il) {
        const Layer &Ly = m.layers[(size_t)il];
        ggml_tensor *inpSA = inpL;
        ggml_tensor *cur = layer_norm(c, inpSA, Ly.norm_1, nullptr);
        cur = ggml_mul_mat(c, Ly.wqkv, cur);
        if (clip > 0.0f) cur = clamp_sym(c, cur, clip);
        ggml_tensor *Qcur = ggml_cont(c, ggml_view_2d(c, cur, E, N, cur->nb[1], 0 * sizeof(float) * E));
        ggml_tensor *Kcur = ggml_cont(c, ggml_view_2d(c, cur, E, N, cur->nb[1], 1 * sizeof(float) * E));
        ggml_tensor *Vcur = ggml_cont(c, ggml_view_2d(c, cur, E, N, cur->nb[1], 2 * sizeof(float) * E));
        {
            // keys by position, values transposed (one row per channel, n_ctx wide)
            ggml_tensor *k = ggml_view_1d(c, m.mk, (int64_t)N * E, es * E * ((size_t)il * n_ctx + n_past));
            ggml_tensor *v = ggml_view_2d(c, m.mv, N, E, (size_t)n_ctx * es, (size_t)il * n_ctx * es * E + (size_t)n_past * es);
            ggml_build_forward_expand(&gf, ggml_cpy(c, Kcur, k));
            ggml_build_forward_expand(&gf, ggml_cpy(c, ggml_transpose(c, Vcur), v));
        }
        ggml_tensor *Q = ggml_permute(c, ggml_reshape_3d(c, Qcur, hd, H, N), 0, 2, 1, 3);
        ggml_tensor *K = ggml_permute(
            c, ggml_reshape_3d(c, ggml_view_1d(c, m.mk, (int64_t)(n_past + N) * E, (size_t)il * n_ctx * es * E), hd, H, n_past + N),
            0, 2, 1, 3);
        ggml_tensor *KQ = ggml_mul_mat(c, K, Q);
        ggml_tensor *KQ_scaled = SCALE(c, KQ, ggml_new_f32(c, 1.0f / sqrtf(float(E) / H)));
        ggml_tensor *KQ_biased = max_bias == 8.0f ? ALIBI(c, ggml_cont(c, KQ_scaled), n_past, H, 8.0f)
                                                  : alibi_explicit(c, ggml_cont(c, KQ_scaled), H, max_bias);
        ggml_tensor *KQ_masked = DIAG_MASK_INF(c, KQ_biased, n_past);
        ggml_tensor *KQ_soft_max = SOFT_MAX(c, KQ_masked);
        ggml_tensor *V = ggml_view_3d(c, m.mv, n_past + N, hd, H, (size_t)n_ctx * es, (size_t)n_ctx * es * hd,
                                      (size_t)il * n_ctx * es * E);
        ggml_tensor *KQV = ggml_mul_mat(c, V, KQ_soft_max);
        ggml_tensor *KQV_merged = ggml_permute(c, KQV, 0, 2, 1, 3);
        cur = ggml_cpy(c, KQV_merged, ggml_new_tensor_2d(c, GGML_TYPE_F32, E, N));
        cur = ggml_mul_mat(c, Ly.out_proj, cur);

        ggml_tensor *resSA = ggml_add(c, cur, inpSA);
        cur = layer_norm(c, resSA, Ly.norm_2, nullptr);
        cur = ggml_mul_mat(c, Ly.up, cur);
        cur = ggml_gelu(c, cur);
        cur = ggml_mul_mat(c, Ly.down, cur);
        inpL = ggml_add(c, cur, resSA);
    }
    ggml_tensor *out = layer_norm(c, inpL, m.norm_f, nullptr);
    return ggml_mul_mat(c, m.wte, out);   // tied embeddings
}

bool eval_chunk(g4a_model &m, const int32_t *tokens, int N) {
    const size_t need = eval_bytes(m, N, (int64_t)m.n_past + N);
    try {
        if (m.work.size() < need) {
            m.work.clear();
            m.work.shrink_to_fit();
            m.work.resize(need);
        }
    } catch (const std::bad_alloc &) {
        set_error("g4a_eval: out of memory for " + std::to_string(need >> 20) + " MiB of evaluation buffer");
        return false;
    }
    ggml_init_params p = {m.work.size(), m.work.data(), false};
    ggml_context *c = ggml_init(p);
    if (!c) { set_error("g4a_eval: no free ggml context (too many models open)"); return false; }
    ggml_cgraph gf = {};
    ggml_tensor *embd = ggml_new_tensor_1d(c, GGML_TYPE_I32, N);
    memcpy(embd->data, tokens, (size_t)N * sizeof(int32_t));
    ggml_tensor *out = m.arch == Arch::gptj ? gptj_graph(m, c, gf, embd, N, m.n_past) : mpt_graph(m, c, gf, embd, N, m.n_past);
    ggml_build_forward_expand(&gf, out);
#if G4A_LEGACY_QNT >= 2
    ggml_graph_compute_with_ctx(c, &gf, m.n_threads);
#else
    gf.n_threads = m.n_threads;
    ggml_graph_compute(c, &gf);
#endif
    m.logits.resize((size_t)m.n_vocab);
    memcpy(m.logits.data(), (float *)ggml_get_data(out) + (size_t)m.n_vocab * (N - 1), sizeof(float) * (size_t)m.n_vocab);
    ggml_free(c);
    m.n_past += N;
    m.has_logits = true;
    return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// this engine's part of the shared exports (g4a_exports.h)

static std::string engine_info() {
    return "GPT-J/MPT model code, ggml quant version " + std::to_string(G4A_LEGACY_QNT) +
           " | AVX = " + std::to_string(ggml_cpu_has_avx()) + " | AVX2 = " + std::to_string(ggml_cpu_has_avx2()) +
           " | FMA = " + std::to_string(ggml_cpu_has_fma()) + " | F16C = " + std::to_string(ggml_cpu_has_f16c());
}

static g4a_model *engine_load(const char *path, const g4a_load_params *p) {
    ggml_init_once();
    std::unique_ptr<g4a_model> m(new (std::nothrow) g4a_model());
    if (!m) { set_error("out of memory"); return nullptr; }
    m->path = path;
    Reader r;
    try {
        std::unordered_map<std::string, Slot> slots;
        std::vector<TensorRec> recs;
        bool ok = r.open(path) && read_hparams(r, *m) && check_hparams(r, *m) && read_vocab(r, *m);
        if (ok) {
            m->n_ctx = p->n_ctx > 0 ? p->n_ctx : m->n_ctx_train;
            m->n_threads = p->n_threads > 0 ? p->n_threads : default_threads();
            m->vocab_only = p->vocab_only != 0;
            if (m->n_ctx > (1 << 20)) ok = fail(r, "n_ctx " + std::to_string(m->n_ctx) + " is too large");
        }
        if (ok && !m->vocab_only) {
            slots = expected_tensors(*m);
            ok = scan_tensors(r, *m, slots, recs) && load_weights(r, *m, slots, recs) && init_kv(r, *m);
        }
        if (!ok) {
            set_error(std::string(path) + ": " + r.err);
            return nullptr;
        }
    } catch (const std::bad_alloc &) {
        set_error(std::string(path) + ": out of memory while loading");
        return nullptr;
    }
    return m.release();
}

static void engine_free(g4a_model *m) { delete m; }
static bool engine_can_eval(const g4a_model *m) { return m->wctx != nullptr; }
static int32_t engine_n_ctx_train(const g4a_model *m) { return m->n_ctx_train; }
static int32_t engine_n_embd(const g4a_model *m) { return m->n_embd; }
// neither family has a beginning-of-text token; both use their end token where one is asked for
static int32_t engine_bos(const g4a_model *m) { return m->eos; }
static int32_t engine_eos(const g4a_model *m) { return m->eos; }
static int32_t engine_n_gpu_layers(const g4a_model *) { return 0; }

static bool engine_is_eog(const g4a_model *m, int32_t tok) {
    if (tok == m->eos) return true;
    // GPT4All stops MPT at id 0 and at <|im_end|>
    return m->arch == Arch::mpt && (tok == 0 || (m->im_end >= 0 && tok == m->im_end));
}

// add_bos is ignored: GPT-J and MPT have no beginning-of-text token and GPT4All adds none; the special
// tokens of ggmm files are always cut out (as GPT4All does), whatever parse_special says
static bool engine_tokenize(g4a_model *m, const std::string &text, bool, bool, std::vector<int32_t> &out) {
    tokenize(*m, text, out);
    return true;
}

static int32_t engine_piece(g4a_model *m, int32_t tok, char *buf, int32_t cap) {
    const std::string &s = m->tokens[(size_t)tok];
    const int32_t n = (int32_t)s.size();
    if (n > cap) return -n;
    if (n) memcpy(buf, s.data(), (size_t)n);
    return n;
}

static bool engine_eval(g4a_model *m, const int32_t *tokens, int32_t n) {
    for (int32_t done = 0; done < n;) {
        const int32_t k = std::min<int32_t>(EVAL_CHUNK, n - done);
        if (!eval_chunk(*m, tokens + done, k)) return false;
        done += k;
    }
    return true;
}

static void engine_reset(g4a_model *) {}   // the next evaluation writes the cache from position 0
static bool engine_truncate(g4a_model *, int32_t) { return true; }   // rows from n_keep on are written again
// GPT-J keys are stored rotated and MPT's ALiBi bias follows the key index: neither cache moves
static bool engine_shift(g4a_model *, int32_t, int32_t) { return false; }
static const float *engine_logits(g4a_model *m) { return m->logits.data(); }

static const float *engine_embeddings(g4a_model *) {
    set_error("g4a_embeddings: the GPT-J and MPT model code of this backend produces no embeddings");
    return nullptr;
}

static int engine_quantize(const char *, const char *, int32_t, int32_t) {
    set_error("g4a_quantize: not supported by the GPT-J/MPT backend (quantize with the tools of the file's era)");
    return -1;
}

static bool engine_dequantize(int32_t type, const void *src, float *dst, int64_t n) {
    if (type < 0 || type >= (int32_t)GGML_TYPE_COUNT) {
        set_error("g4a_dequantize: type " + std::to_string(type) + " is unknown to this ggml");
        return false;
    }
    const ggml_type t = (ggml_type)type;
    // first: without F16C, ggml_fp16_to_fp32 reads the table that ggml_init() fills
    ggml_init_once();
    if (t == GGML_TYPE_F32) { memcpy(dst, src, (size_t)n * sizeof(float)); return true; }
    if (t == GGML_TYPE_F16) {
        const ggml_fp16_t *h = (const ggml_fp16_t *)src;
        for (int64_t i = 0; i < n; ++i) dst[i] = ggml_fp16_to_fp32(h[i]);
        return true;
    }
    const int64_t blck = ggml_blck_size(t);
    if (blck <= 0 || n % blck != 0 || n > INT32_MAX) {
        set_error("g4a_dequantize: " + std::to_string(n) + " is not a whole number of blocks of " + type_label(type));
        return false;
    }
#if G4A_LEGACY_QNT >= 2
    ggml_type_traits_t tr = ggml_internal_get_type_traits(t);
    if (!tr.to_float) { set_error("g4a_dequantize: no dequantizer for " + type_label(type)); return false; }
    tr.to_float(src, dst, (int)n);
#else
    quantize_fns_t fns = ggml_internal_get_quantize_fn((size_t)t);
    if (!fns.dequantize_row_q) { set_error("g4a_dequantize: no dequantizer for " + type_label(type)); return false; }
    fns.dequantize_row_q(src, dst, (int)n);
#endif
    return true;
}

#include "g4a_exports.h"
