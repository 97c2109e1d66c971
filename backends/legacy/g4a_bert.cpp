// g4a_bert.cpp - BERT sentence embeddings (GPT4All's Embed4All file ggml-all-MiniLM-L6-v2-f16.bin, from
// its converter).
//
//   magic "bert", i32 n_vocab n_max_tokens n_embd n_intermediate n_head n_layer ftype (0..3, no quant
//   version), n_vocab x (u32 length, vocab.txt line), tensor records embeddings.*, encoder.layer.N.*.
//
// An encoder: no KV cache and no logits.  The text's tokens are kept (g4a_eval appends) and the
// embedding is computed when asked for, as GPT4All's Bert::embedding did: chunks of n_max_tokens that
// overlap by 32 tokens, each after the first with [CLS] put back in front, a bidirectional post-LN
// encoder over each chunk, the mean over all of its positions ([CLS] included), the mean of the chunks,
// length 1 (g4a_legacy.cpp, encode()).  Tokenizer: GPT4All's bert_tokenize: Latin-1 accents stripped,
// ASCII lower-cased, the text split into punctuation / letter runs / digit runs (ASCII classes: other
// bytes are dropped), WordPiece greedy longest match ("##" pieces after the first), unknown bytes
// skipped, [CLS] = 101 first and no [SEP].

#include "g4a_legacy.h"

#if G4A_LEGACY_QNT >= 2

#include <map>

namespace g4a_legacy {
namespace {

constexpr int32_t CLS = 101, SEP = 102;

bool read_header(Reader &r, g4a_model &m) {
    int32_t h[7];
    if (!r.read(h, sizeof h, "the hyperparameters")) return false;
    m.n_vocab = h[0];
    m.n_ctx_train = h[1];   // n_max_tokens: the rows of the position table
    m.n_embd = h[2];
    m.n_ff = h[3];
    m.n_head = h[4];
    m.n_layer = h[5];
    m.ftype = h[6];
    if (!check_common_hparams(r, m, "BERT")) return false;
    if (m.n_vocab <= SEP)
        return fail(r, "BERT header: n_vocab " + std::to_string(m.n_vocab) + " has no [CLS] (101) and [SEP] (102)");
    if (m.n_ff <= 0 || m.n_ff > (1 << 20))
        return fail(r, "BERT header: n_intermediate " + std::to_string(m.n_ff) + " out of range");
    if (m.ftype < 0 || m.ftype > 3)
        return fail(r, "BERT header: ftype " + std::to_string(m.ftype) + " (0 F32, 1 F16, 2 Q4_0 or 3 Q4_1)");
    return true;
}

bool read_vocab(Reader &r, g4a_model &m) {
    if ((int64_t)m.n_vocab * 4 > r.left())
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
        if (len >= 2 && w[0] == '#' && w[1] == '#') m.subword_to_id[w.substr(2)] = i;   // a later one wins
        m.token_to_id.emplace(w, i);                                                   // the first one wins
        m.max_token_len = std::max(m.max_token_len, (size_t)len);
    }
    m.eos = SEP;
    return true;
}

void tensors(g4a_model &m, TensorTable &s) {
    const int64_t e = m.n_embd, v = m.n_vocab, f = m.n_ff;
    add_mat(s, "embeddings.word_embeddings.weight", &m.wte, e, v);
    add_mat(s, "embeddings.position_embeddings.weight", &m.wpe, e, m.n_ctx_train);
    add_mat(s, "embeddings.token_type_embeddings.weight", &m.wtt, e, 2);
    add_vec(s, "embeddings.LayerNorm.weight", &m.emb_ln_g, e);
    add_vec(s, "embeddings.LayerNorm.bias", &m.emb_ln_b, e);
    for (int i = 0; i < m.n_layer; ++i) {
        Layer &L = m.layers[(size_t)i];
        const std::string p = "encoder.layer." + std::to_string(i) + ".";
        add_mat(s, p + "attention.self.query.weight", &L.q, e, e);
        add_vec(s, p + "attention.self.query.bias", &L.q_b, e);
        add_mat(s, p + "attention.self.key.weight", &L.k, e, e);
        add_vec(s, p + "attention.self.key.bias", &L.k_b, e);
        add_mat(s, p + "attention.self.value.weight", &L.v, e, e);
        add_vec(s, p + "attention.self.value.bias", &L.v_b, e);
        add_mat(s, p + "attention.output.dense.weight", &L.out, e, e);
        add_vec(s, p + "attention.output.dense.bias", &L.out_b, e);
        add_vec(s, p + "attention.output.LayerNorm.weight", &L.ln_1_g, e);
        add_vec(s, p + "attention.output.LayerNorm.bias", &L.ln_1_b, e);
        add_mat(s, p + "intermediate.dense.weight", &L.up, e, f);
        add_vec(s, p + "intermediate.dense.bias", &L.up_b, f);
        add_mat(s, p + "output.dense.weight", &L.down, f, e);
        add_vec(s, p + "output.dense.bias", &L.down_b, e);
        add_vec(s, p + "output.LayerNorm.weight", &L.ln_2_g, e);
        add_vec(s, p + "output.LayerNorm.bias", &L.ln_2_b, e);
    }
}

int64_t kv_width(const g4a_model &) { return 0; }

ggml_tensor *linear(ggml_context *c, ggml_tensor *w, ggml_tensor *b, ggml_tensor *x) {
    ggml_tensor *y = ggml_mul_mat(c, w, x);
    return ggml_add(c, ggml_repeat(c, b, y), y);
}

// The mean-pooled output of the N tokens of one chunk (n_past is always 0: no cache).
ggml_tensor *graph(g4a_model &m, ggml_context *c, ggml_cgraph &, ggml_tensor *embd, int N, int) {
    const int E = m.n_embd, H = m.n_head, hd = E / H;
    ggml_tensor *types = ggml_new_tensor_1d(c, GGML_TYPE_I32, N);
    ggml_set_zero(types);
    ggml_tensor *positions = ggml_new_tensor_1d(c, GGML_TYPE_I32, N);
    for (int i = 0; i < N; ++i) ((int32_t *)positions->data)[i] = i;
    ggml_tensor *inpL = ggml_get_rows(c, m.wte, embd);
    inpL = ggml_add(c, ggml_get_rows(c, m.wtt, types), inpL);
    inpL = ggml_add(c, ggml_get_rows(c, m.wpe, positions), inpL);
    inpL = layer_norm(c, inpL, m.emb_ln_g, m.emb_ln_b);
    for (int il = 0; il < m.n_layer; ++il) {
        const Layer &Ly = m.layers[(size_t)il];
        ggml_tensor *Q = ggml_permute(c, ggml_reshape_3d(c, linear(c, Ly.q, Ly.q_b, inpL), hd, H, N), 0, 2, 1, 3);
        ggml_tensor *K = ggml_permute(c, ggml_reshape_3d(c, linear(c, Ly.k, Ly.k_b, inpL), hd, H, N), 0, 2, 1, 3);
        ggml_tensor *V = ggml_permute(c, ggml_reshape_3d(c, linear(c, Ly.v, Ly.v_b, inpL), hd, H, N), 0, 2, 1, 3);
        // bidirectional: no mask
        ggml_tensor *KQ = ggml_mul_mat(c, K, Q);
        KQ = SOFT_MAX(c, SCALE(c, KQ, ggml_new_f32(c, 1.0f / sqrtf((float)hd))));
        V = ggml_cont(c, ggml_transpose(c, V));
        ggml_tensor *KQV = ggml_permute(c, ggml_mul_mat(c, V, KQ), 0, 2, 1, 3);
        ggml_tensor *cur = ggml_cpy(c, KQV, ggml_new_tensor_2d(c, GGML_TYPE_F32, E, N));
        cur = linear(c, Ly.out, Ly.out_b, cur);
        // post-LN: normalise after each residual sum
        cur = layer_norm(c, ggml_add(c, cur, inpL), Ly.ln_1_g, Ly.ln_1_b);
        ggml_tensor *att_output = cur;
        cur = ggml_gelu(c, linear(c, Ly.up, Ly.up_b, cur));
        cur = linear(c, Ly.down, Ly.down_b, cur);
        inpL = layer_norm(c, ggml_add(c, att_output, cur), Ly.ln_2_g, Ly.ln_2_b);
    }
    // mean over the positions: the transposed states times a column of 1/N.  The reshape keeps the
    // states 2-D: for one token ggml's repeat hands back the 1-D norm weights, the sums inherit their
    // single dimension, and the transposed copy would hold one value (GPT4All aborts there)
    inpL = ggml_cont(c, ggml_transpose(c, ggml_reshape_2d(c, inpL, E, N)));
    ggml_tensor *avg = ggml_new_tensor_2d(c, GGML_TYPE_F32, N, 1);
    ggml_set_f32(avg, 1.0f / (float)N);
    return ggml_mul_mat(c, inpL, avg);
}

size_t utf8_len(char ch) {
    static const size_t lookup[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[(uint8_t)ch >> 4];
}

// bert_normalize_prompt: the Latin-1 letters with accents to their ASCII letter, then A-Z lower-cased
// (stepping character by character, by the length the lead byte announces)
std::string normalize(const std::string &text) {
    static const std::map<std::string, char> accents = {
        {"\xc3\x80", 'A'}, {"\xc3\x81", 'A'}, {"\xc3\x82", 'A'}, {"\xc3\x83", 'A'}, {"\xc3\x84", 'A'},
        {"\xc3\x85", 'A'}, {"\xc3\xa0", 'a'}, {"\xc3\xa1", 'a'}, {"\xc3\xa2", 'a'}, {"\xc3\xa3", 'a'},
        {"\xc3\xa4", 'a'}, {"\xc3\xa5", 'a'}, {"\xc3\x88", 'E'}, {"\xc3\x89", 'E'}, {"\xc3\x8a", 'E'},
        {"\xc3\x8b", 'E'}, {"\xc3\xa8", 'e'}, {"\xc3\xa9", 'e'}, {"\xc3\xaa", 'e'}, {"\xc3\xab", 'e'},
        {"\xc3\x8c", 'I'}, {"\xc3\x8d", 'I'}, {"\xc3\x8e", 'I'}, {"\xc3\x8f", 'I'}, {"\xc3\xac", 'i'},
        {"\xc3\xad", 'i'}, {"\xc3\xae", 'i'}, {"\xc3\xaf", 'i'}, {"\xc3\x92", 'O'}, {"\xc3\x93", 'O'},
        {"\xc3\x94", 'O'}, {"\xc3\x95", 'O'}, {"\xc3\x96", 'O'}, {"\xc3\xb2", 'o'}, {"\xc3\xb3", 'o'},
        {"\xc3\xb4", 'o'}, {"\xc3\xb5", 'o'}, {"\xc3\xb6", 'o'}, {"\xc3\x99", 'U'}, {"\xc3\x9a", 'U'},
        {"\xc3\x9b", 'U'}, {"\xc3\x9c", 'U'}, {"\xc3\xb9", 'u'}, {"\xc3\xba", 'u'}, {"\xc3\xbb", 'u'},
        {"\xc3\xbc", 'u'}, {"\xc3\x9d", 'Y'}, {"\xc3\xbd", 'y'}, {"\xc3\x87", 'C'}, {"\xc3\xa7", 'c'},
        {"\xc3\x91", 'N'}, {"\xc3\xb1", 'n'},
    };
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
        const size_t len = utf8_len(text[i]);
        const std::string ch = text.substr(i, len);
        auto it = accents.find(ch);
        if (it != accents.end()) out += it->second;
        else out += ch;
        i += len;
    }
    for (size_t i = 0; i < out.size(); i += utf8_len(out[i]))
        if (out[i] >= 'A' && out[i] <= 'Z') out[i] = (char)(out[i] - 'A' + 'a');
    return out;
}

bool is_punct(unsigned char ch) { return (ch >= 0x21 && ch <= 0x2f) || (ch >= 0x3a && ch <= 0x40) ||
                                         (ch >= 0x5b && ch <= 0x60) || (ch >= 0x7b && ch <= 0x7e); }
bool is_alpha(unsigned char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'); }
bool is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }

void tokenize(const g4a_model &m, const std::string &text, std::vector<int32_t> &out) {
    const std::string s = normalize(text);
    out.push_back(CLS);
    size_t i = 0;
    while (i < s.size()) {
        // the regex [[:punct:]]|[[:alpha:]]+|[[:digit:]]+ in the "C" locale
        const unsigned char ch = (unsigned char)s[i];
        size_t len = 0;
        if (is_punct(ch)) {
            len = 1;
        } else if (is_alpha(ch) || is_digit(ch)) {
            bool (*cls)(unsigned char) = is_alpha(ch) ? is_alpha : is_digit;
            while (i + len < s.size() && cls((unsigned char)s[i + len])) ++len;
        } else {
            ++i;   // a space, a control or a non-ASCII byte
            continue;
        }
        const std::string word = s.substr(i, len);
        i += len;
        // WordPiece: longest whole-word match first, then the longest "##" continuations (nothing longer
        // than the longest vocabulary entry is looked up: it cannot match)
        const std::unordered_map<std::string, int32_t> *map = &m.token_to_id;
        size_t a = 0;
        while (a < word.size()) {
            size_t b = std::min(word.size(), a + m.max_token_len);
            for (; b > a; --b) {
                auto it = map->find(word.substr(a, b - a));
                if (it != map->end()) {
                    out.push_back(it->second);
                    break;
                }
            }
            map = &m.subword_to_id;
            a = b > a ? b : a + 1;   // no piece: the byte is skipped
        }
    }
}

bool is_eog(const g4a_model &m, int32_t tok) { return tok == m.eos; }

}  // namespace

const ArchCode BERT = {"BERT", read_header, read_vocab, tensors, 1, true, GGML_TYPE_COUNT, kv_width, graph, tokenize, is_eog};

}  // namespace g4a_legacy

#endif  // G4A_LEGACY_QNT >= 2
