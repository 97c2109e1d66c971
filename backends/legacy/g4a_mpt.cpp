// g4a_mpt.cpp - MPT (GPT4All's ggml-mpt-7b-* files and the ggml examples' converter output).
//
//   magic "ggmm" (GPT4All): u32 n_vocab n_ctx n_layer n_head n_embd, f32 alibi_bias_max clip_qkv,
//          u32 ftype, u32 vocab count, n_vocab x (u32 length | bit 31 for special tokens, bytes), records;
//   magic "ggml" (ggml examples): i32 d_model max_seq_len n_heads n_layers n_vocab,
//          f32 alibi_bias_max clip_qkv, i32 ftype, n_vocab x (u32 length, bytes), records.
//
// The graph follows GPT4All 1.0.x's mpt.cpp: fused QKV, keys by position, values transposed in the
// cache, ALiBi on the scaled scores, no biases, tied embeddings.  GPT4All ignores the header's
// alibi_bias_max (the ggml op has 8 built in) and clip_qkv; files with the ggml-examples header honour
// both.  Tokenizer: gpt_tokenize with the special tokens cut out first.  End tokens: <|endoftext|>, 0
// and <|im_end|>.

#include "g4a_legacy.h"

namespace g4a_legacy {
namespace {

bool read_header(Reader &r, g4a_model &m) {
    if (m.header == Header::mpt_ggmm) {
        uint32_t hp[5];
        float fp[2];
        uint32_t ftype = 0;
        if (!r.read(hp, sizeof hp, "the hyperparameters") || !r.read(fp, sizeof fp, "the hyperparameters") ||
            !r.get(ftype, "the hyperparameters"))
            return false;
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
    } else {
        int32_t h[8];
        if (!r.read(h, sizeof h, "the hyperparameters")) return false;
        m.n_embd = h[0];
        m.n_ctx_train = h[1];
        m.n_head = h[2];
        m.n_layer = h[3];
        m.n_vocab = h[4];
        memcpy(&m.alibi_bias_max, &h[5], sizeof(float));
        memcpy(&m.clip_qkv, &h[6], sizeof(float));
        m.ftype = h[7];
    }
    m.n_ff = 4 * m.n_embd;
    if (!check_common_hparams(r, m, "MPT")) return false;
    if (!(m.alibi_bias_max >= 0.0f && m.alibi_bias_max <= 1024.0f))
        return fail(r, "MPT header: alibi_bias_max " + std::to_string(m.alibi_bias_max) + " out of range");
    if (!(m.clip_qkv >= 0.0f && std::isfinite(m.clip_qkv)))
        return fail(r, "MPT header: clip_qkv must be a finite value >= 0");
    return check_ftype(r, m, "MPT", 9);
}

bool read_vocab(Reader &r, g4a_model &m) {
    if (m.header == Header::mpt_ggml) {
        if (!read_plain_vocab(r, m, false)) return false;
    } else {
        uint32_t count = 0;
        if (!r.get(count, "the vocabulary count")) return false;
        if (count != (uint32_t)m.n_vocab)
            return fail(r, "vocabulary count " + std::to_string(count) + " differs from n_vocab " +
                           std::to_string(m.n_vocab));
        if ((int64_t)m.n_vocab * 4 > r.left())
            return fail(r, "the file is too short for " + std::to_string(m.n_vocab) + " vocabulary entries");
        m.tokens.resize((size_t)m.n_vocab);
        for (int32_t i = 0; i < m.n_vocab; ++i) {
            uint32_t len = 0;
            if (!r.get(len, "the vocabulary")) return false;
            const bool special = (len & (1u << 31)) != 0;
            len &= ~(1u << 31);
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
    }
    m.eos = std::max(0, find_token(m, "<|endoftext|>"));
    m.im_end = find_token(m, "<|im_end|>");
    return true;
}

void tensors(g4a_model &m, TensorTable &s) {
    const int64_t e = m.n_embd, v = m.n_vocab, f = m.n_ff;
    add_mat(s, "transformer.wte.weight", &m.wte, e, v);
    add_vec(s, "transformer.norm_f.weight", &m.ln_f_g, e);
    for (int i = 0; i < m.n_layer; ++i) {
        Layer &L = m.layers[(size_t)i];
        const std::string p = "transformer.blocks." + std::to_string(i) + ".";
        add_vec(s, p + "norm_1.weight", &L.ln_1_g, e);
        add_vec(s, p + "norm_2.weight", &L.ln_2_g, e);
        add_mat(s, p + "attn.Wqkv.weight", &L.qkv, e, 3 * e);
        add_mat(s, p + "attn.out_proj.weight", &L.out, e, e);
        add_mat(s, p + "ffn.up_proj.weight", &L.up, e, f);
        add_mat(s, p + "ffn.down_proj.weight", &L.down, f, e);
    }
}

int64_t kv_width(const g4a_model &m) { return m.n_embd; }

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

ggml_tensor *graph(g4a_model &m, ggml_context *c, ggml_cgraph &gf, ggml_tensor *embd, int N, int n_past) {
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
        ggml_tensor *cur = layer_norm(c, inpSA, Ly.ln_1_g, nullptr);
        cur = ggml_mul_mat(c, Ly.qkv, cur);
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
        cur = ggml_mul_mat(c, Ly.out, cur);

        ggml_tensor *resSA = ggml_add(c, cur, inpSA);
        cur = layer_norm(c, resSA, Ly.ln_2_g, nullptr);
        cur = ggml_mul_mat(c, Ly.up, cur);
        cur = ggml_gelu(c, cur);
        cur = ggml_mul_mat(c, Ly.down, cur);
        inpL = ggml_add(c, cur, resSA);
    }
    ggml_tensor *out = layer_norm(c, inpL, m.ln_f_g, nullptr);
    return ggml_mul_mat(c, m.wte, out);   // tied embeddings
}

// GPT4All stops MPT at its end token, at id 0 and at <|im_end|>
bool is_eog(const g4a_model &m, int32_t tok) { return tok == m.eos || tok == 0 || (m.im_end >= 0 && tok == m.im_end); }

}  // namespace

const ArchCode MPT = {"MPT", read_header, read_vocab, tensors, 1, false, GGML_TYPE_F16, kv_width, graph, gpt_tokenize, is_eog};

}  // namespace g4a_legacy
