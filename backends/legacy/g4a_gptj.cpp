// g4a_gptj.cpp - GPT-J (GPT4All's ggml-gpt4all-j files and the ggml examples' converter output).
//
//   magic "ggml", i32 n_vocab n_ctx n_embd n_head n_layer n_rot ftype, i32 vocab count (= n_vocab),
//   n_vocab x (u32 length, bytes), tensor records transformer.h.N.*, lm_head.*.
//
// The graph follows GPT4All 1.0.x's gptj.cpp: keys are stored unrotated in an F16 cache and rotated
// there in place (rope mode 1), values are stored by position and transposed per evaluation; one
// LayerNorm feeds attention and MLP in parallel.  Tokenizer: gpt_tokenize.  End token 50256.

#include "g4a_legacy.h"

namespace g4a_legacy {
namespace {

bool read_header(Reader &r, g4a_model &m) {
    int32_t h[8];
    if (!r.read(h, sizeof h, "the hyperparameters")) return false;   // the vocab count (h[7]) included
    m.n_vocab = h[0];
    m.n_ctx_train = h[1];
    m.n_embd = h[2];
    m.n_head = h[3];
    m.n_layer = h[4];
    m.n_rot = h[5];
    m.ftype = h[6];
    m.n_ff = 4 * m.n_embd;
    if (!check_common_hparams(r, m, "GPT-J")) return false;
    const int hd = m.n_embd / m.n_head;
    if (m.n_rot < 0 || m.n_rot > hd || m.n_rot % 2 != 0)
        return fail(r, "GPT-J header: n_rot " + std::to_string(m.n_rot) + " must be even and at most n_embd/n_head = " +
                       std::to_string(hd));
    return check_ftype(r, m, "GPT-J", 9);
}

bool read_vocab(Reader &r, g4a_model &m) {
    if (!read_plain_vocab(r, m, false)) return false;
    m.eos = m.n_vocab > 50256 ? 50256 : std::max(0, find_token(m, "<|endoftext|>"));
    return true;
}

void tensors(g4a_model &m, TensorTable &s) {
    const int64_t e = m.n_embd, v = m.n_vocab, f = m.n_ff;
    add_mat(s, "transformer.wte.weight", &m.wte, e, v);
    add_vec(s, "transformer.ln_f.weight", &m.ln_f_g, e);
    add_vec(s, "transformer.ln_f.bias", &m.ln_f_b, e);
    add_mat(s, "lm_head.weight", &m.lm_head, e, v);
    add_vec(s, "lm_head.bias", &m.lm_head_b, v);
    for (int i = 0; i < m.n_layer; ++i) {
        Layer &L = m.layers[(size_t)i];
        const std::string p = "transformer.h." + std::to_string(i) + ".";
        add_vec(s, p + "ln_1.weight", &L.ln_1_g, e);
        add_vec(s, p + "ln_1.bias", &L.ln_1_b, e);
        add_mat(s, p + "attn.q_proj.weight", &L.q, e, e);
        add_mat(s, p + "attn.k_proj.weight", &L.k, e, e);
        add_mat(s, p + "attn.v_proj.weight", &L.v, e, e);
        add_mat(s, p + "attn.out_proj.weight", &L.out, e, e);
        add_mat(s, p + "mlp.fc_in.weight", &L.up, e, f);
        add_vec(s, p + "mlp.fc_in.bias", &L.up_b, f);
        add_mat(s, p + "mlp.fc_out.weight", &L.down, f, e);
        add_vec(s, p + "mlp.fc_out.bias", &L.down_b, e);
    }
}

int64_t kv_width(const g4a_model &m) { return m.n_embd; }

ggml_tensor *graph(g4a_model &m, ggml_context *c, ggml_cgraph &gf, ggml_tensor *embd, int N, int n_past) {
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
        cur = attend_cached_values(c, m, il, KQ_soft_max, n_past, N);
        cur = ggml_mul_mat(c, Ly.out, cur);
        ggml_tensor *inpFF = cur;

        // the MLP reads the same normalized input as the attention (parallel residual)
        cur = ggml_mul_mat(c, Ly.up, inpSA);
        cur = ggml_add(c, ggml_repeat(c, Ly.up_b, cur), cur);
        cur = ggml_gelu(c, cur);
        cur = ggml_mul_mat(c, Ly.down, cur);
        cur = ggml_add(c, ggml_repeat(c, Ly.down_b, cur), cur);
        cur = ggml_add(c, cur, inpFF);
        inpL = ggml_add(c, cur, inpL);
    }
    inpL = ggml_norm(c, inpL);
    inpL = ggml_add(c, ggml_mul(c, ggml_repeat(c, m.ln_f_g, inpL), inpL), ggml_repeat(c, m.ln_f_b, inpL));
    inpL = ggml_mul_mat(c, m.lm_head, inpL);
    inpL = ggml_add(c, ggml_repeat(c, m.lm_head_b, inpL), inpL);
    return inpL;
}

bool is_eog(const g4a_model &m, int32_t tok) { return tok == m.eos; }

}  // namespace

const ArchCode GPTJ = {"GPT-J", read_header, read_vocab, tensors, 1, false, GGML_TYPE_F16, kv_width, graph, gpt_tokenize, is_eog};

}  // namespace g4a_legacy
