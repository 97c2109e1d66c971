// g4a_legacy.cpp - g4a_shim.h for the GPT4All-era ggml files that llama.cpp never read, on a 2023 ggml:
// the part every architecture shares (see g4a_legacy.h).
//
//   magic "ggml"  GPT-J (7 hyperparameters, then a vocabulary count equal to n_vocab),
//                 StarCoder (6 hyperparameters, then a vocabulary count equal to n_vocab),
//                 MPT of the ggml examples (5 integers, 2 floats, ftype)        g4a_gptj.cpp, g4a_starcoder.cpp,
//   magic "ggmm"  GPT4All's MPT                                                 g4a_mpt.cpp
//   magic "ggjt"  Falcon (the LLaMA files with this magic belong to llama.cpp)  g4a_falcon.cpp
//   magic "repl"  Replit                                                        g4a_replit.cpp
//   magic "bert"  BERT sentence embeddings (Embed4All)                          g4a_bert.cpp
//   record i32 n_dims, i32 name length, i32 ggml type, i32 ne[n_dims], name, (Falcon: zero padding to a
//          32-byte file offset), data; records follow each other until the end of the file.
//
// Every number read from the file is checked before use: a bad file fails with g4a_last_error() text
// instead of a ggml assertion.  Falcon, StarCoder, Replit and BERT are compiled into the builds on the
// ggml of QNT version 2 (the ggml GPT4All's own libraries for them linked); the QNT v0 build reads
// GPT-J and MPT.

#include "g4a_legacy.h"

#include <mutex>
#include <new>
#include <numeric>
#include <thread>

using namespace g4a_legacy;

namespace {

constexpr int32_t EVAL_CHUNK = 32;   // tokens per graph (bounds the scratch memory of one evaluation)

void ggml_init_once() {
    // the first ggml_init builds ggml's fp16 tables; do it once under a lock of our own
    static std::once_flag once;
    std::call_once(once, [] {
        ggml_init_params p = {1024, nullptr, false};
        ggml_context *c = ggml_init(p);
        if (c) ggml_free(c);
    });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// reading

bool Reader::open(const char *p) {
    path = p;
    f = fopen(p, "rb");
    if (!f) { err = path + ": cannot open: " + strerror(errno); return false; }
    if (fseeko(f, 0, SEEK_END) != 0) { err = path + ": cannot seek"; return false; }
    size = (int64_t)ftello(f);
    fseeko(f, 0, SEEK_SET);
    return true;
}

bool Reader::read(void *dst, size_t n, const char *what) {
    if ((int64_t)n > left()) {
        err = "file ends inside " + std::string(what) + " at byte " + std::to_string(pos()) + " (truncated file?)";
        return false;
    }
    if (n && fread(dst, 1, n, f) != n) { err = "read error in " + std::string(what); return false; }
    return true;
}

namespace g4a_legacy {

bool check_common_hparams(Reader &r, const g4a_model &m, const char *what) {
    auto bad = [&](const std::string &s) { return fail(r, std::string(what) + " header: " + s); };
    if (m.n_vocab <= 0 || m.n_vocab > (1 << 22)) return bad("n_vocab " + std::to_string(m.n_vocab) + " out of range");
    if (m.n_embd <= 0 || m.n_embd > (1 << 16)) return bad("n_embd " + std::to_string(m.n_embd) + " out of range");
    if (m.n_head <= 0 || m.n_head > m.n_embd || m.n_embd % m.n_head != 0)
        return bad("n_head " + std::to_string(m.n_head) + " does not divide n_embd " + std::to_string(m.n_embd));
    if (m.n_layer <= 0 || m.n_layer > 1024) return bad("n_layer " + std::to_string(m.n_layer) + " out of range");
    if (m.n_ctx_train <= 0 || m.n_ctx_train > (1 << 20))
        return bad("n_ctx " + std::to_string(m.n_ctx_train) + " out of range");
    return true;
}

bool check_ftype(Reader &r, const g4a_model &m, const char *what, int max_base) {
    auto bad = [&](const std::string &s) { return fail(r, std::string(what) + " header: " + s); };
    if (m.ftype < 0) return bad("negative ftype " + std::to_string(m.ftype));
    int qv = m.ftype / 1000, base = m.ftype % 1000;
    if (qv > 2 || base > max_base) return bad("unknown ftype " + std::to_string(m.ftype));
    return true;
}

bool read_plain_vocab(Reader &r, g4a_model &m, bool skip_score) {
    const int64_t per_entry = skip_score ? 8 : 4;
    if ((int64_t)m.n_vocab * per_entry > r.left())
        return fail(r, "the file is too short for " + std::to_string(m.n_vocab) + " vocabulary entries");
    m.tokens.resize((size_t)m.n_vocab);
    for (int32_t i = 0; i < m.n_vocab; ++i) {
        uint32_t len = 0;
        if (!r.get(len, "the vocabulary")) return false;
        if (len > (uint32_t)MAX_TOKEN_BYTES)
            return fail(r, "vocabulary entry " + std::to_string(i) + " claims " + std::to_string(len) + " bytes");
        std::string &w = m.tokens[(size_t)i];
        w.resize(len);
        if (!r.read(len ? &w[0] : nullptr, len, "the vocabulary")) return false;
        uint32_t score = 0;
        if (skip_score && !r.get(score, "the vocabulary")) return false;
        if (len) {
            m.token_to_id[w] = i;   // a later duplicate wins, as in the reference loader
            m.max_token_len = std::max(m.max_token_len, (size_t)len);
        }
    }
    return true;
}

int32_t find_token(const g4a_model &m, const char *s) {
    auto it = m.token_to_id.find(s);
    return it == m.token_to_id.end() ? -1 : it->second;
}

ggml_tensor *layer_norm(ggml_context *c, ggml_tensor *x, ggml_tensor *g, ggml_tensor *b) {
    x = ggml_norm(c, x);
    x = ggml_mul(c, ggml_repeat(c, g, x), x);
    if (b) x = ggml_add(c, x, ggml_repeat(c, b, x));
    return x;
}

ggml_tensor *attend_cached_values(ggml_context *c, const g4a_model &m, int il, ggml_tensor *kq_soft_max, int n_past,
                                  int N) {
    const int64_t E = m.n_embd, H = m.n_head, hd = E / H;
    ggml_tensor *V_trans = ggml_cpy(
        c,
        ggml_permute(c,
                     ggml_reshape_3d(c, ggml_view_1d(c, m.mv, (int64_t)(n_past + N) * E, kv_offset(m, m.mv, il, 0, E)),
                                     hd, H, n_past + N),
                     1, 2, 0, 3),
        ggml_new_tensor_3d(c, m.mv->type, n_past + N, hd, H));
    ggml_tensor *KQV = ggml_mul_mat(c, V_trans, kq_soft_max);
    ggml_tensor *KQV_merged = ggml_permute(c, KQV, 0, 2, 1, 3);
    return ggml_cpy(c, KQV_merged, ggml_new_tensor_2d(c, GGML_TYPE_F32, E, N));
}

// ---------------------------------------------------------------------------------------------
// GPT4All's gpt_tokenize, written out by hand: the text is split like the regex
//   's|'t|'re|'ve|'m|'ll|'d| ?[[:alpha:]]+| ?[[:digit:]]+| ?[^\s[:alpha:][:digit:]]+|\s+(?!\S)|\s+
// (ASCII classes, as std::regex in the "C" locale) and each piece is covered greedily by the longest
// vocabulary entries, each followed by one single-byte token (a quirk of GPT4All's loop that shows
// wherever an entry is longer than one byte); bytes without an entry are dropped.  Special tokens (GPT4All's "ggmm" MPT files
// mark them) are cut out of the text first, wherever they occur.  This is not the BPE merge algorithm
// of the original tokenizers, but it is what GPT4All fed these models.

namespace {

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
        // the longest vocabulary entry, then the next byte on its own (GPT4All's loop does both in one
        // step: after a match it also takes the following byte as a one-byte token, or drops it), again
        size_t a = 0, n = word.size();
        while (a < n) {
            size_t b = std::min(n, a + m.max_token_len);
            for (; b > a; --b) {
                auto it = m.token_to_id.find(word.substr(a, b - a));
                if (it != m.token_to_id.end()) {
                    out.push_back(it->second);
                    a = b;
                    break;
                }
            }
            if (a == n) break;
            auto it = m.token_to_id.find(word.substr(a, 1));
            if (it != m.token_to_id.end()) out.push_back(it->second);   // else the byte is dropped
            ++a;
        }
    }
}

}  // namespace

void gpt_tokenize(const g4a_model &m, const std::string &text, std::vector<int32_t> &out) {
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

}  // namespace g4a_legacy

namespace {

// ---------------------------------------------------------------------------------------------
// which architecture: the magic, and for "ggml" where the repeated vocabulary count sits

bool identify(Reader &r, g4a_model &m) {
    uint32_t magic = 0;
    if (!r.get(magic, "the magic")) return false;
    char hex[64];
    snprintf(hex, sizeof hex, "0x%08x", magic);
    const std::string not_here = std::string(" files are read by ggml-gpt4all-2023-08 (this build's ggml, QNT v") +
                                 std::to_string(G4A_LEGACY_QNT) + ", reads GPT-J and MPT only)";
    switch (magic) {
        case MAGIC_GGMM:
            m.code = &MPT;
            m.header = Header::mpt_ggmm;
            return true;
        case MAGIC_GGJT:
#if G4A_LEGACY_QNT >= 2
            m.code = &FALCON;
            m.header = Header::falcon;
            return true;
#else
            return fail(r, "Falcon" + not_here + " (LLaMA ggjt files belong to a llama.cpp backend)");
#endif
        case MAGIC_REPL:
#if G4A_LEGACY_QNT >= 2
            m.code = &REPLIT;
            m.header = Header::replit;
            return true;
#else
            return fail(r, "Replit" + not_here);
#endif
        case MAGIC_BERT:
#if G4A_LEGACY_QNT >= 2
            m.code = &BERT;
            m.header = Header::bert;
            return true;
#else
            return fail(r, "BERT" + not_here);
#endif
        case MAGIC_GGML:
            break;
        default:
            return fail(r, std::string("not a GPT4All-era ggml file (magic ") + hex +
                           "; expected 'ggml', 'ggmm', 'ggjt' (Falcon), 'repl' or 'bert')");
    }
    // GPT-J: 7 x i32 then a vocab count equal to n_vocab; StarCoder: 6 x i32 then the count;
    // ggml-examples MPT: 5 x i32, 2 x f32, i32
    int32_t h[8];
    if (!r.read(h, sizeof h, "the hyperparameters")) return false;
    if (!r.seek(4)) return fail(r, "cannot seek");
    if (h[0] > 0 && h[6] == h[0] && h[7] != h[0]) {
#if G4A_LEGACY_QNT >= 2
        m.code = &STARCODER;
        m.header = Header::starcoder;
        return true;
#else
        return fail(r, "StarCoder" + not_here);
#endif
    }
    if (h[7] == h[0] && h[0] > 0) {
        m.code = &GPTJ;
        m.header = Header::gptj;
        return true;
    }
    float fp[2];
    memcpy(fp, &h[5], sizeof fp);
    if (h[4] > 0 && std::isfinite(fp[0]) && std::isfinite(fp[1])) {
        m.code = &MPT;
        m.header = Header::mpt_ggml;
        return true;
    }
    return fail(r, "ggml file that is neither GPT-J (vocab count after 7 hyperparameters), StarCoder (after 6) "
                   "nor MPT (two finite floats after 5 hyperparameters); LLaMA ggml files belong to a llama.cpp "
                   "backend");
}

// k_quants: the K-quant types of the QNT v2 ggml (Falcon and StarCoder files of GPT4All's time had them)
bool is_matrix_type(int32_t t, bool k_quants) {
#if G4A_LEGACY_QNT >= 2
    if (k_quants && t >= GGML_TYPE_Q2_K && t <= GGML_TYPE_Q6_K) return true;
#else
    (void)k_quants;
#endif
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

// Walk every tensor record, checking names, shapes, types and sizes against the model code.
bool scan_tensors(Reader &r, g4a_model &m, TensorTable &slots, std::vector<TensorRec> &recs) {
    const int64_t align = m.code->tensor_align;
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
        if (it == slots.end()) return fail(r, "unknown tensor '" + t.name + "' for " + m.code->name);
        Slot &s = it->second;
        if (s.seen) return fail(r, "tensor '" + t.name + "' appears twice");
        s.seen = true;
        t.ne[0] = ne[0];
        t.ne[1] = ne[1];
        if (t.n_dims != s.n_dims || t.ne[0] != s.ne0 || t.ne[1] != s.ne1)
            return fail(r, "tensor '" + t.name + "' has shape [" + std::to_string(ne[0]) +
                           (t.n_dims > 1 ? ", " + std::to_string(ne[1]) : std::string()) + "], expected [" +
                           std::to_string(s.ne0) + (s.n_dims > 1 ? ", " + std::to_string(s.ne1) : std::string()) + "]");
        const bool k_quants = m.header == Header::falcon || m.header == Header::starcoder;
        if (s.matrix ? !is_matrix_type(t.type, k_quants) : t.type != GGML_TYPE_F32)
            return fail(r, "tensor '" + t.name + "' has " + type_label(t.type) + "; expected " +
                           (s.matrix ? "F32, F16 or a quantized type of this ggml" : "F32"));
        const int64_t blck = ggml_blck_size((ggml_type)t.type);
        const bool quant = t.type != GGML_TYPE_F32 && t.type != GGML_TYPE_F16;
        if (quant) {
            // GPT-J and MPT files say their quant layout in the ftype (both builds read them); the others
            // were only ever read on the QNT v2 ggml, which GPT4All did whatever their ftype said
            const bool labelled = m.header == Header::gptj || m.header == Header::mpt_ggmm ||
                                  m.header == Header::mpt_ggml;
            if (labelled && m.ftype / 1000 != G4A_LEGACY_QNT)
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
        if (align > 1) {
            const int64_t pad = (align - r.pos() % align) % align;
            if (pad > r.left())
                return fail(r, "tensor '" + t.name + "': the file ends inside the padding before its data");
            r.seek(r.pos() + pad);
        }
        t.offset = r.pos();
        if (t.nbytes > r.left())
            return fail(r, "tensor '" + t.name + "' needs " + std::to_string(t.nbytes) + " bytes at byte " +
                           std::to_string(t.offset) + "; the file ends at " + std::to_string(r.size) +
                           " (truncated file?)");
        r.seek(t.offset + t.nbytes);
        recs.push_back(std::move(t));
    }
    for (auto &kv : slots)
        if (!kv.second.seen && !kv.second.optional) return fail(r, "tensor '" + kv.first + "' is missing");
    return true;
}

bool load_weights(Reader &r, g4a_model &m, TensorTable &slots, const std::vector<TensorRec> &recs) {
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
        if (!r.seek(t.offset) || !r.read(x->data, (size_t)t.nbytes, "tensor data")) return false;
        *slots[t.name].dst = x;
    }
    return true;
}

bool init_kv(Reader &r, g4a_model &m) {
    if (m.code->kv_type == GGML_TYPE_COUNT) return true;   // an encoder keeps no cache
    const int64_t n = (int64_t)m.n_layer * m.n_ctx * m.code->kv_width(m);
    const ggml_type t = m.code->kv_type;
    const size_t bytes = (size_t)n * 2 * ggml_type_size(t) + 2 * (sizeof(ggml_tensor) + GGML_OBJECT_SIZE) + 4096;
    m.kvbuf = malloc(bytes);
    if (!m.kvbuf) return fail(r, "out of memory for a KV cache of " + std::to_string(bytes >> 20) + " MiB (n_ctx " +
                                 std::to_string(m.n_ctx) + ")");
    ggml_init_params p = {bytes, m.kvbuf, false};
    m.kvctx = ggml_init(p);
    if (!m.kvctx) return fail(r, "no free ggml context (too many models open)");
    m.mk = ggml_new_tensor_1d(m.kvctx, t, n);
    m.mv = ggml_new_tensor_1d(m.kvctx, t, n);
    memset(m.mk->data, 0, ggml_nbytes(m.mk));
    memset(m.mv->data, 0, ggml_nbytes(m.mv));
    return true;
}

// ---------------------------------------------------------------------------------------------
// evaluation

// Bytes of one evaluation's context: every intermediate tensor of N new tokens over L positions.
size_t eval_bytes(const g4a_model &m, int64_t N, int64_t L) {
    const int64_t E = m.n_embd, F = m.n_ff, H = m.n_head, V = m.n_vocab;
    const int64_t per_layer = 16 * N * E + 8 * N * F + 6 * H * N * L + E * L;
    const int64_t head = 4 * N * E + 3 * N * V + N;
    const int64_t objects = ((int64_t)m.n_layer * 100 + 100) * (int64_t)(sizeof(ggml_tensor) + GGML_OBJECT_SIZE + 32);
    const int64_t work = 4 * std::max(N * F, H * N * L) + 64 * (int64_t)m.n_threads + 4096;
    const int64_t total = ((int64_t)m.n_layer * per_layer + head) * 4 + objects + work + (1 << 20);
    return (size_t)(total + total / 4);
}

// Runs the architecture's graph on N tokens at n_past; `out` receives the result tensor's first
// `n_out` floats of its last column.
bool run_graph(g4a_model &m, const int32_t *tokens, int N, int n_past, float *out, int64_t n_out) {
    const size_t need = eval_bytes(m, N, (int64_t)n_past + N);
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
    ggml_tensor *res = m.code->graph(m, c, gf, embd, N, n_past);
    ggml_build_forward_expand(&gf, res);
#if G4A_LEGACY_QNT >= 2
    ggml_graph_compute_with_ctx(c, &gf, m.n_threads);
#else
    gf.n_threads = m.n_threads;
    ggml_graph_compute(c, &gf);
#endif
    const int64_t cols = ggml_nelements(res) / res->ne[0];
    memcpy(out, (float *)ggml_get_data(res) + (size_t)res->ne[0] * (size_t)(cols - 1), sizeof(float) * (size_t)n_out);
    ggml_free(c);
    return true;
}

bool eval_chunk(g4a_model &m, const int32_t *tokens, int N) {
    m.logits.resize((size_t)m.n_vocab);
    if (!run_graph(m, tokens, N, m.n_past, m.logits.data(), m.n_vocab)) return false;
    m.n_past += N;
    m.has_logits = true;
    return true;
}

// GPT4All's Bert::embedding: chunks of n_max_tokens that overlap by 32 tokens, [CLS] put back in front
// of every chunk after the first, the mean of the chunks' pooled vectors, normalised to length 1.
bool encode(g4a_model &m) {
    constexpr int32_t overlap = 32, cls = 101;
    const size_t ctx = (size_t)m.n_ctx_train;
    std::vector<double> sum((size_t)m.n_embd, 0.0);
    std::vector<float> one((size_t)m.n_embd);
    std::vector<int32_t> chunk;
    int n_chunks = 0;
    size_t start = 0;
    bool first = true;
    const std::vector<int32_t> &toks = m.seq;
    if (toks.empty()) { set_error("g4a_embeddings: no tokens were evaluated"); return false; }
    if (toks.size() > ctx && ctx <= (size_t)overlap) {
        set_error("g4a_embeddings: " + std::to_string(toks.size()) + " tokens do not fit n_max_tokens " +
                  std::to_string(ctx) + ", and chunks that overlap by " + std::to_string(overlap) +
                  " tokens would not advance");
        return false;
    }
    while (start < toks.size()) {
        chunk.clear();
        if (!first) chunk.push_back(cls);
        const size_t l = first ? ctx : ctx - 1;
        if (toks.size() - start > l) {
            chunk.insert(chunk.end(), toks.begin() + (ptrdiff_t)start, toks.begin() + (ptrdiff_t)(start + l));
            start = start + ctx - overlap;
        } else {
            chunk.insert(chunk.end(), toks.begin() + (ptrdiff_t)start, toks.end());
            start = toks.size();
        }
        if (!run_graph(m, chunk.data(), (int)chunk.size(), 0, one.data(), m.n_embd)) return false;
        for (size_t i = 0; i < sum.size(); ++i) sum[i] = (double)((float)sum[i] + one[i]);
        ++n_chunks;
        first = false;
    }
    for (double &v : sum) v = (double)((float)v / (float)n_chunks);
    const double mag = std::sqrt(std::inner_product(sum.begin(), sum.end(), sum.begin(), 0.0));
    m.embedding.resize(sum.size());
    for (size_t i = 0; i < sum.size(); ++i) m.embedding[i] = (float)(sum[i] / mag);
    return true;
}

bool is_encoder(const g4a_model *m) { return m->code->kv_type == GGML_TYPE_COUNT; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// this engine's part of the shared exports (g4a_exports.h)

static std::string engine_info() {
    return std::string("GPT4All 2023 model code (GPT-J, MPT") + (G4A_LEGACY_QNT >= 2 ? ", StarCoder, Falcon, Replit, BERT" : "") +
           "), ggml quant version " + std::to_string(G4A_LEGACY_QNT) + " | AVX = " + std::to_string(ggml_cpu_has_avx()) +
           " | AVX2 = " + std::to_string(ggml_cpu_has_avx2()) + " | FMA = " + std::to_string(ggml_cpu_has_fma()) +
           " | F16C = " + std::to_string(ggml_cpu_has_f16c());
}

static g4a_model *engine_load(const char *path, const g4a_load_params *p) {
    ggml_init_once();
    std::unique_ptr<g4a_model> m(new (std::nothrow) g4a_model());
    if (!m) { set_error("out of memory"); return nullptr; }
    m->path = path;
    Reader r;
    try {
        TensorTable slots;
        std::vector<TensorRec> recs;
        bool ok = r.open(path) && identify(r, *m) && r.seek(4) && m->code->read_header(r, *m) &&
                  m->code->read_vocab(r, *m);
        if (ok) {
            if (is_encoder(m.get())) {
                // an encoder's "context" is the text of one embedding, evaluated in chunks of n_ctx_train
                m->n_ctx = std::max(p->n_ctx, 1 << 16);
            } else {
                m->n_ctx = p->n_ctx > 0 ? p->n_ctx : m->n_ctx_train;
                // a table of learned positions has n_ctx_train rows
                if (m->code->learned_positions) m->n_ctx = std::min(m->n_ctx, m->n_ctx_train);
            }
            m->n_threads = m->n_threads_loaded = p->n_threads > 0 ? p->n_threads : default_threads();
            m->vocab_only = p->vocab_only != 0;
            if (m->n_ctx > (1 << 20)) ok = fail(r, "n_ctx " + std::to_string(m->n_ctx) + " is too large");
        }
        if (ok && !m->vocab_only) {
            m->layers.assign((size_t)m->n_layer, Layer());
            m->code->tensors(*m, slots);
            ok = scan_tensors(r, *m, slots, recs) && load_weights(r, *m, slots, recs) && init_kv(r, *m);
            if (ok && !m->lm_head) m->lm_head = m->wte;   // tied (StarCoder without model/lm_head)
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
// none of these families has a beginning-of-text token (BERT: its [CLS]); the end token where one is asked for
static int32_t engine_bos(const g4a_model *m) { return m->header == Header::bert ? 101 : m->eos; }
static int32_t engine_eos(const g4a_model *m) { return m->eos; }
static int32_t engine_n_gpu_layers(const g4a_model *) { return 0; }

static bool engine_is_eog(const g4a_model *m, int32_t tok) { return m->code->is_eog(*m, tok); }

// add_bos and parse_special are ignored: each architecture tokenizes as GPT4All did (no beginning
// token but BERT's [CLS]; the special tokens of "ggmm" files always cut out)
static bool engine_tokenize(g4a_model *m, const std::string &text, bool, bool, std::vector<int32_t> &out) {
    m->code->tokenize(*m, text, out);
    return true;
}

static int32_t engine_piece(g4a_model *m, int32_t tok, char *buf, int32_t cap) {
    std::string s = m->tokens[(size_t)tok];
    if (m->header == Header::replit) {
        // SentencePiece's word marker U+2581 reads as a space
        static const std::string ws = "\xe2\x96\x81";
        for (size_t at = s.find(ws); at != std::string::npos; at = s.find(ws, at + 1)) s.replace(at, ws.size(), " ");
    }
    const int32_t n = (int32_t)s.size();
    if (n > cap) return -n;
    if (n) memcpy(buf, s.data(), (size_t)n);
    return n;
}

static bool engine_eval(g4a_model *m, const int32_t *tokens, int32_t n) {
    if (is_encoder(m)) {
        // the text grows; its embedding is computed when asked for
        m->seq.resize((size_t)m->n_past);
        m->seq.insert(m->seq.end(), tokens, tokens + n);
        m->embedding.clear();
        m->n_past += n;
        return true;
    }
    for (int32_t done = 0; done < n;) {
        const int32_t k = std::min<int32_t>(EVAL_CHUNK, n - done);
        if (!eval_chunk(*m, tokens + done, k)) return false;
        done += k;
    }
    return true;
}

static void engine_set_threads(g4a_model *) {}   // every graph takes m->n_threads
static void engine_reset(g4a_model *m) { m->embedding.clear(); }   // decoders write the cache from position 0 again
static bool engine_truncate(g4a_model *m, int32_t) {   // rows from n_keep on are written again
    m->embedding.clear();
    return true;
}
// GPT-J/Falcon keys are stored rotated, ALiBi and learned positions follow the key index: no cache moves
static bool engine_shift(g4a_model *, int32_t, int32_t) { return false; }

static const float *engine_logits(g4a_model *m) {
    if (is_encoder(m)) {
        set_error("g4a_logits: " + std::string(m->code->name) +
                  " is a sentence-embedding model: it has no next-token logits (use g4a_embeddings)");
        return nullptr;
    }
    return m->logits.data();
}

static const float *engine_embeddings(g4a_model *m) {
    if (!is_encoder(m)) {
        set_error("g4a_embeddings: the " + std::string(m->code->name) +
                  " model code of this backend produces no embeddings (BERT files do)");
        return nullptr;
    }
    if (m->embedding.empty() && !encode(*m)) return nullptr;
    return m->embedding.data();
}

static int engine_quantize(const char *, const char *, int32_t, int32_t) {
    set_error("g4a_quantize: not supported by the GPT4All 2023 backend (quantize with the tools of the file's era)");
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
