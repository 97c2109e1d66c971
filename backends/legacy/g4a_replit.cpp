// g4a_replit.cpp - Replit code models (GPT4All's ggml-replit-code-v1-3b.bin, from its converter).
//
//   magic "repl", i32 n_vocab n_ctx n_embd n_head n_layer ftype, n_vocab x (u32 length, SentencePiece
//   piece with "▁" for spaces, f32 score), tensor records transformer.wte.weight, transformer.ln_f.weight,
//   transformer.blocks.N.{ln_1,ln_2,attn.Wqkv,attn.out_proj,mlp.mlp_up,mlp.mlp_down}.weight.
//
// The graph follows GPT4All 1.0.x's replit.cpp (MPT's math: weight-only LayerNorms, fused QKV, ALiBi
// with the op's maximum bias 8, no biases, the embedding table as output head) with an F16 KV cache.
// Tokenizer: GPT4All's: every " " becomes "▁", then the whole text is one word split by dynamic
// programming into the pieces whose summed negated scores are least (no full split: token 0).
// End tokens: 0 and <|endoftext|>.

#include "g4a_legacy.h"

#if G4A_LEGACY_QNT >= 2

#include <limits>

namespace g4a_legacy {
namespace {

const std::string WORD_MARK = "\xe2\x96\x81";   // U+2581

bool read_header(Reader &r, g4a_model &m) {
    int32_t h[6];
    if (!r.read(h, sizeof h, "the hyperparameters")) return false;
    m.n_vocab = h[0];
    m.n_ctx_train = h[1];
    m.n_embd = h[2];
    m.n_head = h[3];
    m.n_layer = h[4];
    m.ftype = h[5];
    m.n_ff = 4 * m.n_embd;
    return check_common_hparams(r, m, "Replit") && check_ftype(r, m, "Replit", 3);
}

bool read_vocab(Reader &r, g4a_model &m) {
    if ((int64_t)m.n_vocab * 8 > r.left())
        return fail(r, "the file is too short for " + std::to_string(m.n_vocab) + " vocabulary entries");
    m.tokens.resize((size_t)m.n_vocab);
    for (int32_t i = 0; i < m.n_vocab; ++i) {
        uint32_t len = 0;
        float score = 0.0f;
        if (!r.get(len, "the vocabulary")) return false;
        if (len > (uint32_t)MAX_TOKEN_BYTES)
            return fail(r, "vocabulary entry " + std::to_string(i) + " claims " + std::to_string(len) + " bytes");
        std::string &w = m.tokens[(size_t)i];
        w.resize(len);
        if (!r.read(len ? &w[0] : nullptr, len, "the vocabulary") || !r.get(score, "the vocabulary")) return false;
        m.pieces[w] = std::make_pair(i, -score);   // later duplicates win, as in the reference loader
        m.token_to_id[w] = i;
        m.max_token_len = std::max(m.max_token_len, (size_t)len);
    }
    m.eos = std::max(0, find_token(m, "<|endoftext|>"));
    return true;
}

void tensors(g4a_model &m, TensorTable &s) {
    const int64_t e = m.n_embd, v = m.n_vocab, f = m.n_ff;
    add_mat(s, "transformer.wte.weight", &m.wte, e, v);
    add_vec(s, "transformer.ln_f.weight", &m.ln_f_g, e);
    for (int i = 0; i < m.n_layer; ++i) {
        Layer &L = m.layers[(size_t)i];
        const std::string p = "transformer.blocks." + std::to_string(i) + ".";
        add_vec(s, p + "ln_1.weight", &L.ln_1_g, e);
        add_vec(s, p + "ln_2.weight", &L.ln_2_g, e);
        add_mat(s, p + "attn.Wqkv.weight", &L.qkv, e, 3 * e);
        add_mat(s, p + "attn.out_proj.weight", &L.out, e, e);
        add_mat(s, p + "mlp.mlp_up.weight", &L.up, e, f);
        add_mat(s, p + "mlp.mlp_down.weight", &L.down, f, e);
    }
}

int64_t kv_width(const g4a_model &m) { return m.n_embd; }

ggml_tensor *graph(g4a_model &m, ggml_context *c, ggml_cgraph &gf, ggml_tensor *embd, int N, int n_past) {
    const int E = m.n_embd, H = m.n_head, hd = E / H;
    ggml_tensor *inpL = ggml_get_rows(c, m.wte, embd);
    for (int il = 0; il < m.n_layer; ++il) {
        const Layer &Ly = m.layers[(size_t)il];
        ggml_tensor *cur = layer_norm(c, inpL, Ly.ln_1_g, nullptr);
        cur = ggml_mul_mat(c, Ly.qkv, cur);
        ggml_tensor *Qcur = ggml_view_2d(c, cur, E, N, cur->nb[1], 0 * sizeof(float) * E);
        ggml_tensor *Kcur = ggml_view_2d(c, cur, E, N, cur->nb[1], 1 * sizeof(float) * E);
        ggml_tensor *Vcur = ggml_view_2d(c, cur, E, N, cur->nb[1], 2 * sizeof(float) * E);
        ggml_build_forward_expand(&gf, ggml_cpy(c, Kcur, ggml_view_1d(c, m.mk, (int64_t)N * E, kv_offset(m, m.mk, il, n_past, E))));
        ggml_build_forward_expand(&gf, ggml_cpy(c, Vcur, ggml_view_1d(c, m.mv, (int64_t)N * E, kv_offset(m, m.mv, il, n_past, E))));

        ggml_tensor *Q = ggml_permute(c, ggml_cpy(c, Qcur, ggml_new_tensor_3d(c, GGML_TYPE_F32, hd, H, N)), 0, 2, 1, 3);
        ggml_tensor *K = ggml_permute(
            c, ggml_reshape_3d(c, ggml_view_1d(c, m.mk, (int64_t)(n_past + N) * E, kv_offset(m, m.mk, il, 0, E)), hd, H, n_past + N),
            0, 2, 1, 3);
        ggml_tensor *KQ = ggml_mul_mat(c, K, Q);
        ggml_tensor *KQ_scaled = SCALE(c, KQ, ggml_new_f32(c, 1.0f / sqrtf(float(E) / H)));
        ggml_tensor *KQ_alibi = ALIBI(c, ggml_cont(c, KQ_scaled), n_past, H, 8.0f);
        ggml_tensor *KQ_masked = DIAG_MASK_INF(c, KQ_alibi, n_past);
        ggml_tensor *KQ_soft_max = SOFT_MAX(c, KQ_masked);
        cur = attend_cached_values(c, m, il, KQ_soft_max, n_past, N);
        cur = ggml_mul_mat(c, Ly.out, cur);
        inpL = ggml_add(c, inpL, cur);

        cur = layer_norm(c, inpL, Ly.ln_2_g, nullptr);
        cur = ggml_mul_mat(c, Ly.up, cur);
        cur = ggml_gelu(c, cur);
        cur = ggml_mul_mat(c, Ly.down, cur);
        inpL = ggml_add(c, inpL, cur);
    }
    inpL = layer_norm(c, inpL, m.ln_f_g, nullptr);
    return ggml_mul_mat(c, m.wte, inpL);   // tied embeddings
}

// GPT4All's encode_word over the whole text, in the same float arithmetic and tie-breaking (the first
// split found for an end position stays unless a later one scores strictly less); substrings longer
// than the longest piece are not looked up, since none of them is a piece.
void tokenize(const g4a_model &m, const std::string &text, std::vector<int32_t> &out) {
    std::string word;
    word.reserve(text.size() + text.size() / 2);
    for (char ch : text) {
        if (ch == ' ') word += WORD_MARK;
        else word += ch;
    }
    const size_t n = word.size();
    if (n == 0) {
        auto it = m.pieces.find(word);
        if (it != m.pieces.end()) out.push_back(it->second.first);
        return;
    }
    const float unset = -std::numeric_limits<float>::infinity();
    std::vector<size_t> starts(n + 1, 0);
    std::vector<float> scores(n + 1, unset);
    scores[0] = 1.0f;
    for (size_t s = 0; s < n; ++s) {
        const float best = scores[s];
        if (best == unset) continue;
        const size_t last = std::min(n, s + m.max_token_len);
        for (size_t e = s + 1; e <= last; ++e) {
            auto it = m.pieces.find(word.substr(s, e - s));
            if (it == m.pieces.end()) continue;
            const float score = it->second.second + best;
            if (scores[e] == unset || scores[e] > score) {
                starts[e] = s;
                scores[e] = score;
            }
        }
    }
    if (scores[n] == unset) {
        out.push_back(0);
        return;
    }
    std::vector<int32_t> rev;
    size_t end = n, start = starts[n];
    while (start != 0) {
        rev.push_back(m.pieces.at(word.substr(start, end - start)).first);
        const size_t next = starts[start];
        end = start;
        start = next;
    }
    rev.push_back(m.pieces.at(word.substr(start, end - start)).first);
    out.insert(out.end(), rev.rbegin(), rev.rend());
}

bool is_eog(const g4a_model &m, int32_t tok) { return tok == 0 || tok == m.eos; }

}  // namespace

const ArchCode REPLIT = {"Replit", read_header, read_vocab, tensors, 1, false, GGML_TYPE_F16, kv_width, graph, tokenize, is_eog};

}  // namespace g4a_legacy

#endif  // G4A_LEGACY_QNT >= 2
