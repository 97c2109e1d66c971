// g4a_falcon.cpp - Falcon-7B (GPT4All's ggml-model-gpt4all-falcon-q4_0.bin, ggllm.cpp's quantizer output).
//
//   magic "ggjt", u32 format version (ignored, as GPT4All did), i32 n_vocab n_embd n_head n_head_kv
//   n_layer falcon_version ftype, n_vocab x (u32 length, bytes, 4-byte score that is ignored), tensor
//   records whose data start at a file offset that is a multiple of 32 (zero padding after the name).
//
// The context is not in the file: 2048 positions, as GPT4All fixed it.  The graph follows GPT4All
// 1.0.x's falcon.cpp: one LayerNorm feeds attention and MLP in parallel, fused QKV without biases,
// NeoX rotary (mode 2) over the whole head, multi-query attention (one key/value head shared by all
// query heads: GPT4All repeats it, ggml's matrix product broadcasts it here, the same products), an F32
// KV cache, a separate lm_head.  Falcon-40B's grouped heads (falcon_version 40) are refused, as GPT4All
// refused them.  Tokenizer: gpt_tokenize.  End token 11.

#include "g4a_legacy.h"

#if G4A_LEGACY_QNT >= 2

namespace g4a_legacy {
namespace {

constexpr int32_t FALCON_N_CTX = 2048;

bool read_header(Reader &r, g4a_model &m) {
    uint32_t version = 0;
    int32_t h[7];
    if (!r.get(version, "the format version") || !r.read(h, sizeof h, "the hyperparameters")) return false;
    m.n_vocab = h[0];
    m.n_embd = h[1];
    m.n_head = h[2];
    m.n_head_kv = h[3];
    m.n_layer = h[4];
    const int32_t falcon_version = h[5];
    m.ftype = h[6];
    m.n_ctx_train = FALCON_N_CTX;
    m.n_ff = 4 * m.n_embd;
    if (!check_common_hparams(r, m, "Falcon") || !check_ftype(r, m, "Falcon", 14)) return false;
    if (falcon_version != 7)
        return fail(r, "Falcon header: falcon_version " + std::to_string(falcon_version) +
                       " (only 7, Falcon-7B's multi-query layout, is read, as GPT4All read it)");
    if (m.n_head_kv != 1)
        return fail(r, "Falcon header: n_head_kv " + std::to_string(m.n_head_kv) + " (Falcon-7B has 1)");
    if ((m.n_embd / m.n_head) % 2 != 0)
        return fail(r, "Falcon header: the head size " + std::to_string(m.n_embd / m.n_head) +
                       " must be even (rotary pairs)");
    return true;
}

bool read_vocab(Reader &r, g4a_model &m) {
    if (!read_plain_vocab(r, m, true)) return false;
    m.eos = 11;
    return true;
}

void tensors(g4a_model &m, TensorTable &s) {
    const int64_t e = m.n_embd, v = m.n_vocab, f = m.n_ff, hd = m.n_embd / m.n_head;
    add_mat(s, "transformer.word_embeddings.weight", &m.wte, e, v);
    add_vec(s, "transformer.ln_f.weight", &m.ln_f_g, e);
    add_vec(s, "transformer.ln_f.bias", &m.ln_f_b, e);
    add_mat(s, "lm_head.weight", &m.lm_head, e, v);
    for (int i = 0; i < m.n_layer; ++i) {
        Layer &L = m.layers[(size_t)i];
        const std::string p = "transformer.h." + std::to_string(i) + ".";
        add_vec(s, p + "input_layernorm.weight", &L.ln_1_g, e);
        add_vec(s, p + "input_layernorm.bias", &L.ln_1_b, e);
        add_mat(s, p + "self_attention.query_key_value.weight", &L.qkv, e, (m.n_head + 2 * (int64_t)m.n_head_kv) * hd);
        add_mat(s, p + "self_attention.dense.weight", &L.out, e, e);
        add_mat(s, p + "mlp.dense_h_to_4h.weight", &L.up, e, f);
        add_mat(s, p + "mlp.dense_4h_to_h.weight", &L.down, f, e);
    }
}

int64_t kv_width(const g4a_model &m) { return (int64_t)m.n_head_kv * (m.n_embd / m.n_head); }

ggml_tensor *graph(g4a_model &m, ggml_context *c, ggml_cgraph &gf, ggml_tensor *embd, int N, int n_past) {
    const int E = m.n_embd, H = m.n_head, Hkv = m.n_head_kv, hd = E / H;
    const int64_t W = kv_width(m);
    const size_t fs = sizeof(float);
    ggml_tensor *inpL = ggml_get_rows(c, m.wte, embd);
    for (int il = 0; il < m.n_layer; ++il) {
        const Layer &Ly = m.layers[(size_t)il];
        ggml_tensor *ln = layer_norm(c, inpL, Ly.ln_1_g, Ly.ln_1_b);
        ggml_tensor *cur = ggml_mul_mat(c, Ly.qkv, ln);
        // the fused output holds all query heads, then the key heads, then the value heads
        ggml_tensor *Qcur = ggml_view_3d(c, cur, hd, H, N, hd * fs, cur->nb[1], 0);
        ggml_tensor *Kcur = ggml_view_3d(c, cur, hd, Hkv, N, hd * fs, cur->nb[1], (size_t)hd * H * fs);
        ggml_tensor *Vcur = ggml_view_3d(c, cur, hd, Hkv, N, hd * fs, cur->nb[1], (size_t)hd * (H + Hkv) * fs);
        Qcur = ROPE(c, Qcur, n_past, hd, 2);
        Kcur = ROPE(c, Kcur, n_past, hd, 2);
        ggml_build_forward_expand(&gf, ggml_cpy(c, Kcur, ggml_view_1d(c, m.mk, N * W, kv_offset(m, m.mk, il, n_past, W))));
        ggml_build_forward_expand(&gf, ggml_cpy(c, Vcur, ggml_view_1d(c, m.mv, N * W, kv_offset(m, m.mv, il, n_past, W))));

        const int L = n_past + N;
        ggml_tensor *K = ggml_permute(
            c, ggml_view_3d(c, m.mk, hd, Hkv, L, hd * fs, (size_t)W * fs, kv_offset(m, m.mk, il, 0, W)), 0, 2, 1, 3);
        ggml_tensor *Q = ggml_permute(c, Qcur, 0, 2, 1, 3);
        ggml_tensor *KQ = ggml_mul_mat(c, K, Q);   // the key head broadcast to every query head
        ggml_tensor *KQ_scaled = SCALE(c, KQ, ggml_new_f32(c, 1.0f / sqrtf(float(hd))));
        ggml_tensor *KQ_masked = DIAG_MASK_INF(c, KQ_scaled, n_past);
        ggml_tensor *KQ_soft_max = SOFT_MAX(c, KQ_masked);
        ggml_tensor *V = ggml_permute(
            c, ggml_view_3d(c, m.mv, hd, Hkv, L, hd * fs, (size_t)W * fs, kv_offset(m, m.mv, il, 0, W)), 0, 2, 1, 3);
        V = ggml_cont(c, ggml_transpose(c, V));
        ggml_tensor *KQV = ggml_mul_mat(c, V, KQ_soft_max);
        ggml_tensor *KQV_merged = ggml_permute(c, KQV, 0, 2, 1, 3);
        cur = ggml_cpy(c, KQV_merged, ggml_new_tensor_2d(c, GGML_TYPE_F32, E, N));
        ggml_tensor *attn_out = ggml_mul_mat(c, Ly.out, cur);

        // parallel block: the MLP reads the same normalized input as the attention
        cur = ggml_mul_mat(c, Ly.up, ln);
        cur = ggml_gelu(c, cur);
        cur = ggml_mul_mat(c, Ly.down, cur);
        cur = ggml_add(c, cur, attn_out);
        inpL = ggml_add(c, cur, inpL);
    }
    inpL = layer_norm(c, inpL, m.ln_f_g, m.ln_f_b);
    return ggml_mul_mat(c, m.lm_head, inpL);
}

bool is_eog(const g4a_model &m, int32_t tok) { return tok == m.eos; }

}  // namespace

const ArchCode FALCON = {"Falcon", read_header, read_vocab, tensors,       32,     false,
                         GGML_TYPE_F32, kv_width, graph,     gpt_tokenize, is_eog};

}  // namespace g4a_legacy

#endif  // G4A_LEGACY_QNT >= 2
