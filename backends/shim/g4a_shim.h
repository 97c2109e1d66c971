/*
 * g4a_shim.h - the one C ABI that every gpt4all-loader backend library exports.
 *
 * Each backend is one shared object: a pinned llama.cpp/ggml tree linked statically together with
 * our shim (g4a_shim.cpp).  The shim hides every per-era llama.cpp API difference behind this header,
 * so Python never mirrors a llama.cpp struct.  Python reads the declarations between the CDEF markers
 * with cffi (ABI mode), so that part must stay plain C declarations that cffi can parse: no macros,
 * no preprocessor lines.
 *
 * Conventions: every function is thread-compatible (one model per thread at a time; Python
 * serializes calls per model).  Functions that can fail return a negative number or NULL, and
 * g4a_last_error() then returns a message for the calling thread.
 */
#ifndef G4A_SHIM_H
#define G4A_SHIM_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CDEF-BEGIN */
/* Bump when any declaration below changes; Python refuses a library whose version differs. */
enum { G4A_ABI_VERSION = 4 };
/* Most alternatives g4a_seq_sample reports with their log-probabilities (OpenAI's top_logprobs bound). */
enum { G4A_MAX_TOP_LOGPROBS = 20 };

typedef struct g4a_model g4a_model;

/* Our own parameter block: stable across eras, unlike llama_context_params. */
typedef struct g4a_load_params {
    int32_t n_ctx;          /* <= 0: 512 (the GPT-J/MPT code: the file's training context) */
    int32_t n_threads;      /* <= 0: number of cores */
    int32_t n_gpu_layers;   /* 0 on CPU variants; -1: all layers */
    int32_t vocab_only;     /* load only the vocabulary (no weights) */
    int32_t embeddings;     /* request embedding output where the era has it */
    int32_t n_gqa;          /* ggjt v3 LLaMA-2-70B files: grouped-query factor (0: file/default) */
    float   rms_norm_eps;   /* ggjt files carry no epsilon (0: the era's default) */
    uint32_t seed;
    int32_t flash_attn;     /* -1: the era's default (2026: the engine decides per device), 0 off, 1 on */
    int32_t n_seq_max;      /* sequences decoded together (<= 0: 1); each holds up to n_ctx positions.  Eras
                               without sequences (ggml/ggjt, our 2023 GPT-J/MPT code) hold 1: see g4a_n_seq_max */
} g4a_load_params;

typedef struct g4a_sampling {
    float    temperature;    /* <= 0: greedy (argmax) */
    int32_t  top_k;          /* <= 0: whole vocabulary */
    float    top_p;          /* >= 1: disabled */
    float    min_p;          /* <= 0: disabled */
    float    repeat_penalty; /* 1: disabled */
    int32_t  repeat_last_n;  /* how many of the most recent tokens the penalties look at */
    float    presence_penalty;   /* 0: off; subtracted once from each token present in the history window */
    float    frequency_penalty;  /* 0: off; subtracted once per occurrence in the history window */
    int32_t  n_bias;             /* logit_bias: bias_values[i] added to the logit of bias_tokens[i] (-INFINITY bans) */
    const int32_t *bias_tokens;
    const float   *bias_values;
    /* NULL: every token may be sampled.  Else a bitmask of (n_vocab + 31) / 32 words, bit (t % 32) of word t / 32
     * set when token t is allowed (a constraint engine's mask: JSON schema, grammar).  Applied after the bias and the
     * penalties, before the log-probabilities and the choice, so greedy decoding with a mask stays deterministic. */
    const uint32_t *allowed;
} g4a_sampling;

/* What g4a_seq_sample saw: log-probabilities from the logits after bias, penalties and mask (before temperature,
 * top-k/p, min-p), i.e. log_softmax over the tokens that could be chosen. */
typedef struct g4a_token_logprobs {
    int32_t n_top;                                  /* in: alternatives wanted (0..G4A_MAX_TOP_LOGPROBS); out: written */
    float   logprob;                                /* out: of the chosen token */
    int32_t top_tokens[G4A_MAX_TOP_LOGPROBS];       /* out: most likely first (ties: lower id first) */
    float   top_logprobs[G4A_MAX_TOP_LOGPROBS];
} g4a_token_logprobs;

int32_t     g4a_abi_version(void);
/* One line: "<backend name> llama.cpp <commit> api=<gen> variant=<variant> | <llama_print_system_info>". */
const char *g4a_backend_info(void);
/* Message of the last failed call made by this thread ("" when none). */
const char *g4a_last_error(void);
/* 1 when this build offloads to a GPU (CUDA variant), else 0. */
int32_t     g4a_gpu_build(void);

g4a_model  *g4a_load(const char *path, const g4a_load_params *params);
void        g4a_free(g4a_model *model);

int32_t     g4a_n_vocab(const g4a_model *model);
int32_t     g4a_n_ctx(const g4a_model *model);         /* the context actually allocated */
int32_t     g4a_n_ctx_train(const g4a_model *model);   /* from the file (0 when the era does not know) */
int32_t     g4a_n_embd(const g4a_model *model);
int32_t     g4a_token_bos(const g4a_model *model);
int32_t     g4a_token_eos(const g4a_model *model);
int32_t     g4a_is_eog(const g4a_model *model, int32_t token);
int32_t     g4a_n_gpu_layers(const g4a_model *model);  /* layers asked to be offloaded (0 on CPU variants) */

/* Tokenize text (text_len bytes; eras before GGUF stop at a NUL byte).  parse_special: read control
 * tokens such as "<|im_start|>" written in the text (GGUF eras only).  Returns the count written,
 * or -(count needed) when cap is too small. */
int32_t     g4a_tokenize(g4a_model *model, const char *text, int32_t text_len, int32_t add_bos,
                         int32_t parse_special, int32_t *tokens, int32_t cap);
/* Raw bytes of one token (may be part of a UTF-8 character).  Returns the length, or -(length needed). */
int32_t     g4a_token_to_piece(g4a_model *model, int32_t token, char *buf, int32_t cap);

/* Evaluate tokens after the current position (n_past).  0 on success. */
int32_t     g4a_eval(g4a_model *model, const int32_t *tokens, int32_t n_tokens);
int32_t     g4a_n_past(const g4a_model *model);
/* Forget the evaluated tokens (clears the KV cache).  0 on success. */
int32_t     g4a_reset(g4a_model *model);
/* Keep the first n_keep evaluated tokens and forget the rest: n_past becomes n_keep and the logits
 * are gone until the next eval.  -1 (with the reason) where the engine cannot drop part of its state
 * (recurrent models): reset and evaluate again instead. */
int32_t     g4a_truncate(g4a_model *model, int32_t n_keep);
/* Context shift inside the engine's cache: forget positions [n_keep, n_keep + n_discard) and move the
 * later ones back by n_discard (n_past shrinks by n_discard; the logits stay).  -1 where this era or
 * model cannot move cached positions: evaluate the kept tokens again instead.  n_discard 0 only asks. */
int32_t     g4a_shift(g4a_model *model, int32_t n_keep, int32_t n_discard);
/* Logits of the last evaluated position: n_vocab floats, valid until the next eval/reset/free. */
const float *g4a_logits(g4a_model *model);
/* Embedding of the last evaluation (n_embd floats), or NULL with an error where the era has none. */
const float *g4a_embeddings(g4a_model *model);

/* Pick the next token from the current logits.  history/n_history: recent tokens for the repeat
 * penalty.  rng_state: caller-owned 64-bit state (seeded by the caller) so runs are reproducible. */
int32_t     g4a_sample(g4a_model *model, const g4a_sampling *params,
                       const int32_t *history, int32_t n_history, uint64_t *rng_state);

/* Threads of the evaluations that follow: n_threads <= 0 goes back to the count the model was loaded with, and
 * no call raises it above that count.  Returns the count now in effect (-1: no model).  For a machine whose
 * cores other programs keep busy: an engine's threads wait for one another at every operation of a graph, and
 * one thread without a core stalls them all (gpt4all_loader.engines.cores). */
int32_t     g4a_set_threads(g4a_model *model, int32_t n_threads);

/* Sequences: several token streams in one context, decoded together (continuous batching).  The functions above
 * act on sequence 0; g4a_reset clears every sequence.  Sequence ids run from 0 to g4a_n_seq_max() - 1. */
int32_t     g4a_n_seq_max(const g4a_model *model);     /* 1 where the era evaluates one stream per context */
int32_t     g4a_seq_n_past(const g4a_model *model, int32_t seq);
/* One step for several sequences: token i is appended to sequence seqs[i] at its next position (a sequence's
 * tokens in order).  The logits of each sequence's last token in the call are kept (g4a_seq_logits).  Split
 * into the engine's batch size internally.  0 on success; on failure every sequence is as it was before. */
int32_t     g4a_decode(g4a_model *model, const int32_t *tokens, const int32_t *seqs, int32_t n_tokens);
/* Logits of the sequence's last evaluated position (n_vocab floats), valid until its next decode/truncate. */
const float *g4a_seq_logits(g4a_model *model, int32_t seq);
/* Keep the first n_keep positions of the sequence (0 empties it).  -1 where the engine cannot cut it back. */
int32_t     g4a_seq_truncate(g4a_model *model, int32_t seq, int32_t n_keep);
/* dst becomes a copy of src (its cache and logits): a prompt decoded once serves n choices. */
int32_t     g4a_seq_copy(g4a_model *model, int32_t src, int32_t dst);
/* g4a_shift for one sequence. */
int32_t     g4a_seq_shift(g4a_model *model, int32_t seq, int32_t n_keep, int32_t n_discard);
/* g4a_sample for one sequence; logprobs (may be NULL) receives what the sampler saw. */
int32_t     g4a_seq_sample(g4a_model *model, int32_t seq, const g4a_sampling *params, const int32_t *history,
                           int32_t n_history, uint64_t *rng_state, g4a_token_logprobs *logprobs);

/* Quantize a model file with this era's own quantizer.  ftype: the era's llama_ftype number. */
int32_t     g4a_quantize(const char *path_in, const char *path_out, int32_t ftype, int32_t n_threads);
/* Convert n values of a ggml tensor type (this era's numbering and block layout) to float32.
 * Returns 0, or -1 when the era has no such type or n is not a whole number of blocks. */
int32_t     g4a_dequantize(int32_t ggml_type, const void *src, float *dst, int64_t n);
/* CDEF-END */

#ifdef __cplusplus
}
#endif

#endif /* G4A_SHIM_H */
