// g4a_starcoder.cpp - StarCoder / StarCoderBase (GPT4All's starcoderbase-*-ggml.bin, from the ggml
// examples' converter).
//
//   magic "ggml", i32 n_vocab n_ctx n_embd n_head n_layer ftype, i32 vocab count (= n_vocab),
//   n_vocab x (u32 length, bytes), tensor records model/wte, model/wpe (F32), model/ln_f/{g,b},
//   model/lm_head (optional: the embedding table serves without it), model/hN/...
//
// The converter duplicates the single key/value head of multi-query attention to n_head heads, so the
// file is plain multi-head attention.  The graph follows GPT4All 1.0.x's starcoder.cpp: learned
// positions, pre-LN blocks with a sequential residual, fused QKV and biases everywhere, an F32 KV cache.
// Tokenizer: gpt_tokenize (no special tokens).  End token 0.

#include "g4a_legacy.h"

#if G4A_LEGACY_QNT >= 2

namespace g4a_legacy {
namespace {

bool read_header(Reader &r, g4a_model &m) {
    int32_t h[7];
    if (!r.read(h, sizeof h, "the hyperparameters")) return false;   // the vocab count (h[6]) included
    m.n_vocab = h[0];
    m.n_ctx_train = h[1];
    m.n_embd = h[2];
    m.n_head = h[3];
    m.n_layer = h[4];
    m.ftype = h[5];
    m.n_ff = 4 * m.n_embd;
    if (h[6] != h[0])
        return fail(r, "StarCoder header: vocabulary count " + std::to_string(h[6]) + " differs from n_vocab " +
                       std::to_string(h[0]));
    return check_common_hparams(r, m, "StarCoder") && check_ftype(r, m, "StarCoder", 14);
}

bool read_vocab(Reader &r, g4a_model &m) {
    if (!read_plain_vocab(r, m, false)) return false;
    m.eos = 0;
    return true;
}

void tensors(g4a_model &m, TensorTable &s) {
    const int64_t e = m.n_embd, v = m.n_vocab, f = m.n_ff;
    add_mat(s, "model/wte", &m.wte, e, v);
    add_f32_mat(s, "model/wpe", &m.wpe, e, m.n_ctx_train);
    add_vec(s, "model/ln_f/g", &m.ln_f_g, e);
    add_vec(s, "model/ln_f/b", &m.ln_f_b, e);
    add_mat(s, "model/lm_head", &m.lm_head, e, v);
    s.at("model/lm_head").optional = true;
    for (int i = 0; i < m.n_layer; ++i) {
        Layer &L = m.layers[(size_t)i];
        const std::string p = "model/h" + std::to_string(i) + "/";
        add_vec(s, p + "ln_1/g", &L.ln_1_g, e);
        add_vec(s, p + "ln_1/b", &L.ln_1_b, e);
        add_vec(s, p + "ln_2/g", &L.ln_2_g, e);
        add_vec(s, p + "ln_2/b", &L.ln_2_b, e);
        add_mat(s, p + "attn/c_attn/w", &L.qkv, e, 3 * e);
        add_vec(s, p + "attn/c_attn/b", &L.qkv_b, 3 * e);
        add_mat(s, p + "attn/c_proj/w", &L.out, e, e);
        add_vec(s, p + "attn/c_proj/b", &L.out_b, e);
        add_mat(s, p + "mlp/c_fc/w", &L.up, e, f);
        add_vec(s, p + "mlp/c_fc/b", &L.up_b, f);
        add_mat(s, p + "mlp/c_proj/w", &L.down, f, e);
        add_vec(s, p + "mlp/c_proj/b", &L.down_b, e);
    }
}

int64_t kv_width(const g4a_model &m) { return m.n_embd; }

ggml_tensor *graph(g4a_model &m, ggml_context *c, ggml_cgraph &gf, ggml_tensor *embd, int N, int n_past) {
    const int E = m.n_embd, H = m.n_head, hd = E / H;
    ggml_tensor *position = ggml_new_tensor_1d(c, GGML_TYPE_I32, N);
    for (int i = 0; i < N; ++i) ((int32_t *)position->data)[i] = n_past + i;
    ggml_tensor *inpL = ggml_add(c, ggml_get_rows(c, m.wte, embd), ggml_get_rows(c, m.wpe, position));
    for (int il = 0; il < m.n_layer; ++il) {
        const Layer &Ly = m.layers[(size_t)il];
        ggml_tensor *cur = layer_norm(c, inpL, Ly.ln_1_g, Ly.ln_1_b);
        cur = ggml_mul_mat(c, Ly.qkv, cur);
        cur = ggml_add(c, ggml_repeat(c, Ly.qkv_b, cur), cur);
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
        ggml_tensor *KQ_masked = DIAG_MASK_INF(c, KQ_scaled, n_past);
        ggml_tensor *KQ_soft_max = SOFT_MAX(c, KQ_masked);
        cur = attend_cached_values(c, m, il, KQ_soft_max, n_past, N);
        cur = ggml_mul_mat(c, Ly.out, cur);
        cur = ggml_add(c, ggml_repeat(c, Ly.out_b, cur), cur);
        ggml_tensor *inpFF = ggml_add(c, cur, inpL);

        // sequential residual: the MLP reads the attention block's output
        cur = layer_norm(c, inpFF, Ly.ln_2_g, Ly.ln_2_b);
        cur = ggml_mul_mat(c, Ly.up, cur);
        cur = ggml_add(c, ggml_repeat(c, Ly.up_b, cur), cur);
        cur = ggml_gelu(c, cur);
        cur = ggml_mul_mat(c, Ly.down, cur);
        cur = ggml_add(c, ggml_repeat(c, Ly.down_b, cur), cur);
        inpL = ggml_add(c, cur, inpFF);
    }
    inpL = layer_norm(c, inpL, m.ln_f_g, m.ln_f_b);
    return ggml_mul_mat(c, m.lm_head, inpL);
}

bool is_eog(const g4a_model &m, int32_t tok) { return tok == m.eos; }

}  // namespace

const ArchCode STARCODER = {"StarCoder", read_header, read_vocab, tensors,       1,      true,
                            GGML_TYPE_F32, kv_width, graph,       gpt_tokenize, is_eog};

}  // namespace g4a_legacy

#endif  // G4A_LEGACY_QNT >= 2
